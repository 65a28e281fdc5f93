"""A detailed Dhan scrip master of realistic size, generated deterministically (not committed).

The real file (reference §7.3–§7.5, ``feeds/dhan/instruments.py``) lists every instrument
Dhan trades: NSE and BSE equities (with bonds and ETFs), indices, index and stock futures and
options, currency futures and options on NSE and BSE, MCX commodity futures and options.
``write_scrip_master`` writes one like it for the cold-start benchmark:

* the simulator universe's rows exactly as the simulator serves them
  (``feeds.simulator.scrip_master.generate_scrip_master``: the configured underlyings' index
  and option rows, with the security ids the simulator streams), so a service that loads this
  file subscribes instruments the simulator knows;
* far-dated quarterly expiries of the same underlyings (rows the loader parses in full and the
  service keeps in its full list, then leaves out of the live chains: ``max_expiries``);
* everything else as filler the loader must read and skip, by segment (``SEGMENTS``): stock
  options make up the rest of ``total_rows``.

Same columns and value formats as the simulator's file (strike ``25800.00000``, lot ``75.0``,
tick ``0.0500``, ``-0.01000`` for a non-option's strike, ``0001-01-01`` for no expiry); names
and ids come from counters, so the same arguments always give the same bytes. No name of a
filler row is an underlying the service can be configured with from the simulator (NIFTY,
BANKNIFTY, FINNIFTY), except futures, which the loader ignores.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from feeds.simulator.scrip_master import HEADER, generate_scrip_master
from feeds.simulator.universe import Universe, last_tuesday

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_NO_EXPIRY = "0001-01-01"
_NO_STRIKE = "-0.01000"
_TAIL = ("N", "N", "N", "NA", "A", "0.00", "0.00", "0.00")  # BRACKET_FLAG .. MTF_LEVERAGE
_EQ_TAIL = ("Y", "Y", "N", "NA", "A", "12.50", "12.50", "4.00")

# Rows per filler block at full size (the stock options fill up to ``total_rows``).
NSE_EQUITIES = 9_000  # EQ/BE/SM series, ETFs, bonds and G-secs
BSE_EQUITIES = 25_000  # A/B/T/X/Z groups and debt
NSE_INDICES = 120
BSE_INDICES = 80
FNO_STOCKS = 220  # stocks with futures and options on NSE
STOCK_EXPIRIES = 3  # monthly
OTHER_NSE_INDEX_OPTIONS = ("MIDCPNIFTY", "NIFTYNXT50")  # not simulated: rows a loader skips
BSE_INDEX_OPTIONS = ("SENSEX", "BANKEX", "SENSEX50")
CURRENCY_PAIRS = ("USDINR", "EURINR", "GBPINR", "JPYINR", "EURUSD", "GBPUSD", "USDJPY")
COMMODITIES = (
    "GOLD", "GOLDM", "GOLDPETAL", "SILVER", "SILVERM", "SILVERMIC", "CRUDEOIL", "CRUDEOILM", "NATURALGAS",
    "NATGASMINI", "COPPER", "ZINC", "ZINCMINI", "LEAD", "LEADMINI", "ALUMINIUM", "ALUMINI", "NICKEL", "MENTHAOIL",
    "COTTONCNDY", "CARDAMOM", "KAPAS", "ELECDMBL", "STEELREBAR", "MCXBULLDEX", "MCXMETLDEX", "MCXENRGDEX",
    "CASTORSEED", "RUBBER", "BRCRUDEOIL",
)  # fmt: skip
FAR_EXPIRIES = 8  # quarterly expiries of the simulated underlyings beyond the universe's


@dataclass(frozen=True, slots=True)
class WrittenMaster:
    path: Path
    rows: int  # data rows, header excluded
    bytes: int
    by_segment: dict[str, int]  # "NSE E" → rows


def write_scrip_master(path: Path, universe: Universe, total_rows: int) -> WrittenMaster:
    """Write ``path``: ``universe`` as the simulator serves it plus filler up to ``total_rows``."""
    simulated = generate_scrip_master(universe)
    head, _, body = simulated.partition("\n")
    if tuple(head.split(",")) != HEADER:
        raise AssertionError("the simulator's scrip master has another header")
    by_segment: dict[str, int] = {}
    fixed = list(_fixed_blocks(universe))
    universe_rows = body.count("\n")
    fixed_rows = sum(len(rows) for rows in fixed)
    stock_rows = total_rows - universe_rows - fixed_rows
    if stock_rows < FNO_STOCKS * STOCK_EXPIRIES * 2:
        raise ValueError(f"total_rows {total_rows:,} leaves no room for stock options: at least "
                         f"{universe_rows + fixed_rows + FNO_STOCKS * STOCK_EXPIRIES * 2:,}")  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    out.write(head + "\n")

    def count(rows: Iterable[Sequence[str]]) -> None:
        for row in rows:
            seg = f"{row[0]} {row[1]}"
            by_segment[seg] = by_segment.get(seg, 0) + 1

    for block in fixed[:4]:  # equities and indices first, as the real file orders its segments
        writer.writerows(block)
        count(block)
    out.write(body)
    count(line.split(",", 2) for line in body.splitlines())
    for block in (*fixed[4:], list(_stock_options(universe.today, stock_rows))):
        writer.writerows(block)
        count(block)
    data = out.getvalue().encode()
    path.write_bytes(data)
    rows = sum(by_segment.values())
    if rows != total_rows:
        raise AssertionError(f"wrote {rows:,} rows, meant {total_rows:,}")
    return WrittenMaster(path, rows, len(data), by_segment)


# --------------------------------------------------------------------------- blocks


def _fixed_blocks(universe: Universe) -> Iterator[list[list[str]]]:
    today = universe.today
    yield _equities("NSE", NSE_EQUITIES, 100, ("EQ", "BE", "SM", "ST", "N1", "GS"))
    yield _equities("BSE", BSE_EQUITIES, 500_000, ("A", "B", "T", "X", "Z", "F"))
    yield _indices("NSE", NSE_INDICES, 100)
    yield _indices("BSE", BSE_INDICES, 1_000)
    yield _far_expiries(universe)
    yield _index_derivatives("NSE", OTHER_NSE_INDEX_OPTIONS, today, 300_000, weeks=4, months=8, strikes=120)
    yield _index_derivatives("BSE", BSE_INDEX_OPTIONS, today, 1_100_000, weeks=6, months=6, strikes=100)
    yield _stock_futures(today)
    yield _currency("NSE", today, 1_000)
    yield _currency("BSE", today, 20_000)
    yield _commodities(today)


def _ticker(i: int, width: int = 6) -> str:
    """A made-up, pronounceable-enough symbol from a counter: 0 → ``AAAAAA``."""
    letters = []
    for _ in range(width):
        i, r = divmod(i, 26)
        letters.append(chr(65 + r))
    return "".join(reversed(letters))


def _month(day: dt.date) -> str:
    return _MONTHS[day.month - 1]


def _trading_month(day: dt.date) -> str:
    return f"{_month(day).title()}{day.year}"


def _month_ends(today: dt.date, count: int, step: int = 1) -> list[dt.date]:
    out: list[dt.date] = []
    year, month = today.year, today.month
    while len(out) < count:
        day = last_tuesday(year, month)
        if day >= today:
            out.append(day)
        month += step
        year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return out


def _weeks(today: dt.date, count: int, weekday: int) -> list[dt.date]:
    first = today + dt.timedelta(days=(weekday - today.weekday()) % 7)
    return [first + dt.timedelta(weeks=i) for i in range(count)]


def _equities(exch: str, count: int, first_id: int, series: tuple[str, ...]) -> list[list[str]]:
    rows = []
    for i in range(count):
        sym = _ticker(i + (0 if exch == "NSE" else 7_000))
        s = series[i % len(series)]
        isin = f"INE{i % 1000:03d}{_ticker(i, 2)}{i % 100:02d}{i % 10:01d}{(i * 7) % 10}"
        rows.append([
            exch, "E", str(first_id + i), isin, "EQUITY", "", "", sym, f"{sym.title()} Limited", "ES", s, "1.0",
            _NO_EXPIRY, _NO_STRIKE, "XX", "0.0500" if i % 3 else "0.0100", "NA", *_EQ_TAIL,
        ])  # fmt: skip
    return rows


def _indices(exch: str, count: int, first_id: int) -> list[list[str]]:
    rows = []
    for i in range(count):
        sym = f"{'NIFTY' if exch == 'NSE' else 'BSE'} {_ticker(i, 3)} {i:03d}"
        rows.append([
            exch, "I", str(first_id + i), "NA", "INDEX", str(first_id + i), sym, sym, sym.title(), "INDEX", "NA",
            "1.0", _NO_EXPIRY, "", "XX", "0.0500", "N", *_TAIL,
        ])  # fmt: skip
    return rows


def _option_row(exch: str, sid: int, inst: str, und_id: int, und: str, expiry: dt.date, strike: float, side: str,
                lot: int, tick: str, flag: str) -> list[str]:  # fmt: skip
    strike_text = f"{strike:g}"
    call_put = "CALL" if side == "CE" else "PUT"
    return [
        exch, "D", str(sid), "NA", inst, str(und_id), und, f"{und}-{_trading_month(expiry)}-{strike_text}-{side}",
        f"{und} {expiry.day:02d} {_month(expiry)} {strike_text} {call_put}", "OP", "NA", f"{float(lot):.1f}",
        expiry.isoformat(), f"{strike:.5f}", side, tick, flag, *_TAIL,
    ]  # fmt: skip


def _future_row(exch: str, seg: str, sid: int, inst: str, und_id: int, und: str, expiry: dt.date, lot: int,
                tick: str) -> list[str]:  # fmt: skip
    return [
        exch, seg, str(sid), "NA", inst, str(und_id), und, f"{und}-{_trading_month(expiry)}-FUT",
        f"{und} {_month(expiry)} FUT", "FUT", "NA", f"{float(lot):.1f}", expiry.isoformat(), _NO_STRIKE, "XX", tick,
        "M", *_TAIL,
    ]  # fmt: skip


def _far_expiries(universe: Universe) -> list[list[str]]:
    """Quarterly expiries of the simulated underlyings after the universe's last one."""
    rows = []
    sid = 200_000
    for spec in universe.specs:
        last = max(e.expiry for e in universe.skeleton.underlyings[spec.symbol].expiries)
        quarters = [d for d in _month_ends(last + dt.timedelta(days=1), FAR_EXPIRIES * 3) if d.month % 3 == 0]
        atm = round(spec.spot / spec.strike_step) * spec.strike_step
        step = spec.strike_step * 10
        for expiry in quarters[:FAR_EXPIRIES]:
            for k in range(-25, 26):
                for side in ("CE", "PE"):
                    rows.append(_option_row("NSE", sid, "OPTIDX", spec.security_id, spec.symbol, expiry,
                                            float(atm + k * step), side, spec.lot_size, "0.0500", "M"))  # fmt: skip
                    sid += 1
            rows.append(_future_row("NSE", "D", sid, "FUTIDX", spec.security_id, spec.symbol, expiry, spec.lot_size,
                                    "0.1000"))  # fmt: skip
            sid += 1
    return rows


