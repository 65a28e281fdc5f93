"""Property-based fuzzing of everything that parses outside input: only our typed error escapes.

* the Dhan and Kite binary decoders (valid frames mutated: bytes flipped, truncated, spliced,
  lengths lied about) → packets plus ``DecodeError``s, never another exception;
* the scrip-master loader (a valid master mutated) → a skeleton or ``InstrumentMasterError``;
* the settings loader (TOML files and ``LIVECHAIN_*`` values, valid ones mutated) → Settings or
  ``ConfigError``, and a secret in the input never appears in the message.

Short form in ``make test`` (a few hundred inputs each); ``make test-long`` sets
``RELIABILITY_FUZZ_EXAMPLES`` for the long form (≥ 1,000,000 decoder inputs in all, see
docs/reliability.md for the last results).
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.dhan.codec import decode_into as dhan_decode_into
from feeds.dhan.codec import encode
from feeds.dhan.instruments import parse_scrip_master, write_scrip_master
from feeds.errors import DecodeError, InstrumentMasterError
from feeds.kite import codec as kite_codec
from feeds.model import ChainSkeleton
from service.errors import ConfigError
from service.settings import _file_path_keys, known_variables, load_settings
from tests.conftest import TODAY
from tests.test_codec import packets as dhan_packets

EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "200"))
BATCH = int(os.environ.get("RELIABILITY_FUZZ_BATCH", "20"))  # decoder inputs per hypothesis example
INPUTS = 0  # decoder inputs tried in this run
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)  # fmt: skip
SECRET = "Sup3rS3cretValue"
FILE_VARIABLES = {f"LIVECHAIN_{s.upper()}__{k.upper()}" for s, k in _file_path_keys()}


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` bytes with a few random edits: flips, deletions, insertions, truncation, splices."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(("flip", "delete", "insert", "truncate", "duplicate")))
        pos = draw(st.integers(0, len(data))) if data else 0
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete" and pos < len(data):
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate" and data:
            data[pos:pos] = data[: draw(st.integers(1, len(data)))]
    return bytes(data)


dhan_frames = st.lists(dhan_packets, min_size=1, max_size=4).map(lambda ps: b"".join(encode(p) for p in ps))


def _variants(frame: bytes, seed: int) -> Iterator[bytes]:
    """``BATCH`` cheap random edits of ``frame`` (hypothesis picks the frame and the seed; the
    batch takes the long form to millions of inputs at decoder speed)."""
    rng = random.Random(seed)
    yield frame
    for _ in range(BATCH - 1):
        data = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            if data and rng.random() < 0.7:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif data:
                del data[rng.randrange(len(data)) :]
        yield bytes(data)


def _decodes_with_typed_errors_only(decode_into: object, frame: bytes, seed: int) -> None:
    global INPUTS
    for variant in _variants(frame, seed):
        out: list[object] = []
        errors: list[DecodeError] = []
        decode_into(variant, out, errors)  # type: ignore[operator]
        assert all(isinstance(e, DecodeError) for e in errors)
        INPUTS += 1


@FUZZ
@given(mutated(dhan_frames) | st.binary(max_size=300), st.integers(0, 2**32))
def test_dhan_decoder_only_raises_decode_errors(frame: bytes, seed: int) -> None:
    """Any frame: decode_into appends packets and DecodeErrors, nothing else escapes."""
    _decodes_with_typed_errors_only(dhan_decode_into, frame, seed)


kite_frames = st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=4).map(
    lambda bodies: len(bodies).to_bytes(2, "big") + b"".join(len(b).to_bytes(2, "big") + b for b in bodies)
)


@FUZZ
@given(st.binary(max_size=400) | mutated(kite_frames), st.integers(0, 2**32))
def test_kite_decoder_only_raises_decode_errors(frame: bytes, seed: int) -> None:
    """The Kite decoder too: packets and DecodeErrors only."""
    _decodes_with_typed_errors_only(kite_codec.decode_into, frame, seed)


def test_report_fuzzed_inputs() -> None:
    """Runs after the decoder tests: prints how many decoder inputs were tried (the long form needs ≥ 1M)."""
    print(f"decoder inputs fuzzed: {INPUTS}")
    if os.environ.get("RELIABILITY_LONG"):
        assert INPUTS >= 1_000_000


@pytest.fixture(scope="module")
def master_bytes() -> bytes:
    from feeds.simulator.config import SimulatorConfig
    from feeds.simulator.universe import build_universe

    skeleton: ChainSkeleton = build_universe(
        SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=2, today=TODAY), TODAY
    ).skeleton
    return write_scrip_master(skeleton).encode()


@FUZZ
@given(data=st.data())
def test_scrip_master_loader_only_raises_its_error(master_bytes: bytes, data: st.DataObject) -> None:
    """A malformed master yields a skeleton (bad rows counted) or InstrumentMasterError, nothing else."""
    text = data.draw(mutated(st.just(master_bytes))).decode("utf-8", errors="replace")
    try:
        parse_scrip_master(text.splitlines(keepends=True), ["NIFTY"])
    except InstrumentMasterError:
        pass


TOML_BASE = f"""
[http]
port = 8080
cors_allow_origins = ["http://a.example"]
[redis]
url = "redis://:{SECRET}@127.0.0.1:6379/0"
[feed]
reconnect_initial_s = 0.5
reconnect_max_s = 30
[instruments]
underlyings = ["NIFTY"]
""".encode()


@FUZZ
@given(data=st.data())
def test_settings_loader_only_raises_config_errors(tmp_path: Path, data: st.DataObject) -> None:
    """A mangled TOML file loads or fails with ConfigError; the password in it is never quoted."""
    path = tmp_path / "livechain.toml"
    path.write_bytes(data.draw(mutated(st.just(TOML_BASE))))
    try:
        load_settings(path)
    except ConfigError as exc:
        assert SECRET not in str(exc)


@FUZZ
@given(
    name=st.sampled_from(known_variables()),
    value=st.text(string.printable, max_size=40) | st.just(f"redis://:{SECRET}/x@h:1/0"),
)
def test_environment_values_only_raise_config_errors(name: str, value: str) -> None:
    """Any value for any known variable loads or fails with ConfigError without echoing the value."""
    if name == "LIVECHAIN_CONFIG":
        return  # names a file: covered by the TOML test
    os.environ[name] = value
    try:
        load_settings()
    except ConfigError as exc:
        # A setting that names a file says which file it could not find, by design.
        assert SECRET not in str(exc) or name in FILE_VARIABLES
    finally:
        del os.environ[name]
