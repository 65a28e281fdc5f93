"""Dhan's detailed scrip master CSV → the option-chain skeleton (reference §7.3–§7.6).

Only three kinds of rows matter; everything else is counted as ignored:

* the underlying's index row: ``SEGMENT=I`` whose ``UNDERLYING_SYMBOL`` (or ``SYMBOL_NAME``
  when blank) is a configured symbol, e.g. NIFTY → ``IDX_I`` 13;
* its option rows: ``INSTRUMENT`` ``OPTIDX``/``OPTSTK`` with that ``UNDERLYING_SYMBOL``,
  in ``NSE_FNO`` (``NSE`` + ``D``) or ``BSE_FNO`` (``BSE`` + ``D``).

A malformed row of a configured underlying is counted and sampled in the ``LoadReport``, never
fatal: one bad contract must not stop the service. A configured underlying left without an
index row or without options is fatal (``InstrumentMasterError``), as are missing columns.

``parse_scrip_master`` is pure; ``load_scrip_master`` fetches a path or an http(s) URL and
parses in a worker thread, since ~200k rows take long enough to stall the event loop.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import itertools
import re
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field


from feeds.errors import InstrumentMasterError
from feeds.master import (
    BadRow, Slots, build_chain, fetch_source, header_columns, is_url, place_contract, positive_number, shown_source,
    underlying_symbols,
)
from feeds.model import ChainSkeleton, InstrumentKey, LoadReport, OptionContract, OptionType, Segment

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "EXCH_ID",
    "SEGMENT",
    "SECURITY_ID",
    "INSTRUMENT",
    "UNDERLYING_SYMBOL",
    "SYMBOL_NAME",
    "LOT_SIZE",
    "SM_EXPIRY_DATE",
    "STRIKE_PRICE",
    "OPTION_TYPE",
    "TICK_SIZE",
)
OPTION_INSTRUMENTS = frozenset({"OPTIDX", "OPTSTK"})
INDEX_SEGMENT = "I"
_FNO_SEGMENTS = {("NSE", "D"): Segment.NSE_FNO, ("BSE", "D"): Segment.BSE_FNO}
_OPTION_TYPES = {t.value: t for t in OptionType}
MAX_MALFORMED_SAMPLES = 5
_SAMPLE_VALUE_CHARS = 24


@dataclass(frozen=True, slots=True)
class _Index:
    key: InstrumentKey
    tick_size: float


@dataclass(slots=True)
class _Tally:
    """Counters for one parse; ``paise_ticks`` has no LoadReport field yet, so it is logged."""

    total: int = 0
    used: int = 0
    ignored: int = 0
    malformed: int = 0
    paise_ticks: int = 0
    samples: list[str] = field(default_factory=list)

    def bad(self, line: int, reason: str) -> None:
        self.malformed += 1
        if len(self.samples) < MAX_MALFORMED_SAMPLES:
            self.samples.append(f"line {line}: {reason}")

    def report(self) -> LoadReport:
        return LoadReport(self.total, self.used, self.ignored, self.malformed, tuple(self.samples))


def _show(value: str) -> str:
    return repr(value if len(value) <= _SAMPLE_VALUE_CHARS else value[:_SAMPLE_VALUE_CHARS] + "…")


def _positive_float(value: str, column: str) -> float:
    return positive_number(value, column, _show)


def _security_id(value: str) -> int:
    value = value.strip()
    if not value:
        raise BadRow("missing SECURITY_ID")
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 2**32:
        raise BadRow(f"bad SECURITY_ID {_show(value)}")
    return int(value)


def _expiry(value: str) -> dt.date:
    # The detailed file has shown both "2024-10-03" and "2024-10-03 14:30:00" (reference §7.4).
    text = value.strip()[:10]
    try:
        if len(text) != 10 or text[4] != "-" or text[7] != "-":
            raise ValueError(text)
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise BadRow(f"bad SM_EXPIRY_DATE {_show(value)}") from None
    if day.year < 2000:  # the file's "no expiry" sentinel is 0001-01-01
        raise BadRow(f"no expiry (SM_EXPIRY_DATE {_show(value)})")
    return day


def _tick(value: str) -> tuple[float, bool]:
    """The tick in rupees, and whether the file gave it in paise."""
    tick = _positive_float(value, "TICK_SIZE")
    # Some files give ticks in paise (5.0000 = ₹0.05; reference §7.4) while others give rupees
    # (0.05). No Indian option or index ticks by ₹1 or more, so a value >= 1 must be paise
    # (an index row's 1.0000 becomes ₹0.01, which keeps every decimal the feed sends).
    if tick >= 1:
        return tick / 100, True
    return tick, False


class _Columns:
    """Column positions, found by header name (order and extra columns vary between files)."""

    def __init__(self, header: list[str]) -> None:
        names = header_columns(header, REQUIRED_COLUMNS, "scrip master")
        self.exch = names["EXCH_ID"]
        self.seg = names["SEGMENT"]
        self.sid = names["SECURITY_ID"]
        self.inst = names["INSTRUMENT"]
        self.und = names["UNDERLYING_SYMBOL"]
        self.sym = names["SYMBOL_NAME"]
        self.lot = names["LOT_SIZE"]
        self.expiry = names["SM_EXPIRY_DATE"]
        self.strike = names["STRIKE_PRICE"]
        self.opt = names["OPTION_TYPE"]
        self.tick = names["TICK_SIZE"]
        self.width = max(names[c] for c in REQUIRED_COLUMNS) + 1


def parse_scrip_master(lines: Iterable[str], underlyings: Sequence[str]) -> ChainSkeleton:
    """The option-chain skeleton of ``underlyings`` from the lines of a detailed scrip master."""
    return _parse(lines, underlyings)[0]


class _Rows:
    """The rows of ``lines`` as ``csv.reader`` reads them, less the rows that cannot be used,
    which are only counted (``skipped``): most of a ~200-400k-row file belongs to other
    underlyings, and telling so from the raw line is several times cheaper than csv's parse.

    After the header (``width`` is then set by the caller), a line is skipped unparsed when
    csv would read it as plain comma-separated fields (no quote; no line break but its end; not
    longer than ``csv.field_size_limit()``, so csv could neither join it with the next line nor
    reject it), it has the ``width`` fields a row needs (a shorter row is malformed, whoever's
    it is) and none of ``symbols`` occurs in it: a row is used only when one of its fields,
    stripped, is a configured symbol. Every other line is read by ``csv.reader``, one record
    at a time (a record may span lines). ``line_num`` counts physical lines read, as
    ``csv.reader.line_num`` does. ``whole_lines``: ``lines`` come from a file or ``StringIO``
    opened with ``newline=""``, which only ever breaks a line at its end (else it is checked).
    """

    def __init__(self, lines: Iterable[str], symbols: Sequence[str], *, whole_lines: bool) -> None:
        self._lines = iter(lines)
        # A symbol containing another one (BANKNIFTY, NIFTY) needs no search of its own.
        self._needles = [s for s in symbols if not any(o != s and o in s for o in symbols)]
        self._whole_lines = whole_lines
        self.line_num = 0
        self.skipped = 0
        self.width = 0  # fields a row needs, set once the header is read

    def _record(self, line: str) -> list[str]:
        reader = csv.reader(itertools.chain((line,), self._lines))
        try:
            return next(reader)
        finally:
            self.line_num += reader.line_num

    def __iter__(self) -> Iterator[list[str]]:
        lines = self._lines
        for line in lines:  # the header
            yield self._record(line)
            break
        commas = self.width - 1
        limit = csv.field_size_limit()
        needles = self._needles
        needle = needles[0] if len(needles) == 1 else None
        search = re.compile("|".join(map(re.escape, needles))).search
        whole = self._whole_lines
        n, skipped = self.line_num, 0
        try:
            for line in lines:
                if (
                    line.count(",") >= commas
                    and '"' not in line
                    and len(line) <= limit
                    and (whole or _breaks_only_at_end(line))
                ):
                    # Plain fields, as many as a row needs: csv would split them on commas.
                    n += 1
                    if needle is not None and needle not in line or needle is None and search(line) is None:
                        skipped += 1
                        continue
                    self.line_num = n
                    yield line.rstrip("\r\n").split(",")
                    continue
                self.line_num = n
                yield self._record(line)  # moves line_num past the record's lines (also on a csv.Error)
                n = self.line_num
            self.line_num = n
        finally:
            self.skipped = skipped


def _breaks_only_at_end(line: str) -> bool:
    """No line break in ``line`` but its terminator ("\\n", "\\r\\n" or "\\r")."""
    end = len(line) - (2 if line.endswith("\r\n") else 1 if line.endswith(("\n", "\r")) else 0)
    return "\n" not in line[:end] and "\r" not in line[:end]


def _parse(lines: Iterable[str], underlyings: Sequence[str], *, whole_lines: bool = False) -> tuple[ChainSkeleton, _Tally]:
    symbols = underlying_symbols(underlyings)
    rows = _Rows(lines, symbols, whole_lines=whole_lines)
    try:
        return _parse_rows(rows, symbols)
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit(), an unterminated quote
        raise InstrumentMasterError(f"scrip master is not a readable CSV at line {rows.line_num}: {exc}") from None


def _parse_rows(reader: _Rows, symbols: list[str]) -> tuple[ChainSkeleton, _Tally]:
    wanted = frozenset(symbols)
    rows = iter(reader)
    header = next(rows, None)
    if header is None:
        raise InstrumentMasterError("scrip master is empty (no header line)")
    col = _Columns(header)
    reader.width = col.width
    tally = _Tally()
    indices: dict[str, _Index] = {}
    # Per underlying, by (expiry, strike, side): two contracts there cannot both be real.
    contracts: dict[str, Slots] = {s: {} for s in symbols}
    seen: set[InstrumentKey] = set()
    memo = _Memo()

    for row in rows:
        if not row:
            continue  # blank line, not a row
        tally.total += 1
        if len(row) < col.width:
            # Too short to tell whose row it is, and broken whoever it belongs to.
            tally.bad(reader.line_num, f"{len(row)} fields, need at least {col.width}")
            continue
        # Most of the ~200k rows belong to other underlyings: decide on two fields first.
        und = row[col.und].strip()
        if und in wanted:
            inst = row[col.inst].strip()
            if inst in OPTION_INSTRUMENTS:
                kind = "option"
            elif row[col.seg].strip() == INDEX_SEGMENT:
                kind = "index"
            else:
                tally.ignored += 1  # futures and anything else of our underlyings
                continue
        elif not und and row[col.seg].strip() == INDEX_SEGMENT and row[col.sym].strip() in wanted:
            und = row[col.sym].strip()
            kind = "index"
        else:
            tally.ignored += 1
            continue

        try:
            if kind == "option":
                contract, tick_in_paise = _option(row, col, und, memo)
                if contract.key in seen:
                    raise BadRow(f"duplicate security id {contract.key[1]} in {Segment(contract.key[0]).name}")
                place_contract(contracts[und], contract, "ids")
                seen.add(contract.key)
                tally.paise_ticks += tick_in_paise
            else:
                key = (int(Segment.IDX_I), _security_id(row[col.sid]))
                if und in indices:
                    raise BadRow(f"second index row for {und} (id {key[1]}); keeping id {indices[und].key[1]}")
                indices[und] = _Index(key, _tick(row[col.tick].strip())[0])
        except BadRow as exc:
            tally.bad(reader.line_num, f"{und}: {exc}")
            continue
        tally.used += 1
    tally.total += reader.skipped
    tally.ignored += reader.skipped

    problems = []
    for sym in symbols:
        if sym not in indices:
            problems.append(f"{sym}: no index row (SEGMENT=I with UNDERLYING_SYMBOL or SYMBOL_NAME {sym})")
        if not contracts[sym]:
            problems.append(f"{sym}: no option rows (INSTRUMENT OPTIDX/OPTSTK with UNDERLYING_SYMBOL {sym})")
    if problems:
        hint = f"; {tally.malformed} malformed row(s), e.g. {tally.samples[0]}" if tally.malformed else ""
        raise InstrumentMasterError("scrip master unusable for " + "; ".join(problems) + hint)

    chains = {sym: build_chain(sym, indices[sym].key, indices[sym].tick_size, contracts[sym].values()) for sym in symbols}
    return ChainSkeleton(chains, tally.report()), tally


@dataclass(slots=True)
class _Memo:
    """Values already converted in this parse, by their text: a file's ~30k option rows share a
    handful of lots, ticks and expiries and repeat each strike per side and expiry. Only
    conversions that succeeded are kept, so a bad value fails (and is reported) every time."""

    lots: dict[str, float] = field(default_factory=dict)
    ticks: dict[str, tuple[float, bool]] = field(default_factory=dict)
    expiries: dict[str, dt.date] = field(default_factory=dict)
    strikes: dict[str, float] = field(default_factory=dict)


def _option(row: list[str], col: _Columns, underlying: str, memo: _Memo) -> tuple[OptionContract, bool]:
    """The row's contract, and whether its tick was given in paise."""
    segment = _FNO_SEGMENTS.get((row[col.exch].strip(), row[col.seg].strip()))
    if segment is None:
        raise BadRow(f"option in unsupported EXCH_ID/SEGMENT {row[col.exch]!r}/{row[col.seg]!r}")
    sid = _security_id(row[col.sid])
    option_type = _OPTION_TYPES.get(row[col.opt].strip())
    if option_type is None:
        raise BadRow(f"bad OPTION_TYPE {_show(row[col.opt])}")
    text = row[col.lot].strip()
    lot = memo.lots.get(text)
    if lot is None:
        lot = memo.lots[text] = _positive_float(text, "LOT_SIZE")
    text = row[col.tick].strip()
    tick_read = memo.ticks.get(text)
    if tick_read is None:
        tick_read = memo.ticks[text] = _tick(text)
    text = row[col.expiry]
    expiry = memo.expiries.get(text)
    if expiry is None:
        expiry = memo.expiries[text] = _expiry(text)
    text = row[col.strike].strip()
    strike = memo.strikes.get(text)
    if strike is None:
        strike = memo.strikes[text] = _positive_float(text, "STRIKE_PRICE")
    contract = OptionContract(
        key=(int(segment), sid),
        underlying=underlying,
        expiry=expiry,
        strike=strike,
        option_type=option_type,
        lot_size=int(lot),
        tick_size=tick_read[0],
    )
    return contract, tick_read[1]


