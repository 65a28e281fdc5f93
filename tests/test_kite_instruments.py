"""Kite's instruments CSV → the chain skeleton: Zerodha's sample, round trip with the writer, bad rows."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from feeds.errors import InstrumentMasterError
from feeds.kite.instruments import load_instruments, parse_instruments, write_instruments
from feeds.model import OptionType, Segment
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import build_universe
from feeds.simulator.kite import kite_universe
from tests.conftest import TODAY

SAMPLE = Path(__file__).parent / "data" / "kite" / "instruments_all.csv"
# Zerodha's 100-row sample has no index rows; a real file lists them like this.
NIFTY_BANK = "260105,1016,NIFTY BANK,NIFTY BANK,0.0,,0.0,0.0,0,EQ,INDICES,NSE\n"


def _lines(text: str) -> io.StringIO:
    return io.StringIO(text, newline="")


def test_zerodhas_sample_gives_the_banknifty_chain() -> None:
    """The sample's BANKNIFTY options (name column blank) form chains by expiry and strike."""
    skeleton = parse_instruments(_lines(SAMPLE.read_text() + NIFTY_BANK), ["BANKNIFTY"])
    und = skeleton.underlyings["BANKNIFTY"]
    assert und.key == (int(Segment.IDX_I), 260105)
    assert [e.expiry for e in und.expiries] == [dt.date(2017, 11, 30), dt.date(2017, 12, 28), dt.date(2018, 1, 25)]
    jan = und.expiries[2]
    assert [r.strike for r in jan.strikes] == [23400.0, 23500.0, 23600.0, 23700.0]
    row = jan.strikes[1]
    assert row.ce is not None and row.pe is not None
    assert row.ce.key == (int(Segment.NSE_FNO), 12073986) and row.pe.key == (int(Segment.NSE_FNO), 12074242)
    assert (row.ce.lot_size, row.ce.tick_size, row.ce.option_type) == (40, 0.05, OptionType.CE)
    r = skeleton.report
    assert r.rows_total == 100 and r.rows_malformed == 0 and r.rows_used == 1 + 12  # the index and 12 options


def test_missing_index_or_columns_are_fatal_with_the_reason() -> None:
    """No index row, no options, or a missing column stops the load naming what is missing."""
    with pytest.raises(InstrumentMasterError, match="BANKNIFTY: no index row .*'NIFTY BANK'"):
        parse_instruments(_lines(SAMPLE.read_text()), ["BANKNIFTY"])
    with pytest.raises(InstrumentMasterError, match="NIFTY: no index row.*NIFTY: no option rows"):
        parse_instruments(_lines(SAMPLE.read_text()), ["NIFTY"])
    with pytest.raises(InstrumentMasterError, match="lacks required column"):
        parse_instruments(_lines("instrument_token,name\n1,X\n"), ["NIFTY"])


def test_malformed_rows_are_counted_not_fatal() -> None:
    """A token in the wrong segment, a bad strike and a short row are counted and sampled."""
    bad = (
        "12073987,47164,BANKNIFTY18JAN99000CE,BANKNIFTY,0,2018-01-25,99000.0,0.05,40,CE,NFO-OPT,NFO\n"  # segment 3
        "12099842,47265,BANKNIFTY18JAN99100CE,BANKNIFTY,0,2018-01-25,x,0.05,40,CE,NFO-OPT,NFO\n"
        "1,2,3\n"
    )
    skeleton = parse_instruments(_lines(SAMPLE.read_text() + NIFTY_BANK + bad), ["BANKNIFTY"])
    r = skeleton.report
    assert r.rows_malformed == 3
    assert "segment 3, not NFO" in r.malformed_samples[0] and "bad strike" in r.malformed_samples[1]


async def test_writer_round_trips_the_simulators_kite_universe(tmp_path: Path) -> None:
    """write_instruments(skeleton) parses back to the same skeleton, from a file too."""
    config = SimulatorConfig(underlyings=("NIFTY", "BANKNIFTY"), expiries=2, strikes_per_side=3, today=TODAY)
    skeleton = kite_universe(build_universe(config, TODAY)).skeleton
    text = write_instruments(skeleton)
    again = parse_instruments(_lines(text), ["NIFTY", "BANKNIFTY"])
    assert again.underlyings == skeleton.underlyings
    blank_names = parse_instruments(_lines(write_instruments(skeleton, expiry_names=False)), ["NIFTY", "BANKNIFTY"])
    assert blank_names.underlyings == skeleton.underlyings
    path = tmp_path / "instruments.csv"
    path.write_text(text)
    loaded = await load_instruments(str(path), ["NIFTY"])
    assert loaded.underlyings["NIFTY"] == skeleton.underlyings["NIFTY"]
    assert loaded.underlyings["NIFTY"].key == (int(Segment.IDX_I), 256265)
    with pytest.raises(InstrumentMasterError, match="cannot read instruments CSV"):
        await load_instruments(str(tmp_path / "missing.csv"), ["NIFTY"])
