"""Kite's instruments CSV → the option-chain skeleton (kite-protocol.md §5).

Columns (``https://api.kite.trade/instruments`` or ``/instruments/NFO``)::

    instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,
    lot_size,instrument_type,segment,exchange

Rows used:

* the underlying's index: ``segment`` ``INDICES`` whose ``tradingsymbol`` is the index's name on
  Kite (NIFTY → ``NIFTY 50``, BANKNIFTY → ``NIFTY BANK``, see ``INDEX_SYMBOLS``) or the symbol
  itself;
* its options: ``instrument_type`` ``CE``/``PE`` in ``NFO-OPT`` or ``BFO-OPT`` whose ``name`` is
  the underlying (when ``name`` is blank, as in some published extracts, the letters of
  ``tradingsymbol`` before its first digit).

Instruments are keyed ``instrument_key(instrument_token)``; a token whose low byte disagrees
with its ``exchange`` is malformed. Index rows carry tick 0: their tick is taken as ₹0.05 (index
values move in 0.05 on NSE and BSE). As for Dhan's scrip master, a malformed row of a configured
underlying is counted and sampled, never fatal; an underlying left without an index or options,
or missing columns, is fatal (``InstrumentMasterError``).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
from collections.abc import Iterable, Sequence

from feeds.errors import InstrumentMasterError
from feeds.kite.packets import KiteSegment, instrument_key
from feeds.master import BadRow, Slots, build_chain, fetch_source, header_columns, place_contract, positive_number, shown_source, underlying_symbols
from feeds.model import ChainSkeleton, InstrumentKey, LoadReport, OptionContract, OptionType

log = logging.getLogger(__name__)

COLUMNS = (
    "instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry", "strike", "tick_size",
    "lot_size", "instrument_type", "segment", "exchange",
)  # fmt: skip
OPTION_SEGMENTS = {"NFO-OPT": KiteSegment.NFO, "BFO-OPT": KiteSegment.BFO}
INDEX_SEGMENT = "INDICES"
# The index each underlying's options settle on, as Kite names it.
INDEX_SYMBOLS = {
    "NIFTY": "NIFTY 50",
    "BANKNIFTY": "NIFTY BANK",
    "FINNIFTY": "NIFTY FIN SERVICE",
    "MIDCPNIFTY": "NIFTY MID SELECT",
    "NIFTYNXT50": "NIFTY NEXT 50",
    "SENSEX": "SENSEX",
    "BANKEX": "BANKEX",
}
INDEX_TICK = 0.05
MAX_MALFORMED_SAMPLES = 5
_OPTION_TYPES = {t.value: t for t in OptionType}


def _underlying_of(name: str, tradingsymbol: str) -> str:
    name = name.strip().upper()
    if name:
        return name
    symbol = tradingsymbol.strip().upper()
    for i, ch in enumerate(symbol):
        if ch.isdigit():
            return symbol[:i]
    return symbol


def _positive(value: str, column: str) -> float:
    return positive_number(value, column, lambda v: repr(v[:24]))


def _token(value: str, exchange: str) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 2**32:
        raise BadRow(f"bad instrument_token {value[:24]!r}")
    token = int(value)
    want = KiteSegment.__members__.get(exchange.strip().upper())
    if exchange.strip().upper() != INDEX_SEGMENT and want is not None and token & 0xFF != want:
        raise BadRow(f"instrument_token {token} is in segment {token & 0xFF}, not {exchange} ({int(want)})")
    return token


def parse_instruments(lines: Iterable[str], underlyings: Sequence[str]) -> ChainSkeleton:
    """The option-chain skeleton of ``underlyings`` from the lines of Kite's instruments CSV."""
    symbols = underlying_symbols(underlyings)
    index_names = {INDEX_SYMBOLS.get(s, s): s for s in symbols} | {s: s for s in symbols}
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise InstrumentMasterError("instruments CSV is empty (no header line)")
    col = header_columns(header, COLUMNS, "instruments CSV")
    width = max(col[c] for c in COLUMNS) + 1
    total = used = ignored = malformed = 0
    samples: list[str] = []
    indices: dict[str, InstrumentKey] = {}
    contracts: dict[str, Slots] = {s: {} for s in symbols}
    seen: set[int] = set()
    for row in reader:
        if not row:
            continue
        total += 1
        if len(row) < width:
            malformed += 1
            if len(samples) < MAX_MALFORMED_SAMPLES:
                samples.append(f"line {reader.line_num}: {len(row)} fields, need at least {width}")
            continue
        segment = row[col["segment"]].strip()
        und = ""
        try:
            if segment == INDEX_SEGMENT:
                und = index_names.get(row[col["tradingsymbol"]].strip().upper(), "")
                if not und:
                    ignored += 1
                    continue
                token = _token(row[col["instrument_token"]], INDEX_SEGMENT)
                if token & 0xFF != KiteSegment.INDICES:
                    raise BadRow(f"index token {token} is not in segment INDICES (9)")
                if und in indices:
                    raise BadRow(f"second index row for {und} (token {token}); keeping {indices[und][1]}")
                indices[und] = instrument_key(token)
            elif segment in OPTION_SEGMENTS:
                und = _underlying_of(row[col["name"]], row[col["tradingsymbol"]])
                if und not in contracts:
                    ignored += 1
                    continue
                contract = _option(row, col, und)
                if contract.key[1] in seen:
                    raise BadRow(f"duplicate instrument_token {contract.key[1]}")
                place_contract(contracts[und], contract, "tokens")
                seen.add(contract.key[1])
            else:
                ignored += 1
                continue
        except BadRow as exc:
            malformed += 1
            if len(samples) < MAX_MALFORMED_SAMPLES:
                samples.append(f"line {reader.line_num}: {und}: {exc}")
            continue
        used += 1
    problems = []
    for sym in symbols:
        if sym not in indices:
            problems.append(f"{sym}: no index row (segment INDICES, tradingsymbol {INDEX_SYMBOLS.get(sym, sym)!r})")
        if not contracts[sym]:
            problems.append(f"{sym}: no option rows (segment NFO-OPT/BFO-OPT with name {sym})")
    if problems:
        hint = f"; {malformed} malformed row(s), e.g. {samples[0]}" if malformed else ""
        raise InstrumentMasterError("instruments CSV unusable for " + "; ".join(problems) + hint)
    report = LoadReport(total, used, ignored, malformed, tuple(samples))
    chains = {sym: build_chain(sym, indices[sym], INDEX_TICK, contracts[sym].values()) for sym in symbols}
    return ChainSkeleton(chains, report)


