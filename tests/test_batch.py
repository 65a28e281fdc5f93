"""The batch path (``feeds.dhan.batch`` → ``FullTickBatch`` → ``ChainCache.apply_batch``) gives
exactly what the per-packet path (``decode_into`` → ``Normalizer`` → ``ChainCache.apply``) gives:
on random and hostile frames, in a mixed stream over a real socket, into the cache and into a
sink that only takes ticks."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.clock import ManualClock
from feeds.dhan.batch import FULL_SIZE, decode_full_frames
from feeds.dhan.client import Credentials, DhanFeed, DhanFeedConfig, plan_subscriptions
from feeds.dhan.codec import decode_into, encode
from feeds.dhan.normalize import Normalizer
from feeds.dhan.packets import IST_OFFSET_S, FeedMode, FullPacket, OIPacket, QuotePacket
from feeds.model import ChainSkeleton, FullTickBatch, InstrumentKey, Tick, pack_key
from service.core.cache import FLOAT_FIELDS, INT_FIELDS, ChainCache, Leg
from service.core.ingest import Ingest
from service.core.lifecycle import Lifecycle, Phase
from tests.conftest import NOW, TODAY
from tests.helpers import until

OPTIONS = [(2, 40_000 + i) for i in range(6)]
SLOW = (2, 49_999)  # subscribed with a tick that has no integer inverse: rounded packet by packet
UNKNOWN = (2, 77_777)  # not subscribed
TICKS = {**dict.fromkeys(OPTIONS, 0.05), SLOW: 0.03}

_f32 = st.floats(width=32)
_PRICE = st.one_of(st.sampled_from([0.0, -0.0, -1.5, 0.01, 0.024, 0.025, 0.075, 1e-30, float("inf"), float("nan")]),
                   _f32, st.floats(0.0625, 50_000, width=32))  # fmt: skip
_u32 = st.integers(0, 2**32 - 1)


@st.composite
def full_packets(draw: st.DrawFn) -> FullPacket:
    seg, sid = draw(st.sampled_from([*OPTIONS, SLOW, UNKNOWN]))
    _price = _PRICE
    ltt = draw(st.one_of(st.sampled_from([0, 1, IST_OFFSET_S, IST_OFFSET_S + 1]), _u32)) - IST_OFFSET_S
    depth = tuple(
        v for _ in range(5)
        for v in (draw(_u32), draw(_u32), draw(st.integers(0, 65535)), draw(st.integers(0, 65535)), draw(_price), draw(_price))
    )  # fmt: skip
    return FullPacket(
        seg, sid, draw(_price), draw(st.integers(0, 65535)), ltt, draw(_price), draw(_u32), draw(_u32), draw(_u32),
        draw(_u32), draw(_u32), draw(_u32), draw(_price), draw(_price), draw(_price), draw(_price), depth,
    )  # fmt: skip


def _per_packet(frames: list[bytes], normalize: Normalizer, received_at: float) -> tuple[list[Tick], int]:
    """The reference: every frame decoded and normalised packet by packet; (ticks, decode errors)."""
    packets: list = []
    errors: list = []
    for frame in frames:
        decode_into(frame, packets, errors)
    ticks: list[Tick] = []
    normalize(packets, received_at, ticks)
    return ticks, len(errors)


def _typed(ticks: list[Tick]) -> list[tuple]:
    """Ticks with each value's type beside it: 0 is not 0.0, and -0.0 is told from 0.0 by its repr."""
    return [tuple((type(v).__name__, repr(v)) for v in t) for t in ticks]


@settings(max_examples=150, deadline=None)
@given(st.lists(full_packets(), min_size=1, max_size=40))
def test_batch_decode_equals_the_per_packet_path(packets: list[FullPacket]) -> None:
    """Random Full frames (zero, negative, NaN, inf, sub-tick prices; unknown and slow-tick
    instruments): the batch's ticks are the per-packet path's, value for value and type for type."""
    frames = [encode(p) for p in packets]
    ref_normalize, normalize = Normalizer(TICKS), Normalizer(TICKS)
    expected, errors = _per_packet(frames, ref_normalize, NOW)
    slow: list[Tick] = []
    batch = decode_full_frames(frames, normalize, NOW, slow)
    assert batch is not None and errors == 0
    assert _typed(batch.ticks()) == _typed([t for t in expected if t.key != SLOW])
    assert _typed(slow) == _typed([t for t in expected if t.key == SLOW])
    assert normalize.unknown_instrument_packets == ref_normalize.unknown_instrument_packets


