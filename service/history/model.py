"""A chain's day of samples, and the one encoding of a sample (sans-I/O).

A ``Sample`` is what the sampler kept of one chain at one instant ``t_us`` (UTC epoch
microseconds, so times round-trip exactly through Redis and Parquet):

* ``head``: the chain-level series, ``HEAD_FIELDS`` in order (``None`` where the body had null);
* ``legs``: a float64 array of shape (``len(LEG_FIELDS)``, 2 × strikes): per strike its CE then
  its PE value of each leg field (NaN: null, or no such leg), in the order of ``strikes``; held
  zstd-compressed (~8 KB instead of 16 for 251 strikes; decompressed per read, ~20 µs);
* ``body``: the ``/options/live`` body served at that instant, zstd-compressed (level 1: a
  250-strike body of ~250 kB keeps ~14 kB; ~1 ms to compress, ~0.15 ms to decompress), so
  ``at=`` answers exactly the bytes that were served.

Every value comes from the body itself (``sample_of``), so a sample is what a client got,
whatever the cache's internals are, and the same code samples a primary or a replica.

``encode``/``decode`` are the wire form shared by Redis and by nothing else (Parquet has
columns of its own): a small JSON header, the columns' bytes and the compressed body.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from feeds.model import IST
from service.history import BadSample

# The chain-level series, in /options/history's point order (ce/pe nested there).
HEAD_FIELDS = (
    "underlying_ltp", "forward", "atm_strike", "atm_iv", "atm_straddle", "pcr_oi", "pcr_volume", "max_pain",
    "ce_oi", "ce_oi_change", "ce_volume", "pe_oi", "pe_oi_change", "pe_volume",
)  # fmt: skip
LEG_FIELDS = ("ltp", "oi", "volume", "iv")
_INT_LEG_FIELDS = frozenset({"oi", "volume"})
_INT_HEAD = frozenset({"ce_oi", "ce_oi_change", "ce_volume", "pe_oi", "pe_oi_change", "pe_volume"})
SIDES = ("CE", "PE")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _codec():  # pyarrow is imported on first use: a process without history never loads it
    import pyarrow as pa

    global _CODEC
    _CODEC = pa.Codec("zstd", compression_level=1)
    return _CODEC


_CODEC = None


def compress(body: bytes) -> bytes:
    return (_CODEC or _codec()).compress(body, asbytes=True)


def decompress(data: bytes, size: int) -> bytes:
    return (_CODEC or _codec()).decompress(data, size, asbytes=True)


# --------------------------------------------------------------------------- times


def ist_of_us(t_us: int) -> dt.datetime:
    """UTC epoch microseconds as an aware IST datetime, exactly (no float on the way)."""
    return (_EPOCH + dt.timedelta(microseconds=t_us)).astimezone(IST)


def iso_of_us(t_us: int) -> str:
    """As ``as_of`` is written in ``/options/live`` (orjson's ISO-8601, IST offset)."""
    return orjson.dumps(ist_of_us(t_us))[1:-1].decode()


def us_of(value: dt.datetime) -> int:
    """An aware datetime as UTC epoch microseconds, exactly."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def us_of_epoch(epoch_s: float) -> int:
    return round(epoch_s * 1_000_000)


def day_of_us(t_us: int) -> dt.date:
    """The IST calendar day of an instant: a session's day."""
    return ist_of_us(t_us).date()


def parse_instant(raw: str) -> int:
    """An ISO-8601 instant (a naive one is IST) as UTC epoch microseconds; ValueError if bad.

    A ``+`` of the offset that arrived unescaped in a query string reads as a space: taken back."""
    text = raw.strip()
    if not text or len(text) > 64 or not text.isascii():
        raise ValueError("not an ISO-8601 instant")
    if " " in text and text.rsplit(" ", 1)[1][:2].isdigit() and ":" in text.rsplit(" ", 1)[1] and "T" in text:
        head, tail = text.rsplit(" ", 1)
        text = f"{head}+{tail}"
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=IST)
    return us_of(value)


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True, slots=True)
class Sample:
    t_us: int
    head: tuple[float | int | None, ...]  # HEAD_FIELDS
    strikes: tuple[float, ...]  # shared between samples of one layout
    legs_z: bytes  # zstd level 1 of the float64 (len(LEG_FIELDS), 2 * len(strikes)) columns (~half their size)
    body_z: bytes  # zstd level 1 of the body
    body_len: int  # -1: a sample read from Parquet, whose body stays in the file
    etag: str = ""  # the ETag /options/live sent with the body

    @classmethod
    def of(cls, t_us: int, head: tuple, strikes: tuple[float, ...], legs: np.ndarray, body_z: bytes,
           body_len: int, etag: str = "") -> Sample:  # fmt: skip
        legs_z = compress(np.ascontiguousarray(legs, dtype="<f8").tobytes())
        return cls(t_us, head, strikes, legs_z, body_z, body_len, etag)

    @property
    def legs(self) -> np.ndarray:
        """The columns: per strike its CE then PE value of each ``LEG_FIELDS``; NaN = null."""
        n = 2 * len(self.strikes)
        raw = decompress(self.legs_z, 8 * len(LEG_FIELDS) * n)
        return np.frombuffer(raw, dtype="<f8").reshape(len(LEG_FIELDS), n)

    def body(self) -> bytes:
        return decompress(self.body_z, self.body_len)

    @property
    def nbytes(self) -> int:
        """Bytes this sample holds (compressed columns and body; not the shared strikes tuple)."""
        return len(self.legs_z) + len(self.body_z) + 8 * len(self.head) + 200


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def sample_of(body: bytes, t_us: int, *, etag: str = "",
              strikes_cache: dict[tuple[float, ...], tuple[float, ...]] | None = None) -> Sample:  # fmt: skip
    """The sample of one ``/options/live`` body (sent with ``etag``) taken at ``t_us``."""
    doc = orjson.loads(body)
    rows = doc.get("strikes") or ()
    strikes = tuple(float(r["strike"]) for r in rows)
    if strikes_cache is not None:  # one tuple per layout for the whole day
        strikes = strikes_cache.setdefault(strikes, strikes)
    n = len(strikes)
    cols = np.full((len(LEG_FIELDS), 2 * n), math.nan)
    atm = doc.get("atm_strike")
    atm_ivs: list[float] = []
    for i, row in enumerate(rows):
        for s, side in enumerate(("ce", "pe")):
            leg = row.get(side)
            if leg is None:
                continue
            j = 2 * i + s
            for f, name in enumerate(LEG_FIELDS):
                v = leg.get(name)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    cols[f, j] = v
            if atm is not None and strikes[i] == atm and isinstance(iv := leg.get("iv"), (int, float)):
                atm_ivs.append(float(iv))
    totals = doc.get("totals") or {}
    ce = totals.get("ce") or {}
    pe = totals.get("pe") or {}
    head = (
        _num(doc.get("underlying_ltp")), _num(doc.get("forward")), _num(atm),
        round(sum(atm_ivs) / len(atm_ivs), 4) if atm_ivs else None,
        _num(doc.get("atm_straddle")), _num(doc.get("pcr_oi")), _num(doc.get("pcr_volume")), _num(doc.get("max_pain")),
        ce.get("oi"), ce.get("oi_change"), ce.get("volume"), pe.get("oi"), pe.get("oi_change"), pe.get("volume"),
    )  # fmt: skip
    return Sample.of(t_us, head, strikes, cols, compress(body), len(body), etag)