def _option(row: list[str], col: dict[str, int], underlying: str) -> OptionContract:
    token = _token(row[col["instrument_token"]], row[col["exchange"]])
    option_type = _OPTION_TYPES.get(row[col["instrument_type"]].strip())
    if option_type is None:
        raise BadRow(f"bad instrument_type {row[col['instrument_type']][:24]!r}")
    text = row[col["expiry"]].strip()
    try:
        expiry = dt.date.fromisoformat(text[:10])
    except ValueError:
        raise BadRow(f"bad expiry {text[:24]!r}") from None
    return OptionContract(
        key=instrument_key(token),
        underlying=underlying,
        expiry=expiry,
        strike=_positive(row[col["strike"]].strip(), "strike"),
        option_type=option_type,
        lot_size=int(_positive(row[col["lot_size"]].strip(), "lot_size")),
        tick_size=_positive(row[col["tick_size"]].strip(), "tick_size"),
    )


async def load_instruments(source: str, underlyings: Sequence[str], *, timeout_s: float = 30.0) -> ChainSkeleton:
    """Load the skeleton from a path or an http(s) URL of Kite's instruments CSV."""
    body = await fetch_source(source, timeout_s, what="instruments CSV")
    text = body.decode("utf-8-sig", errors="replace")
    skeleton = await asyncio.to_thread(parse_instruments, io.StringIO(text, newline=""), underlyings)
    r = skeleton.report
    log.info(
        "instruments CSV %s: %d rows, %d used, %d ignored, %d malformed; %d instruments",
        shown_source(source), r.rows_total, r.rows_used, r.rows_ignored, r.rows_malformed, skeleton.instrument_count(),
    )
    if r.rows_malformed:
        log.warning("instruments CSV %s: malformed rows, e.g. %s", shown_source(source), "; ".join(r.malformed_samples))
    return skeleton


def write_instruments(skeleton: ChainSkeleton, *, expiry_names: bool = True) -> str:
    """Kite's CSV holding exactly ``skeleton`` (plus nothing else): ``parse_instruments`` reads
    it back to an equal skeleton. The simulator serves it; recordings could carry it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for symbol, und in skeleton.underlyings.items():
        token = und.key[1]
        name = INDEX_SYMBOLS.get(symbol, symbol)
        writer.writerow([token, token >> 8, name, name, "0.0", "", "0.0", "0.0", "0", "EQ", INDEX_SEGMENT,
                         "NSE" if symbol not in ("SENSEX", "BANKEX") else "BSE"])  # fmt: skip
        for chain in und.expiries:
            for c in chain.contracts():
                token = c.key[1]
                seg = KiteSegment(token & 0xFF)
                tradingsymbol = f"{symbol}{c.expiry:%y%b}".upper() + f"{c.strike:g}{c.option_type.value}"
                writer.writerow(
                    [
                        token, token >> 8, tradingsymbol, symbol if expiry_names else "", "0.0", c.expiry.isoformat(),
                        f"{c.strike:g}", f"{c.tick_size:g}", c.lot_size, c.option_type.value,
                        f"{seg.name}-OPT", seg.name,
                    ]
                )
    return out.getvalue()
