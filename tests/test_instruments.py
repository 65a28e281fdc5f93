"""Scrip master loading: the detailed CSV (reference §7.3–§7.5) into a ChainSkeleton."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import socket
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.dhan.instruments import REQUIRED_COLUMNS, _parse, _parse_rows, load_scrip_master, parse_scrip_master
from feeds.errors import InstrumentMasterError
from feeds.model import OptionType, Segment

SAMPLE = Path(__file__).parent / "data" / "scrip_master_sample.csv"
NSE_FNO = int(Segment.NSE_FNO)
IDX_I = int(Segment.IDX_I)

HEADER = (
    "EXCH_ID,SEGMENT,SECURITY_ID,ISIN,INSTRUMENT,UNDERLYING_SECURITY_ID,UNDERLYING_SYMBOL,SYMBOL_NAME,"
    "DISPLAY_NAME,INSTRUMENT_TYPE,SERIES,LOT_SIZE,SM_EXPIRY_DATE,STRIKE_PRICE,OPTION_TYPE,TICK_SIZE,EXPIRY_FLAG"
)
NIFTY_INDEX = "NSE,I,13,NA,INDEX,13,NIFTY,NIFTY,Nifty 50,INDEX,X,1.0,0001-01-01,-0.01000,XX,0.0500,NA"


def option(sid: str = "58548", strike: str = "25800.00000", side: str = "CE", expiry: str = "2024-10-03",
           lot: str = "25.0", tick: str = "0.0500", exch: str = "NSE", und: str = "NIFTY") -> str:
    """One OPTIDX row in the detailed format, with the fields a test wants to vary."""
    return (f"{exch},D,{sid},NA,OPTIDX,13,{und},{und},{und} OPT,OP,NA,{lot},{expiry},{strike},{side},{tick},W")


def parse(*rows: str, underlyings: tuple[str, ...] = ("NIFTY",), header: str = HEADER):
    return parse_scrip_master([header, *rows], underlyings)


def sample_lines() -> list[str]:
    return SAMPLE.read_text().splitlines()


# --------------------------------------------------------------------------- the sample file


def test_sample_skeleton_structure() -> None:
    """NIFTY and BANKNIFTY from the sample: keys, ticks, expiries and strikes in order."""
    sk = parse_scrip_master(sample_lines(), ["NIFTY", "BANKNIFTY"])
    assert list(sk.underlyings) == ["NIFTY", "BANKNIFTY"]

    nifty = sk.underlyings["NIFTY"]
    assert nifty.symbol == "NIFTY"
    assert nifty.key == (IDX_I, 13)
    assert nifty.tick_size == 0.05
    assert [e.expiry for e in nifty.expiries] == [dt.date(2024, 10, 3), dt.date(2024, 10, 31)]

    weekly, monthly = nifty.expiries
    assert weekly.lot_size == 25
    assert [r.strike for r in weekly.strikes] == [25750.0, 25800.0, 25850.0]
    low, mid, high = weekly.strikes
    assert low.ce is None and low.pe is not None and low.pe.key == (NSE_FNO, 58546)
    assert mid.ce is not None and mid.ce.key == (NSE_FNO, 58548)
    assert mid.pe is not None and mid.pe.key == (NSE_FNO, 58549)
    assert high.ce is not None and high.ce.key == (NSE_FNO, 58551) and high.pe is None

    ce = mid.ce
    assert ce.underlying == "NIFTY"
    assert ce.expiry == dt.date(2024, 10, 3)
    assert ce.strike == 25800.0
    assert ce.option_type is OptionType.CE
    assert ce.lot_size == 25
    assert ce.tick_size == 0.05
    assert ce.security_id == 58548

    # The monthly rows carry a time suffix on the expiry ("2024-10-31 14:30:00").
    assert [r.strike for r in monthly.strikes] == [25800.0]
    assert monthly.strikes[0].ce is not None and monthly.strikes[0].ce.key == (NSE_FNO, 40099)
    assert monthly.strikes[0].pe is not None and monthly.strikes[0].pe.option_type is OptionType.PE

    bank = sk.underlyings["BANKNIFTY"]
    # BANKNIFTY's index row has a blank UNDERLYING_SYMBOL: found by SYMBOL_NAME.
    assert bank.key == (IDX_I, 25)
    assert [e.expiry for e in bank.expiries] == [dt.date(2024, 10, 30)]
    assert bank.expiries[0].lot_size == 15
    assert [(r.strike, r.ce is not None, r.pe is not None) for r in bank.expiries[0].strikes] == [
        (51900.0, True, False),
        (52000.0, True, True),
    ]
    assert sk.instrument_count() == 2 + 6 + 3


def test_sample_paise_tick_converted() -> None:
    """An option TICK_SIZE of 5.0000 (paise) becomes ₹0.05, like the rupee rows."""
    sk = parse_scrip_master(sample_lines(), ["NIFTY"])
    monthly_ce = sk.underlyings["NIFTY"].expiries[1].strikes[0].ce
    assert monthly_ce is not None and monthly_ce.tick_size == pytest.approx(0.05)


def test_sample_report_counts() -> None:
    """Used, ignored and malformed rows are counted; malformed ones are sampled with line numbers."""
    report = parse_scrip_master(sample_lines(), ["NIFTY", "BANKNIFTY"]).report
    assert report.rows_total == 17
    assert report.rows_used == 11  # 2 index rows + 6 NIFTY + 3 BANKNIFTY options
    assert report.rows_ignored == 4  # INDIA VIX, RELIANCE equity, NIFTY future, RELIANCE option
    assert report.rows_malformed == 2
    assert len(report.malformed_samples) == 2
    strike_sample, date_sample = report.malformed_samples
    assert strike_sample.startswith("line 14:") and "STRIKE_PRICE" in strike_sample
    assert date_sample.startswith("line 15:") and "SM_EXPIRY_DATE" in date_sample


def test_sample_other_underlyings_ignored() -> None:
    """With NIFTY alone, BANKNIFTY's rows are ignored rather than used."""
    sk = parse_scrip_master(sample_lines(), ["nifty"])
    assert list(sk.underlyings) == ["NIFTY"]
    assert sk.report.rows_used == 7
    assert sk.report.rows_ignored == 8
    assert sk.report.rows_malformed == 2