def _full(key: InstrumentKey, ltp: float = 101.25, **fields: object) -> FullPacket:
    values: dict = dict(segment=key[0], security_id=key[1], ltp=ltp, ltq=75, ltt=1_795_000_000, atp=100.5, volume=7500,
                        total_sell_qty=10, total_buy_qty=20, oi=30_000, oi_day_high=31_000, oi_day_low=29_000,
                        open=99.0, close=0.0, high=103.0, low=97.0, depth=(150, 225, 3, 4, 101.2, 101.3) * 5)  # fmt: skip
    values.update(fields)
    return FullPacket(**values)


def test_frames_that_are_not_all_well_formed_full_packets_are_left_to_the_per_packet_path() -> None:
    """A wrong code or a wrong declared length anywhere in the batch: no batch, nothing counted."""
    good = encode(_full(OPTIONS[0]))
    wrong_code = bytes([4]) + good[1:]
    wrong_length = good[:1] + struct.pack("<H", 100) + good[3:]
    normalize = Normalizer(TICKS)
    for bad in (wrong_code, wrong_length, good[:-1], good + b"\0"):
        slow: list[Tick] = []
        assert decode_full_frames([good, bad, good], normalize, NOW, slow) is None and slow == []
    assert normalize.unknown_instrument_packets == 0
    batch = decode_full_frames([good, good], normalize, NOW, [])
    assert batch is not None and len(batch) == 2


def _leg_state(leg: Leg) -> tuple:
    return tuple(getattr(leg, name) for name in (*FLOAT_FIELDS, *INT_FIELDS, "seen", "stale"))


