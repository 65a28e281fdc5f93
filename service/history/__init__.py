"""The day's story: intraday samples of every chain, kept in memory, Redis and Parquet.

``sampler`` takes a sample of every served chain every ``history.interval_s`` (on the
interval's boundaries, off the hot path: it reads the rendered ``/options/live`` bodies, never
the ingest path), ``model`` holds a chain's day of samples (series columns plus each
sample's body, compressed, so ``at=`` answers exactly the bytes that were served),
``store`` mirrors the samples into Redis (through the Redis mirror's flush, so a rewrite after
a Redis restart covers history too) and reads them back (a restarted primary, a replica),
``parquet`` writes each day for research and reads past days back, ``http`` serves the routes.

Errors::

    HistoryError
     ├── BadSample       a stored sample (Redis, Parquet) that does not decode
     └── ParquetWriteError  a day could not be written (kept in memory, retried)
"""


class HistoryError(Exception):
    """Base of history's errors."""


class BadSample(HistoryError):
    """A stored sample that does not decode."""


class ParquetWriteError(HistoryError):
    """A day could not be written to Parquet; it stays in memory and is retried."""
