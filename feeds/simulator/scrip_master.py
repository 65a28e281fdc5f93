"""The universe as Dhan's detailed scrip master CSV (reference §7.3-7.5).

Besides the universe's index and option rows the file carries a few rows of kinds a loader
must skip (an equity, an index future, INDIA VIX, a stock option), as the real file does.
Value formats follow the reference: strike ``25800.00000``, lot ``75.0``, expiry
``YYYY-MM-DD``, tick ``0.0500`` (rupees), ``-0.01000`` as the strike of non-options.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

from feeds.simulator.universe import FIRST_OPTION_ID, Universe, is_monthly_expiry, last_tuesday

HEADER = (
    "EXCH_ID",
    "SEGMENT",
    "SECURITY_ID",
    "ISIN",
    "INSTRUMENT",
    "UNDERLYING_SECURITY_ID",
    "UNDERLYING_SYMBOL",
    "SYMBOL_NAME",
    "DISPLAY_NAME",
    "INSTRUMENT_TYPE",
    "SERIES",
    "LOT_SIZE",
    "SM_EXPIRY_DATE",
    "STRIKE_PRICE",
    "OPTION_TYPE",
    "TICK_SIZE",
    "EXPIRY_FLAG",
    "BRACKET_FLAG",
    "COVER_FLAG",
    "ASM_GSM_FLAG",
    "ASM_GSM_CATEGORY",
    "BUY_SELL_INDICATOR",
    "BUY_CO_MIN_MARGIN_PER",
    "SELL_CO_MIN_MARGIN_PER",
    "MTF_LEVERAGE",
)

# strftime's %b follows the locale; the file is always English.
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_NO_EXPIRY = "0001-01-01"
_NO_STRIKE = "-0.01000"
_TAIL = ("N", "N", "N", "NA", "A", "0.00", "0.00", "0.00")  # BRACKET_FLAG .. MTF_LEVERAGE

# Distractor ids sit below the universe's first option id so they never collide with it.
RELIANCE_EQ_ID = 2885
INDIA_VIX_ID = 21
NIFTY_FUT_ID = FIRST_OPTION_ID - 1_000
RELIANCE_OPT_ID = FIRST_OPTION_ID - 999


def _trading_month(day: dt.date) -> str:
    return f"{_MONTHS[day.month - 1].title()}{day.year}"  # "Nov2026"


def _strike(value: float) -> str:
    return f"{value:.5f}"


def _lot(value: int) -> str:
    return f"{float(value):.1f}"


def _index_row(security_id: int, symbol: str, display_name: str) -> list[str]:
    return [
        "NSE", "I", str(security_id), "NA", "INDEX", str(security_id), symbol, symbol, display_name,
        "INDEX", "NA", "1.0", _NO_EXPIRY, "", "XX", "0.0500", "N", *_TAIL,
    ]  # fmt: skip


def _distractor_rows(today: dt.date) -> tuple[list[str], list[str], list[str], list[str]]:
    """An equity, INDIA VIX, a NIFTY future and a stock option: all rows a chain loader skips."""
    month_end = last_tuesday(today.year, today.month)
    if month_end < today:
        month_end = last_tuesday(today.year + today.month // 12, today.month % 12 + 1)
    equity = [
        "NSE", "E", str(RELIANCE_EQ_ID), "INE002A01018", "EQUITY", "", "", "RELIANCE", "Reliance Industries",
        "ES", "EQ", "1.0", _NO_EXPIRY, _NO_STRIKE, "XX", "0.1000", "NA", "Y", "Y", "N", "NA", "A",
        "12.50", "12.50", "4.00",
    ]  # fmt: skip
    vix = _index_row(INDIA_VIX_ID, "INDIA VIX", "India VIX")
    mon = _MONTHS[month_end.month - 1]
    future = [
        "NSE", "D", str(NIFTY_FUT_ID), "NA", "FUTIDX", "13", "NIFTY", f"NIFTY-{_trading_month(month_end)}-FUT",
        f"NIFTY {mon} FUT", "FUT", "NA", "75.0", month_end.isoformat(), _NO_STRIKE, "XX", "0.1000", "M", *_TAIL,
    ]  # fmt: skip
    stock_option = [
        "NSE", "D", str(RELIANCE_OPT_ID), "NA", "OPTSTK", str(RELIANCE_EQ_ID), "RELIANCE",
        f"RELIANCE-{_trading_month(month_end)}-1400-CE", f"RELIANCE {month_end.day:02d} {mon} 1400 CALL", "OP", "NA",
        "500.0", month_end.isoformat(), _strike(1400.0), "CE", "0.0500", "M", *_TAIL,
    ]  # fmt: skip
    return equity, vix, future, stock_option


def generate_scrip_master(universe: Universe) -> str:
    """The detailed scrip master CSV for ``universe`` (CRLF-free, header first)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    equity, vix, future, stock_option = _distractor_rows(universe.today)
    writer.writerow(equity)
    for spec in universe.specs:
        writer.writerow(_index_row(spec.security_id, spec.symbol, spec.display_name or spec.symbol))
    writer.writerow(vix)
    writer.writerow(future)
    for contract in universe.contracts.values():
        spec = universe.spec(contract.underlying)
        expiry = contract.expiry
        strike_text = f"{contract.strike:g}"
        call_put = "CALL" if contract.option_type == "CE" else "PUT"
        writer.writerow(
            [
                "NSE", "D", str(contract.security_id), "NA", "OPTIDX", str(spec.security_id), spec.symbol,
                f"{spec.symbol}-{_trading_month(expiry)}-{strike_text}-{contract.option_type}",
                f"{spec.symbol} {expiry.day:02d} {_MONTHS[expiry.month - 1]} {strike_text} {call_put}",
                "OP", "NA", _lot(contract.lot_size), expiry.isoformat(), _strike(contract.strike),
                str(contract.option_type), f"{contract.tick_size:.4f}", "M" if is_monthly_expiry(expiry) else "W",
                *_TAIL,
            ]
        )  # fmt: skip
    writer.writerow(stock_option)
    return out.getvalue()
