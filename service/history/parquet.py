"""Each day kept for research: Parquet files under ``history.path``, written with pyarrow.

Two hive-partitioned datasets (pandas, Polars and DuckDB read them directly)::

    {path}/chains/date=2026-11-23/underlying=NIFTY/part-0.parquet
        expiry (date), t (timestamp µs, Asia/Kolkata), the chain-level series
        (underlying_ltp … pe_volume), body (the exact /options/live body, JSON text)
    {path}/legs/date=2026-11-23/underlying=NIFTY/part-0.parquet
        expiry, t, strike, side ("CE"/"PE"), ltp, oi, volume, iv — one row per leg per sample

e.g. ``duckdb.sql("select * from read_parquet('PATH/chains/*/*/*.parquet', hive_partitioning=true)")``
or ``pandas.read_parquet("PATH/legs")``. Columns are zstd-compressed (a body column compresses
across samples far better than each body alone).

pyarrow rather than DuckDB: it is Parquet's reference implementation, its wheel carries the
S3 filesystem (``s3://bucket/prefix`` works through ``pyarrow.fs`` with the usual AWS
credentials, nothing downloaded at run time, where DuckDB loads its httpfs extension from the
network), and its zstd codec also compresses the in-memory bodies.

A write is atomic: both files are written under temporary names and renamed into place (on
S3, where objects appear whole, the rename is a copy). A (date, underlying) file already there
is merged with, never lost: its samples that memory does not hold (a restart without Redis)
are kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from service.history import ParquetWriteError
from service.history.model import HEAD_FIELDS, LEG_FIELDS, SIDES, ChainDay, Sample, us_of

log = logging.getLogger(__name__)

_INT_HEAD = {"ce_oi", "ce_oi_change", "ce_volume", "pe_oi", "pe_oi_change", "pe_volume"}


def default_path() -> str:
    """``$XDG_DATA_HOME/livechain/history``, else ``~/.local/share/livechain/history``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "livechain", "history")


def _schemas():  # noqa: ANN202
    import pyarrow as pa

    t = pa.timestamp("us", tz="Asia/Kolkata")
    chains = pa.schema(
        [pa.field("expiry", pa.date32()), pa.field("t", t)]
        + [pa.field(n, pa.int64() if n in _INT_HEAD else pa.float64()) for n in HEAD_FIELDS]
        + [pa.field("body", pa.large_string()), pa.field("etag", pa.string())]
    )
    legs = pa.schema(
        [pa.field("expiry", pa.date32()), pa.field("t", t), pa.field("strike", pa.float64()),
         pa.field("side", pa.string()), pa.field("ltp", pa.float64()), pa.field("oi", pa.int64()),
         pa.field("volume", pa.int64()), pa.field("iv", pa.float64())]
    )  # fmt: skip
    return chains, legs