def _cache_state(cache: ChainCache) -> dict:
    return {
        "legs": {key: _leg_state(leg) for key, leg in cache.legs.items()},
        "chains": {key: (c.version, c.updated_at, c.stale_legs) for key, c in cache.chains.items()},
        "counts": (cache.covered, cache.covered_by_underlying, cache.ticks_applied, cache.ticks_unknown),
        "dirty": {leg.key for leg in cache.dirty},
        "mirror_lag_started": cache.dirty_since is not None,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # immutable
@given(data=st.data())
def test_apply_batch_equals_applying_its_ticks(skeleton: ChainSkeleton, data: st.DataObject) -> None:
    """Repeated legs, the index, unknown instruments, legs stale or never seen before: the cache
    ends exactly as when the batch's ticks are applied one by one."""
    by_batch, by_tick = ChainCache(skeleton, clock=ManualClock(NOW)), ChainCache(skeleton, clock=ManualClock(NOW))
    keys = sorted(by_batch.legs)
    for cache in (by_batch, by_tick):
        cache.apply([t for t in _rows_as_ticks(keys[: len(keys) // 2])])
        cache.mark_stale(keys[::3])
    chosen = data.draw(st.lists(st.sampled_from([*keys, (2, 999_999), (0, 424_242)]), min_size=1, max_size=60))
    rows = [_row(data.draw(st.randoms(use_true_random=False))) for _ in chosen]
    batch = FullTickBatch([pack_key(k) for k in chosen], [list(c) for c in zip(*rows)], [1] * len(rows),
                          [2] * len(rows), NOW + 1)  # fmt: skip
    assert by_batch.apply_batch(batch) == len([k for k in chosen if k in by_batch.legs])
    by_tick.apply(batch.ticks())
    assert _cache_state(by_batch) == _cache_state(by_tick)
    assert all(leg.doc is None for leg in by_batch.dirty)


def _row(rng: random.Random) -> tuple:
    price = lambda: rng.choice([None, 0.05, 101.25, rng.randint(1, 10**6) / 20])  # noqa: E731
    qty = lambda: rng.choice([None, 0, 75, rng.randint(0, 2**32 - 1)])  # noqa: E731
    return (price(), rng.randint(0, 65535), rng.choice([None, 1_795_000_000]), price(), qty(), qty(), price(),
            price(), price(), price(), price(), qty(), price(), qty())  # fmt: skip


def _rows_as_ticks(keys: list[InstrumentKey]) -> list[Tick]:
    return FullTickBatch([pack_key(k) for k in keys], [list(c) for c in zip(*[_row(random.Random(k[1])) for k in keys])],
                         [0] * len(keys), [0] * len(keys), NOW).ticks()  # fmt: skip


# --------------------------------------------------------------------------- over a real socket


@pytest.fixture
async def frame_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A WebSocket server that sends the frames put in its list once the client subscribes."""
    frames: list[bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sent = False
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and not sent:
                sent = True
                for frame in frames:
                    await ws.send_bytes(frame)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}/", frames
    finally:
        await runner.cleanup()


def _mixed_stream(skeleton: ChainSkeleton, rng: random.Random) -> list[bytes]:
    """Full frames in bulk, with an index Quote, OI packets after Full ones of the same leg, a
    frame of two Full packets, unknown instruments, a malformed Full frame and garbage between."""
    options = [c.key for u in skeleton.underlyings.values() for e in u.expiries for c in e.contracts()]
    index = next(iter(skeleton.underlyings.values())).key
    frames = []
    for i in range(3000):
        key = rng.choice(options)
        frames.append(encode(_full(key, ltp=rng.randint(1, 40_000) / 20, volume=i, oi=rng.randint(0, 10**6))))
        if i % 500 == 7:
            frames.append(encode(QuotePacket(index[0], index[1], 24_000.05 + i, 0, 1_795_000_000, 24_000.0, 0, 0, 0,
                                             24_000.0, 0.0, 24_100.0, 23_900.0)))  # fmt: skip
        if i % 700 == 11:
            frames.append(encode(OIPacket(key[0], key[1], 5_000_000 + i)))  # must win over the Full before it
        if i % 900 == 13:
            frames.append(encode(_full(rng.choice(options), volume=i)) + encode(_full(key, ltp=7.5, volume=i)))
        if i % 1000 == 17:
            frames.append(encode(_full(UNKNOWN)))
        if i % 1100 == 19:
            frames.append(frames[-1][:1] + struct.pack("<H", 100) + frames[-1][3:])  # declares 100 of 162 bytes
        if i % 1300 == 23:
            frames.append(b"\x08\xa2\x00\x02")  # truncated header
    assert {len(f) for f in frames} > {FULL_SIZE}
    return frames


class _TicksOnly:
    """A sink without ``on_batch``: it must get the batch's ticks."""

    def __init__(self) -> None:
        self.ticks: list[Tick] = []

    def on_ticks(self, ticks: list[Tick]) -> None:
        self.ticks.extend(ticks)

    def on_event(self, event: object) -> None:
        pass


def _per_instrument(ticks: list[Tick]) -> dict[InstrumentKey, list[tuple]]:
    out: dict[InstrumentKey, list[tuple]] = {}
    for t in ticks:
        out.setdefault(t.key, []).append(tuple(map(repr, t)))
    return out


@pytest.mark.parametrize("sink_kind", ["ingest", "ticks_only"])
async def test_mixed_stream_over_a_socket_ends_as_the_per_packet_path(
    skeleton: ChainSkeleton, frame_server: tuple[str, list[bytes]], sink_kind: str
) -> None:
    """Everything the client reads (batched or not) lands as the per-packet path would put it,
    every instrument's ticks in arrival order; errors and unknown instruments are counted."""
    url, frames = frame_server
    frames += _mixed_stream(skeleton, random.Random(16))
    options = {c.key: c.tick_size for u in skeleton.underlyings.values() for e in u.expiries for c in e.contracts()}
    indices = {u.key: u.tick_size for u in skeleton.underlyings.values()}
    subs = plan_subscriptions(options, indices, FeedMode.QUOTE)
    clock = ManualClock(NOW)  # every batch is stamped NOW, as the reference's ticks are
    reference = Normalizer({s.key: s.tick_size for s in subs})
    expected, errors = _per_packet(frames, reference, NOW)
    lifecycle = Lifecycle()
    lifecycle.to(Phase.WARMING, "test")
    cache = ChainCache(skeleton, clock=ManualClock(NOW))
    sink = Ingest(cache, lifecycle, min_coverage=1.0, connections=1, clock=clock) if sink_kind == "ingest" else _TicksOnly()
    feed = DhanFeed(DhanFeedConfig(url=url), Credentials("1000000001", lambda: "test-token"), subs, clock=clock)
    task = asyncio.create_task(feed.run(sink))  # type: ignore[arg-type]
    try:
        stats = feed.connections[0].stats
        await until(lambda: stats.frames == len(frames) and not feed.connections[0]._pending, what="every frame read")
    finally:
        task.cancel()
        await asyncio.wait([task])
    assert stats.decode_errors == errors > 0
    assert feed.unknown_instrument_packets == reference.unknown_instrument_packets > 0
    assert stats.bytes == sum(map(len, frames))
    if isinstance(sink, _TicksOnly):
        assert _per_instrument(sink.ticks) == _per_instrument(expected)
        return
    by_tick = ChainCache(skeleton, clock=ManualClock(NOW))
    by_tick.apply(expected)
    assert {k: _leg_state(leg) for k, leg in cache.legs.items()} == {k: _leg_state(leg) for k, leg in by_tick.legs.items()}
    assert cache.ticks_applied == by_tick.ticks_applied == len(expected)
    assert sink.ticks == len(expected) and TODAY  # type: ignore[union-attr]