# --------------------------------------------------------------------------- a chain's day


@dataclass(slots=True)
class ChainDay:
    """One chain's samples of one day, ascending by time (appended by one writer)."""

    underlying: str
    expiry: dt.date
    day: dt.date
    samples: list[Sample] = field(default_factory=list)
    _strikes: dict[tuple[float, ...], tuple[float, ...]] = field(default_factory=dict)

    def add(self, sample: Sample) -> bool:
        """Append (or ignore a sample at or before the last one's time: a resumed day's overlap)."""
        if self.samples and sample.t_us <= self.samples[-1].t_us:
            return False
        self._strikes.setdefault(sample.strikes, sample.strikes)
        self.samples.append(sample)
        return True

    def layout(self, strikes: tuple[float, ...]) -> tuple[float, ...]:
        return self._strikes.setdefault(strikes, strikes)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.samples) + sum(8 * len(k) + 56 for k in self._strikes)

    def window(self, from_us: int | None, to_us: int | None, step_us: int | None) -> list[Sample]:
        """Samples with ``from ≤ t ≤ to``; with ``step_us``, the last of each bucket of that length."""
        chosen = [s for s in self.samples if (from_us is None or s.t_us >= from_us) and (to_us is None or s.t_us <= to_us)]
        if not step_us:
            return chosen
        out: dict[int, Sample] = {}
        for s in chosen:
            out[s.t_us // step_us] = s  # the last sample of each bucket wins: levels, not flows
        return list(out.values())

    def at(self, t_us: int) -> Sample | None:
        """The last sample at or before ``t_us``."""
        found = None
        for s in self.samples:
            if s.t_us > t_us:
                break
            found = s
        return found


def _out(value: float | int | None, integer: bool) -> float | int | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return int(value) if integer else value


def point(sample: Sample) -> dict[str, object]:
    """One ``/options/history`` point."""
    h = dict(zip(HEAD_FIELDS, sample.head))
    return {
        "t": ist_of_us(sample.t_us),
        **{name: h[name] for name in HEAD_FIELDS[:8]},
        "ce": {"oi": _out(h["ce_oi"], True), "oi_change": _out(h["ce_oi_change"], True),
               "volume": _out(h["ce_volume"], True)},
        "pe": {"oi": _out(h["pe_oi"], True), "oi_change": _out(h["pe_oi_change"], True),
               "volume": _out(h["pe_volume"], True)},
    }  # fmt: skip


def leg_label(strike: float, side: str) -> str:
    """``24000.0:CE``: the strike as JSON writes it, as in the stream's and Redis's leg fields."""
    return f"{strike!r}:{side}"


def leg_series(samples: Sequence[Sample], strikes: Sequence[float], fields: Iterable[str]
               ) -> dict[str, dict[str, list]]:  # fmt: skip
    """Per side of each strike, each field's values aligned with ``samples`` (null where none)."""
    fields = tuple(fields)
    idx = [LEG_FIELDS.index(f) for f in fields]
    out: dict[str, dict[str, list]] = {
        leg_label(strike, side): {f: [] for f in fields} for strike in strikes for side in SIDES
    }
    for sample in samples:
        cols = sample.legs  # decompressed once per sample
        where = {s: i for i, s in enumerate(sample.strikes)}
        for strike in strikes:
            i = where.get(strike, -1)
            for s, side in enumerate(SIDES):
                series = out[leg_label(strike, side)]
                for f, k in zip(fields, idx):
                    series[f].append(None if i < 0 else _out(float(cols[k, 2 * i + s]), f in _INT_LEG_FIELDS))
    return out


# --------------------------------------------------------------------------- wire form (Redis)

_LEN = struct.Struct("<II")  # header length, columns length


def encode(sample: Sample, layout_id: str) -> bytes:
    """``<II`` header and columns lengths, the JSON header, the columns (zstd of float64 LE), the body (zstd)."""
    header = orjson.dumps({"t": sample.t_us, "head": sample.head, "layout": layout_id, "body_len": sample.body_len,
                           "etag": sample.etag})  # fmt: skip
    cols = sample.legs_z
    return _LEN.pack(len(header), len(cols)) + header + cols + sample.body_z


def decode(raw: bytes, layouts: dict[str, tuple[float, ...]]) -> Sample:
    """Inverse of ``encode`` with the layout table; ``BadSample`` when it does not decode."""
    try:
        hlen, clen = _LEN.unpack_from(raw)
        header = orjson.loads(raw[8 : 8 + hlen])
        strikes = layouts[header["layout"]]
        sample = Sample(int(header["t"]), tuple(header["head"]), strikes, raw[8 + hlen : 8 + hlen + clen],
                        raw[8 + hlen + clen :], int(header["body_len"]), str(header.get("etag", "")))  # fmt: skip
        if len(header["head"]) != len(HEAD_FIELDS):
            raise ValueError("the series do not match")
        sample.legs  # noqa: B018 - the columns must decompress to the layout's size
        return sample
    except (struct.error, KeyError, ValueError, TypeError, OSError, orjson.JSONDecodeError) as exc:
        raise BadSample(f"a stored history sample does not decode: {exc}") from exc


def layout_id(strikes: tuple[float, ...]) -> str:
    import hashlib

    return hashlib.blake2b(orjson.dumps(strikes), digest_size=6).hexdigest()


def layout_json(strikes: tuple[float, ...]) -> bytes:
    return orjson.dumps(strikes)


def layout_from_json(raw: bytes) -> tuple[float, ...]:
    return tuple(float(s) for s in orjson.loads(raw))