class ParquetArchive:
    """Writes and reads the days under ``root`` (a local path or ``s3://…``)."""

    def __init__(self, root: str | None) -> None:
        self.root = root or default_path()
        self._fs = None  # opened at the first write or read: an s3:// root asks the network nothing at start
        self._base = ""
        self._read_day = lru_cache(maxsize=4)(self._read_uncached)

    @property
    def fs(self):  # noqa: ANN201
        if self._fs is None:
            from pyarrow import fs

            if "://" in self.root:
                self._fs, self._base = fs.FileSystem.from_uri(self.root)
            else:
                self._fs, self._base = fs.LocalFileSystem(), str(Path(self.root).expanduser().absolute())
        return self._fs

    def _file(self, table: str, underlying: str, day: dt.date) -> str:
        self.fs  # noqa: B018 - resolves _base
        return f"{self._base}/{table}/date={day.isoformat()}/underlying={underlying}/part-0.parquet"

    # ------------------------------------------------------------------ write

    def write_day(self, underlying: str, day: dt.date, chains: Mapping[dt.date, Sequence[Sample]]) -> str:
        """Write (merging with what is there) one underlying's day; returns the chains file's path.
        Runs in a thread. Raises ``ParquetWriteError``; nothing is renamed into place on failure."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        chains_schema, legs_schema = _schemas()
        try:
            new_chains, new_legs = _tables(chains, chains_schema, legs_schema)
            final = {"chains": self._file("chains", underlying, day), "legs": self._file("legs", underlying, day)}
            tables = {"chains": new_chains, "legs": new_legs}
            for name, path in final.items():
                old = self._existing(path)
                if old is not None:
                    tables[name] = _merge(old.cast(tables[name].schema), tables[name])
            token = secrets.token_hex(4)
            temps = {}
            for name, path in final.items():
                self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                tmp = f"{path}.tmp-{token}"
                pq.write_table(tables[name], tmp, filesystem=self.fs, compression="zstd")
                temps[name] = tmp
            for name, path in final.items():
                self.fs.move(temps[name], path)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise ParquetWriteError(f"{underlying} {day}: {exc}") from exc
        self._read_day.cache_clear()
        return final["chains"]

    def _existing(self, path: str):  # noqa: ANN202
        import pyarrow.parquet as pq
        from pyarrow import fs

        if self.fs.get_file_info(path).type == fs.FileType.NotFound:
            return None
        return pq.read_table(path, filesystem=self.fs)

    # ------------------------------------------------------------------ read

    def _read_uncached(self, underlying: str, day: dt.date):  # noqa: ANN202
        import pyarrow.parquet as pq
        from pyarrow import fs

        path = self._file("chains", underlying, day)
        if self.fs.get_file_info(path).type == fs.FileType.NotFound:
            return None
        names = pq.read_schema(path, filesystem=self.fs).names
        columns = ["expiry", "t", *HEAD_FIELDS, *(["etag"] if "etag" in names else [])]  # not the bodies
        chains = pq.read_table(path, filesystem=self.fs, columns=columns)
        legs = pq.read_table(self._file("legs", underlying, day), filesystem=self.fs)
        return chains, legs

    async def chain_day(self, underlying: str, expiry: dt.date, day: dt.date) -> ChainDay | None:
        """A past day's samples of one chain, read back (without bodies: ``body`` reads one)."""
        import asyncio

        try:
            got = await asyncio.to_thread(self._read_day, underlying, day)
        except (OSError, ValueError) as exc:
            log.warning("history: reading %s %s from Parquet failed: %s", underlying, day, exc)
            return None
        if got is None:
            return None
        return _chain_day(got[0], got[1], underlying, expiry, day)

    async def body(self, underlying: str, expiry: dt.date, day: dt.date, t_us: int) -> bytes | None:
        import asyncio

        try:
            return await asyncio.to_thread(self._body, underlying, expiry, day, t_us)
        except (OSError, ValueError) as exc:
            log.warning("history: reading a body of %s %s from Parquet failed: %s", underlying, day, exc)
            return None

    def _body(self, underlying: str, expiry: dt.date, day: dt.date, t_us: int) -> bytes | None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = self._file("chains", underlying, day)
        table = pq.read_table(path, filesystem=self.fs, columns=["expiry", "t", "body"])
        mask = pc.and_(pc.equal(table["expiry"], expiry), pc.equal(pc.cast(table["t"], "int64"), t_us))
        rows = table.filter(mask)
        return None if rows.num_rows == 0 else rows["body"][0].as_py().encode()