# --------------------------------------------------------------------------- loading


async def load_scrip_master(source: str, underlyings: Sequence[str], *, timeout_s: float = 30.0) -> ChainSkeleton:
    """Load the skeleton from a filesystem path or an http(s) URL of a detailed scrip master."""
    underlying_symbols(underlyings)  # fail on bad configuration before any network round trip
    if is_url(source):
        body = await fetch_scrip_master(source, timeout_s=timeout_s)
        return await parse_scrip_master_bytes(body, underlyings, shown=shown_source(source))
    skeleton, tally = await asyncio.to_thread(_parse_file, source, underlyings)
    _log_loaded(source, skeleton, tally)
    return skeleton


async def fetch_scrip_master(source: str, *, timeout_s: float = 30.0) -> bytes:
    """The bytes of the scrip master at an http(s) URL, unparsed (a caller may keep a copy);
    InstrumentMasterError, naming the URL without its query, when it cannot be fetched."""
    return await fetch_source(source, timeout_s, what="scrip master")


async def parse_scrip_master_bytes(body: bytes, underlyings: Sequence[str], *, shown: str) -> ChainSkeleton:
    """``parse_scrip_master`` of a fetched body, in a worker thread; logs what was read."""
    underlying_symbols(underlyings)
    skeleton, tally = await asyncio.to_thread(_parse_bytes, body, underlyings)
    _log_loaded(shown, skeleton, tally)
    return skeleton