# --------------------------------------------------------------------------- row semantics


def test_bse_options_map_to_bse_fno() -> None:
    """SENSEX: BSE + D rows are BSE_FNO contracts; the index row is still IDX_I."""
    sk = parse(
        "BSE,I,51,NA,INDEX,51,SENSEX,SENSEX,Sensex,INDEX,X,1.0,0001-01-01,-0.01000,XX,0.0500,NA",
        option("1100470", "68000.00000", exch="BSE", und="SENSEX", lot="20.0"),
        underlyings=("SENSEX",),
    )
    sensex = sk.underlyings["SENSEX"]
    assert sensex.key == (IDX_I, 51)
    ce = sensex.expiries[0].strikes[0].ce
    assert ce is not None and ce.key == (int(Segment.BSE_FNO), 1100470) and ce.lot_size == 20


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (option("58600", side="XX"), "OPTION_TYPE"),
        (option(""), "missing SECURITY_ID"),
        (option("12a"), "SECURITY_ID"),
        (option("58600", strike="nan"), "STRIKE_PRICE"),
        (option("58600", strike="-0.01000"), "STRIKE_PRICE"),
        (option("58600", lot=""), "LOT_SIZE"),
        (option("58600", tick="abc"), "TICK_SIZE"),
        (option("58600", expiry=""), "SM_EXPIRY_DATE"),
        (option("58600", expiry="03-10-2024"), "SM_EXPIRY_DATE"),
        (option("58600", expiry="0001-01-01"), "no expiry"),
        (option("58600", exch="MCX"), "EXCH_ID/SEGMENT"),
        ("NSE,D,58600,NA,OPTIDX,13,NIFTY", "fields"),
    ],
)
def test_malformed_rows_are_counted_not_fatal(row: str, reason: str) -> None:
    """A bad row of a configured underlying is counted with a sample; the rest still loads."""
    sk = parse(NIFTY_INDEX, option(), row)
    assert sk.report.rows_malformed == 1
    assert sk.report.rows_used == 2
    assert sk.report.malformed_samples[0].startswith("line 4:")
    assert reason in sk.report.malformed_samples[0]


def test_duplicate_security_id_keeps_first() -> None:
    """A second row with the same (segment, id) is malformed; the first contract stays."""
    sk = parse(NIFTY_INDEX, option("58548", "25800.00000"), option("58548", "26000.00000"))
    assert sk.report.rows_malformed == 1
    assert "duplicate security id 58548" in sk.report.malformed_samples[0]
    assert [r.strike for r in sk.underlyings["NIFTY"].expiries[0].strikes] == [25800.0]