def _tables(chains: Mapping[dt.date, Sequence[Sample]], chains_schema, legs_schema):  # noqa: ANN001,ANN202
    import pyarrow as pa

    c: dict[str, list] = {f.name: [] for f in chains_schema}
    legs: dict[str, list] = {f.name: [] for f in legs_schema}
    for expiry, samples in sorted(chains.items()):
        for s in samples:
            c["expiry"].append(expiry)
            c["t"].append(s.t_us)
            for name, v in zip(HEAD_FIELDS, s.head):
                c[name].append(None if v is None else (int(v) if name in _INT_HEAD else float(v)))
            c["body"].append(s.body().decode())
            c["etag"].append(s.etag or None)
            n = len(s.strikes)
            legs["expiry"].extend([expiry] * 2 * n)
            legs["t"].extend([s.t_us] * 2 * n)
            legs["strike"].extend(np.repeat(np.asarray(s.strikes, dtype=np.float64), 2).tolist())
            legs["side"].extend(list(SIDES) * n)
            columns = s.legs
            for k, name in enumerate(LEG_FIELDS):
                col = columns[k]
                if name in ("oi", "volume"):
                    legs[name].extend(None if np.isnan(v) else int(v) for v in col)
                else:
                    legs[name].extend(None if np.isnan(v) else float(v) for v in col)
    c_arrays = [pa.array(c[f.name], type=pa.int64() if f.name == "t" else f.type) for f in chains_schema]
    c_arrays[1] = c_arrays[1].cast(chains_schema.field("t").type)
    l_arrays = [pa.array(legs[f.name], type=pa.int64() if f.name == "t" else f.type) for f in legs_schema]
    l_arrays[1] = l_arrays[1].cast(legs_schema.field("t").type)
    return pa.Table.from_arrays(c_arrays, schema=chains_schema), pa.Table.from_arrays(l_arrays, schema=legs_schema)


def _merge(old, new):  # noqa: ANN001,ANN202
    """``old``'s rows whose (expiry, t) ``new`` lacks, plus ``new``, sorted by expiry and t."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = set(zip(new["expiry"].to_pylist(), pc.cast(new["t"], "int64").to_pylist()))
    keep = [
        (e, t) not in keys for e, t in zip(old["expiry"].to_pylist(), pc.cast(old["t"], "int64").to_pylist())
    ]
    merged = pa.concat_tables([old.filter(pa.array(keep, type=pa.bool_())), new])
    sort = [("expiry", "ascending"), ("t", "ascending")]
    if "strike" in merged.column_names:
        sort += [("strike", "ascending"), ("side", "ascending")]
    return merged.sort_by(sort)


def _chain_day(chains, legs, underlying: str, expiry: dt.date, day: dt.date) -> ChainDay | None:  # noqa: ANN001
    import pyarrow.compute as pc

    chains = chains.filter(pc.equal(chains["expiry"], expiry))
    if chains.num_rows == 0:
        return None
    legs = legs.filter(pc.equal(legs["expiry"], expiry))
    cd = ChainDay(underlying, expiry, day)
    lt = pc.cast(legs["t"], "int64").to_numpy()
    strikes_all = legs["strike"].to_numpy()
    cols = [legs[name].to_numpy(zero_copy_only=False) for name in LEG_FIELDS]
    cols = [np.asarray([np.nan if v is None else v for v in c], dtype=np.float64) if c.dtype == object else
            c.astype(np.float64) for c in cols]  # fmt: skip
    ts = pc.cast(chains["t"], "int64").to_pylist()
    heads = [chains[name].to_pylist() for name in HEAD_FIELDS]
    etags = chains["etag"].to_pylist() if "etag" in chains.column_names else [None] * len(ts)
    order = np.argsort(lt, kind="stable")
    lt_sorted = lt[order]
    for i, t in enumerate(ts):
        lo, hi = np.searchsorted(lt_sorted, t, "left"), np.searchsorted(lt_sorted, t, "right")
        idx = order[lo:hi]
        strikes = cd.layout(tuple(strikes_all[idx][::2].tolist()))
        arr = np.vstack([c[idx] for c in cols]) if len(idx) else np.empty((len(LEG_FIELDS), 0))
        head = tuple(h[i] for h in heads)
        cd.add(Sample.of(t, head, strikes, arr, b"", -1, etags[i] or ""))  # body_len -1: the body stays in the file
    return cd


__all__ = ["ParquetArchive", "default_path", "us_of"]