def _log_loaded(shown: str, skeleton: ChainSkeleton, tally: _Tally) -> None:
    r = skeleton.report
    log.info(
        "scrip master %s: %d rows, %d used, %d ignored, %d malformed, %d option ticks read as paise; %d instruments",
        shown,
        r.rows_total,
        r.rows_used,
        r.rows_ignored,
        r.rows_malformed,
        tally.paise_ticks,
        skeleton.instrument_count(),
    )
    if r.rows_malformed:
        log.warning("scrip master %s: malformed rows, e.g. %s", shown, "; ".join(r.malformed_samples))


def _parse_bytes(body: bytes, underlyings: Sequence[str]) -> tuple[ChainSkeleton, _Tally]:
    # Undecodable bytes can only sit in names and descriptions we never key on, so they are
    # replaced rather than failing the whole file; "-sig" drops a byte-order mark.
    text = body.decode("utf-8-sig", errors="replace")
    return _parse(io.StringIO(text, newline=""), underlyings, whole_lines=True)


def _parse_file(path: str, underlyings: Sequence[str]) -> tuple[ChainSkeleton, _Tally]:
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            return _parse(f, underlyings, whole_lines=True)
    except OSError as exc:
        raise InstrumentMasterError(f"cannot read scrip master {path}: {exc.strerror or exc}") from exc


_EXCHANGE = {Segment.NSE_FNO: "NSE", Segment.BSE_FNO: "BSE", Segment.IDX_I: "NSE"}


def write_scrip_master(skeleton: ChainSkeleton) -> str:
    """A detailed-format CSV holding exactly ``skeleton``: ``parse_scrip_master`` reads it back
    to an equal skeleton. Recordings carry it so a replay serves the instruments it recorded."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REQUIRED_COLUMNS)
    for symbol, und in skeleton.underlyings.items():
        writer.writerow(["NSE", "I", und.key[1], "INDEX", symbol, symbol, "1.0", "", "", "", f"{und.tick_size:g}"])
        for chain in und.expiries:
            for contract in chain.contracts():
                writer.writerow(
                    [
                        _EXCHANGE[Segment(contract.key[0])], "D", contract.security_id, "OPTIDX", symbol, symbol,
                        f"{contract.lot_size}.0", contract.expiry.isoformat(), f"{contract.strike:.5f}",
                        contract.option_type.value, f"{contract.tick_size:g}",
                    ]
                )
    return out.getvalue()
