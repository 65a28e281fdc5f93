"""Decode and normalise many one-packet Full frames at once, column by column, with numpy.

Options subscribed in Full mode (everything the service streams but the indices) arrive one
162-byte Full packet per WebSocket frame. Decoding them one at a time costs a ``struct``
unpack, a packet tuple and a tick tuple per packet, more than the socket's own work per frame;
here the frames of one batch are joined and read as one structured array, every price of a
column is rounded to its instrument's tick in one vectorised expression, and the batch comes
out as numpy columns (``feeds.model.FullTickBatch``: prices float64 with NaN for not sent,
quantities and times int64 with ``MISSING_INT``), which the cache assigns into its own columns. The result is value for value what ``codec.decode_into`` + ``Normalizer`` make of the
same frames (``tests/test_batch.py`` proves it on random and hostile frames):

* prices: the same IEEE operations as the scalar path, ``(p * n + M - M) / n`` with ``p`` the
  float32 widened to float64 and ``n`` the instrument's tick inverse, so every bit is equal;
  a price that is not > 0 (0, negative, NaN) is not sent (``None`` in ``ticks()``);
* ``ltt``: the wire's IST seconds minus 5h30m, not sent when not > 0;
* bid/ask quantity: level 1 of the depth, not sent beside a missing bid/ask price.

What does not fit a column is left to the per-packet path by the caller: a batch whose frames
are not all well-formed Full packets (``decode_full_frames`` returns ``None``), and packets of
instruments whose tick has no integer inverse (appended to ``slow`` as FullTicks; they are other
instruments than the batch's, so applying them after it keeps every instrument's order).
Packets of instruments not subscribed are counted by the normaliser and dropped, as there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from feeds.dhan.codec import decode_packet
from feeds.dhan.normalize import Normalizer
from feeds.dhan.packets import FULL, IST_OFFSET_S, ResponseCode
from feeds.model import MISSING_INT, FullTickBatch, Tick, unpack_key
from feeds.prices import ROUNDER

FULL_SIZE = FULL.size  # 162

# The Full packet's fields the domain keeps (reference §4.8), at their wire offsets; the depth
# beyond level 1 and the OI day high/low are skipped. Level 1: bid qty, ask qty, bid orders,
# ask orders, bid price, ask price.
FULL_DTYPE = np.dtype(
    {
        "names": ["code", "length", "segment", "security_id", "ltp", "ltq", "ltt", "atp", "volume",
                  "total_sell_qty", "total_buy_qty", "oi", "open", "close", "high", "low",
                  "bid_qty", "ask_qty", "bid", "ask"],
        "formats": ["u1", "<u2", "u1", "<u4", "<f4", "<u2", "<u4", "<f4", "<u4",
                    "<u4", "<u4", "<u4", "<f4", "<f4", "<f4", "<f4",
                    "<u4", "<u4", "<f4", "<f4"],
        "offsets": [0, 1, 3, 4, 8, 12, 14, 18, 22, 26, 30, 34, 46, 50, 54, 58, 62, 66, 74, 78],
        "itemsize": FULL_SIZE,
    }
)  # fmt: skip
assert FULL_DTYPE.itemsize == FULL.size

_FULL_CODE = int(ResponseCode.FULL)
_M = ROUNDER
_MISSING = np.int64(MISSING_INT)


_PRICES = ("ltp", "atp", "open", "close", "high", "low", "bid", "ask")


def decode_full_frames(
    frames: list[bytes], normalize: Normalizer, received_at: float, slow: list[Tick]
) -> FullTickBatch | None:
    """The batch of ``frames``, each one 162-byte frame: None unless all are well-formed Full packets.

    Packets of instruments the normaliser rounds one by one go to ``slow``; packets of unknown
    instruments are counted there and dropped.
    """
    data = b"".join(frames)
    if len(data) != FULL_SIZE * len(frames):
        return None
    a = np.frombuffer(data, dtype=FULL_DTYPE)
    if not ((a["code"] == _FULL_CODE) & (a["length"] == FULL_SIZE)).all():
        return None
    keys = (a["segment"].astype(np.int64) << 32) | a["security_id"]
    fast_keys, inverses = normalize.fast_arrays()
    pos = np.searchsorted(fast_keys, keys)
    if len(fast_keys):
        np.minimum(pos, len(fast_keys) - 1, out=pos)
        found = fast_keys[pos] == keys
    else:
        found = np.zeros(len(keys), dtype=bool)
    if not found.all():
        _not_fast(data, keys, found, normalize, received_at, slow)
        a, keys, pos = a[found], keys[found], pos[found]
    n = inverses[pos]
    # All eight price columns at once: (8, rows) float64, rounded in one vectorised expression.
    raw = np.empty((len(_PRICES), len(a)), dtype=np.float64)
    for i, name in enumerate(_PRICES):
        raw[i] = a[name]
    valid = raw > 0.0
    with np.errstate(all="ignore"):  # NaN and inf prices are data here (not sent and inf), not errors
        prices = (raw * n + _M - _M) / n
    if not valid.all():
        prices[~valid] = np.nan
    ints = np.empty((6, len(a)), dtype=np.int64)
    ints[0] = a["ltq"]
    ints[1] = a["ltt"]
    ints[1] -= IST_OFFSET_S
    ints[1][ints[1] <= 0] = MISSING_INT
    ints[2] = a["volume"]
    ints[3] = a["oi"]
    ints[4] = np.where(valid[6], a["bid_qty"], _MISSING)
    ints[5] = np.where(valid[7], a["ask_qty"], _MISSING)
    return FullTickBatch.from_arrays(keys, prices, ints, a["total_sell_qty"], a["total_buy_qty"], received_at)


def _not_fast(data: bytes, keys: Any, found: Any, normalize: Normalizer, received_at: float, slow: list[Tick]) -> None:
    """Rows the columns leave out: the per-packet path for slow-tick instruments, a count for unknown ones."""
    unknown = 0
    for i in np.flatnonzero(~found).tolist():
        if normalize.is_slow(unpack_key(int(keys[i]))):
            packet, _ = decode_packet(data, i * FULL_SIZE)
            normalize([packet], received_at, slow)
        else:
            unknown += 1
    normalize.count_unknown(unknown)