def _index_derivatives(exch: str, symbols: tuple[str, ...], today: dt.date, first_id: int, *, weeks: int,
                       months: int, strikes: int) -> list[list[str]]:  # fmt: skip
    rows = []
    sid = first_id
    for n, und in enumerate(symbols):
        und_id = (442 if exch == "NSE" else 51) + n * 10
        atm, step, lot = 12_000 + 20_000 * n, 25 * (n + 1), 20 + 40 * n
        expiries = sorted({*_weeks(today, weeks, 3 if exch == "BSE" else 1), *_month_ends(today, months)})
        for expiry in expiries:
            for k in range(-strikes // 2, strikes // 2):
                for side in ("CE", "PE"):
                    rows.append(_option_row(exch, sid, "OPTIDX", und_id, und, expiry, float(atm + k * step), side,
                                            lot, "0.0500", "W"))  # fmt: skip
                    sid += 1
        for expiry in _month_ends(today, 3):
            rows.append(_future_row(exch, "D", sid, "FUTIDX", und_id, und, expiry, lot, "0.1000"))
            sid += 1
    return rows


def _stock_futures(today: dt.date) -> list[list[str]]:
    rows = []
    sid = 400_000
    for i in range(FNO_STOCKS):
        for expiry in _month_ends(today, STOCK_EXPIRIES):
            rows.append(_future_row("NSE", "D", sid, "FUTSTK", 100 + i, _ticker(i), expiry, 250 + 25 * (i % 40),
                                    "0.1000"))  # fmt: skip
            sid += 1
    return rows


def _stock_options(today: dt.date, count: int) -> Iterator[list[str]]:
    """``count`` stock option rows, spread evenly over the F&O stocks and their expiries."""
    expiries = _month_ends(today, STOCK_EXPIRIES)
    chains = FNO_STOCKS * STOCK_EXPIRIES
    sid = 500_000
    for c in range(chains):
        i, expiry = divmod(c, STOCK_EXPIRIES)
        rows_here = count // chains + (1 if c < count % chains else 0)
        spot = 100 + 37 * (i % 97) * (1 + i % 5)
        step = 5 if spot < 1_000 else 20
        first = spot - (rows_here // 4) * step
        for r in range(rows_here):
            yield _option_row("NSE", sid, "OPTSTK", 100 + i, _ticker(i), expiries[expiry], float(first + (r // 2) * step),
                              "CE" if r % 2 == 0 else "PE", 250 + 25 * (i % 40), "0.0500", "M")  # fmt: skip
            sid += 1


def _currency(exch: str, today: dt.date, first_id: int) -> list[list[str]]:
    rows = []
    sid = first_id
    for n, pair in enumerate(CURRENCY_PAIRS):
        months = _month_ends(today, 12)
        for expiry in months:
            rows.append(_future_row(exch, "C", sid, "FUTCUR", 0, pair, expiry, 1_000, "0.0025"))
            sid += 1
        spot = (83.0, 90.0, 105.0, 56.0, 1.08, 1.27, 150.0)[n]
        strikes = 120 if pair == "USDINR" else 40
        expiries = [*_weeks(today, 8 if pair == "USDINR" else 0, 4), *months[: 12 if pair == "USDINR" else 4]]
        for expiry in expiries:
            for k in range(-strikes // 2, strikes // 2):
                for side in ("CE", "PE"):
                    row = _option_row(exch, sid, "OPTCUR", 0, pair, expiry, round(spot * (1 + k * 0.0025), 4), side,
                                      1_000, "0.0025", "W")  # fmt: skip
                    row[1] = "C"
                    rows.append(row)
                    sid += 1
    return rows


def _commodities(today: dt.date) -> list[list[str]]:
    rows = []
    sid = 430_000
    for n, name in enumerate(COMMODITIES):
        months = _month_ends(today, 6)
        for expiry in months:
            rows.append(_future_row("MCX", "M", sid, "FUTCOM", 0, name, expiry, 1 + n % 10, "1.0000"))
            sid += 1
        if n >= 12:
            continue
        spot, step = 5_000 * (n + 1), 50 * (n + 1)
        for expiry in months[:4]:
            for k in range(-60, 60):
                for side in ("CE", "PE"):
                    row = _option_row("MCX", sid, "OPTFUT", 0, name, expiry, float(spot + k * step), side, 1 + n % 10,
                                      "0.5000", "M")  # fmt: skip
                    row[1] = "M"
                    rows.append(row)
                    sid += 1
    return rows