def test_duplicate_contract_keeps_first() -> None:
    """Two ids for one (expiry, strike, side) are reported, not silently merged."""
    sk = parse(NIFTY_INDEX, option("58548"), option("58600"))
    assert sk.report.rows_malformed == 1
    assert "CE 25800 2024-10-03 listed twice (ids 58548, 58600)" in sk.report.malformed_samples[0]
    ce = sk.underlyings["NIFTY"].expiries[0].strikes[0].ce
    assert ce is not None and ce.security_id == 58548


def test_malformed_samples_capped_at_five() -> None:
    """Every malformed row is counted but only five are sampled."""
    bad = [option(str(60000 + i), side="X") for i in range(8)]
    report = parse(NIFTY_INDEX, option(), *bad).report
    assert report.rows_malformed == 8
    assert len(report.malformed_samples) == 5


def test_lot_size_parsed_from_float_text() -> None:
    """LOT_SIZE "65.0" is the integer 65, per contract and per expiry."""
    sk = parse(NIFTY_INDEX, option(lot="65.0"))
    chain = sk.underlyings["NIFTY"].expiries[0]
    assert chain.lot_size == 65
    assert chain.strikes[0].ce is not None and chain.strikes[0].ce.lot_size == 65


def test_header_names_stripped_bom_and_extra_columns() -> None:
    """Header names are matched after stripping blanks and a byte-order mark; unknown columns are ignored."""
    header = "\ufeff" + ", ".join(HEADER.split(",")) + ", SM_FREEZE_QTY ,NEW_COLUMN"
    sk = parse(NIFTY_INDEX + ",1800,x", option() + ",1800,y", header=header)
    assert sk.report.rows_used == 2


def test_blank_lines_are_not_rows() -> None:
    """Empty lines (e.g. a trailing newline) are neither rows nor malformed."""
    sk = parse(NIFTY_INDEX, "", option(), "")
    assert sk.report.rows_total == 2
    assert sk.report.rows_malformed == 0


# --------------------------------------------------------------------------- lines skipped unparsed


class _CsvRows:
    """The reference reading: every line through one ``csv.reader``, nothing skipped."""

    def __init__(self, lines: list[str]) -> None:
        self.reader = csv.reader(lines)
        self.skipped = 0
        self.width = 0

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    def __iter__(self):
        return iter(self.reader)


def _outcome(run) -> tuple:
    """(skeleton, report, paise ticks) of a parse, or the text of the error it raised."""
    try:
        skeleton, tally = run()
    except InstrumentMasterError as exc:
        return ("error", str(exc))
    return ("ok", skeleton, tally.report(), tally.paise_ticks)


def _reference(lines: list[str], symbols: list[str]) -> tuple:
    rows = _CsvRows(lines)
    try:
        return _outcome(lambda: _parse_rows(rows, symbols))
    except csv.Error as exc:
        return ("error", f"scrip master is not a readable CSV at line {rows.line_num}: {exc}")


