"""Roles that run in processes of their own (see ``bench.worker``): feed servers, clients, the service.

Nothing here may import ``bench.scenarios``: a child imports only its role's module, so its
heap, collections and RSS are its own.

``feed``      what stands in for Dhan: a blaster, a rate-controlled streamer, the simulator
``receivers`` WebSocket clients: ours (``DhanFeed`` → ``Ingest`` → cache) and bare ones
``http``      the service's HTTP app under ticks, a bare aiohttp handler, a load client
``service``   the whole service (``running_service``) and the probes that watch it
"""

from __future__ import annotations

import datetime as dt


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``), in bytes."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """The high-water mark of the resident set size, in bytes."""
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def ist_today() -> dt.date:
    """Today in India: the day the service's instrument loader keeps expiries from."""
    from feeds.model import IST

    return dt.datetime.now(IST).date()


def ws_frame(payload: bytes) -> bytes:
    """One unmasked binary WebSocket frame (server → client), FIN set, no extensions."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 1 << 16:
        return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + n.to_bytes(8, "big") + payload