_LINES = [
    NIFTY_INDEX,
    "NSE,I,25,NA,INDEX,25,BANKNIFTY,BANKNIFTY,Nifty Bank,INDEX,X,1.0,0001-01-01,-0.01000,XX,0.0500,NA",
    option(),
    option(sid="58549", side="PE"),
    option(sid="58550", strike="25850.00000", expiry="2024-10-31 14:30:00", tick="5.0000"),
    option(sid="58551", strike="abc"),  # malformed
    option(sid="x1"),  # malformed
    option(sid="58552", und=" NIFTY "),  # used: the field is stripped
    option(sid="60001", und="BANKNIFTY"),
    option(sid="60002", und="MIDCPNIFTY"),  # holds "NIFTY", not a configured symbol
    option(sid="60003", und="RELIANCE"),
    "NSE,E,2885,INE002A01018,EQUITY,,,RELIANCE,Reliance Industries,ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA",
    "NSE,D,35001,NA,FUTIDX,13,NIFTY,NIFTY-Oct2024-FUT,NIFTY FUT,FUT,NA,25.0,2024-10-31,-0.01000,XX,0.1000,M",
    "NSE,E,3045,INE062A01020,EQUITY,,,SBIN,\"State Bank, of India\",ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA",
    "NSE,E,3046,INE062A01021,EQUITY,,,SBI2,\"two\nlines, NIFTY\",ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA",
    "NSE,E,3047,NA,EQUITY,,,ODD,quote\"inside,ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA",
    "NSE,E,3048,NA,\"EQUITY\nx\",,,ODD2",  # a quoted break, then too few fields
    "NSE,E,3049,NA,EQUITY,,,SHORT",  # too few fields: malformed whoever's it is
    "NSE,E,3050,NA,EQUITY,,,LONG," + "x" * 300 + ",ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA",  # over the limit
    "NSE,E,3051,NA,EQUITY,,,TAB,\t,ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA,extra,columns",
    "NSE,E,3052,NA,EQUITY,,,BREAK\rINSIDE,ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA",
    "NSE,E,3053,NA,EQUITY,,,ML,ES,EQ,1.0,0001-01-01,-0.01000,XX,0.0500,NA,\"multi\nline, NIFTY\"",
    "NSE,D,58560,NA,OPTIDX,13,NIFTY,NIFTY,\"NIFTY 03 OCT, 25900 CALL\",OP,NA,25.0,2024-10-03,25900.00000,CE,0.0500,W",
    "",
    " ",
    "\"unterminated,NIFTY",
]


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(_LINES) - 1), max_size=30),
    ends=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=3),
    symbols=st.sampled_from([["NIFTY"], ["NIFTY", "BANKNIFTY"], ["BANKNIFTY"], ["MIDCPNIFTY", "RELIANCE"]]),
)
def test_lines_skipped_unparsed_read_as_csv_reads_them(picks: list[int], ends: list[str], symbols: list[str]) -> None:
    """Whatever mix of quoted fields, breaks inside quotes, short, long, blank and other
    underlyings' rows: the loader's result (skeleton, counts, malformed samples with their line
    numbers, or the error and its line) is what one csv.reader over every line gives, for a file
    (lines broken by ``newline=""``) and for a list of lines."""
    body = [_LINES[i] for i in picks]
    text = "".join(line + ends[i % len(ends)] for i, line in enumerate([HEADER, *body]))
    limit = csv.field_size_limit(200)  # the 300-character field is over it
    try:
        from_file = list(io.StringIO(text, newline=""))
        expected = _reference(from_file, symbols)
        assert _outcome(lambda: _parse(io.StringIO(text, newline=""), symbols, whole_lines=True)) == expected
        assert _outcome(lambda: _parse(from_file, symbols)) == expected
        as_list = [HEADER, *body]  # a caller's own lines: no terminators, breaks may sit inside
        assert _outcome(lambda: _parse(as_list, symbols)) == _reference(as_list, symbols)
    finally:
        csv.field_size_limit(limit)


# --------------------------------------------------------------------------- fatal errors


def test_missing_underlying_is_fatal() -> None:
    """A configured symbol absent from the file raises, naming it."""
    with pytest.raises(InstrumentMasterError, match="FINNIFTY: no index row"):
        parse_scrip_master(sample_lines(), ["NIFTY", "FINNIFTY"])


def test_underlying_without_options_is_fatal() -> None:
    """An index with no option rows (INDIA VIX) raises, naming it."""
    with pytest.raises(InstrumentMasterError, match="INDIA VIX: no option rows"):
        parse_scrip_master(sample_lines(), ["INDIA VIX"])


def test_underlying_whose_only_index_row_is_malformed_mentions_it() -> None:
    """When the index row itself is broken the error points at the malformed sample."""
    bad_index = NIFTY_INDEX.replace(",13,NA,", ",,NA,", 1)
    with pytest.raises(InstrumentMasterError, match=r"NIFTY: no index row.*missing SECURITY_ID"):
        parse(bad_index, option())


def test_missing_required_columns_named() -> None:
    """A header without required columns raises, naming each missing one."""
    header = HEADER.replace("STRIKE_PRICE,", "").replace("OPTION_TYPE,", "")
    with pytest.raises(InstrumentMasterError, match="STRIKE_PRICE, OPTION_TYPE"):
        parse(NIFTY_INDEX, header=header)


def test_compact_file_is_rejected_by_column_names() -> None:
    """The compact file's SEM_* header lacks every detailed column."""
    compact = "SEM_EXM_EXCH_ID,SEM_SEGMENT,SEM_SMST_SECURITY_ID,SEM_INSTRUMENT_NAME"
    with pytest.raises(InstrumentMasterError, match=", ".join(REQUIRED_COLUMNS)):
        parse(header=compact)


def test_empty_input_is_fatal() -> None:
    """No header line at all is an error, not an empty skeleton."""
    with pytest.raises(InstrumentMasterError, match="empty"):
        parse_scrip_master([], ["NIFTY"])


def test_underlyings_must_be_a_sequence_of_symbols() -> None:
    """A bare string or an empty list of underlyings is a configuration error."""
    with pytest.raises(TypeError):
        parse_scrip_master(sample_lines(), "NIFTY")
    with pytest.raises(InstrumentMasterError, match="no usable underlying"):
        parse_scrip_master(sample_lines(), [])


# --------------------------------------------------------------------------- loading


async def test_load_from_path(caplog: pytest.LogCaptureFixture) -> None:
    """A filesystem path loads the same skeleton, and the summary counts the paise ticks."""
    with caplog.at_level(logging.INFO, logger="feeds.dhan.instruments"):
        sk = await load_scrip_master(str(SAMPLE), ["NIFTY", "BANKNIFTY"])
    assert sk == parse_scrip_master(sample_lines(), ["NIFTY", "BANKNIFTY"])
    assert "1 option ticks read as paise" in caplog.text


async def test_load_missing_path() -> None:
    """An unreadable path raises InstrumentMasterError with the OSError as cause."""
    with pytest.raises(InstrumentMasterError, match="cannot read") as info:
        await load_scrip_master("/nonexistent/scrip.csv", ["NIFTY"])
    assert isinstance(info.value.__cause__, FileNotFoundError)


def _app() -> web.Application:
    body = SAMPLE.read_bytes()

    async def csv_file(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/csv")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(body=body)

    async def redirect_loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(location="/loop.csv?token=s3cret")

    app = web.Application()
    app.router.add_get("/loop.csv", redirect_loop)
    app.router.add_get("/api-data/api-scrip-master-detailed.csv", csv_file)
    app.router.add_get("/slow.csv", slow)
    return app


async def test_load_from_url(caplog: pytest.LogCaptureFixture) -> None:
    """An http URL served by a real local server loads; the query string never reaches the log."""
    async with TestServer(_app(), host="127.0.0.1", port=0) as server:
        url = str(server.make_url("/api-data/api-scrip-master-detailed.csv").with_query(token="s3cret"))
        with caplog.at_level(logging.DEBUG, logger="feeds.dhan.instruments"):
            sk = await load_scrip_master(url, ["NIFTY", "BANKNIFTY"])
    assert sk == parse_scrip_master(sample_lines(), ["NIFTY", "BANKNIFTY"])
    assert "api-scrip-master-detailed.csv" in caplog.text
    assert "s3cret" not in caplog.text


async def test_load_url_404() -> None:
    """A non-200 answer raises InstrumentMasterError with the status, without the query string."""
    async with TestServer(_app(), host="127.0.0.1", port=0) as server:
        url = str(server.make_url("/missing.csv").with_query(token="s3cret"))
        with pytest.raises(InstrumentMasterError, match="HTTP 404") as info:
            await load_scrip_master(url, ["NIFTY"])
    assert "s3cret" not in str(info.value)


async def test_load_url_error_text_never_carries_the_query() -> None:
    """aiohttp errors that embed the full URL are not chained when it has a query string."""
    async with TestServer(_app(), host="127.0.0.1", port=0) as server:
        url = str(server.make_url("/loop.csv").with_query(token="s3cret"))
        with pytest.raises(InstrumentMasterError, match="TooManyRedirects") as info:
            await load_scrip_master(url, ["NIFTY"])
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "s3cret" not in str(info.value)


async def test_load_url_connection_refused() -> None:
    """A network error raises InstrumentMasterError with the aiohttp error chained."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nothing listens there
    with pytest.raises(InstrumentMasterError, match="cannot fetch") as info:
        await load_scrip_master(f"http://127.0.0.1:{port}/scrip.csv", ["NIFTY"])
    assert info.value.__cause__ is not None


async def test_load_url_timeout() -> None:
    """A server slower than timeout_s raises InstrumentMasterError naming the timeout."""
    async with TestServer(_app(), host="127.0.0.1", port=0) as server:
        with pytest.raises(InstrumentMasterError, match="after 0.2 s") as info:
            await load_scrip_master(str(server.make_url("/slow.csv")), ["NIFTY"], timeout_s=0.2)
    assert isinstance(info.value.__cause__, TimeoutError)
