"""Pieces every broker's feed client shares: the reconnect backoff and per-connection stats.

``ConnectionStats`` are plain counters a receive loop increments per frame; the service's
metrics and health read them at scrape time (``service.metrics``, ``service.core.health``), the
same for every broker. A client says how its packet classes are named in metrics with a
``packet_names`` mapping (``FeedSource.packet_names``).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, initial·2^attempt)]."""
    return rng.uniform(0.0, min(max_s, initial_s * (2 ** min(attempt, 30))))


@dataclass(slots=True)
class ConnectionStats:
    """Plain counters, incremented per frame; metrics read them at scrape time."""

    connects: int = 0
    reconnects: int = 0
    frames: int = 0
    bytes: int = 0
    packets: int = 0
    decode_errors: int = 0
    text_frames: int = 0
    heartbeats: int = 0  # Kite's 1-byte frames: proof of life, not data
    server_errors: int = 0  # Kite's text frames of type "error"
    last_frame_at: float | None = None
    connected: bool = False
    last_error: str | None = None
    disconnects_by_reason: dict[str, int] = field(default_factory=dict)  # why sessions ended
    server_disconnect_codes: dict[int, int] = field(default_factory=dict)  # Dhan's code-50 reasons
    # Keyed by packet class: the receive loop already has it in hand, a name would cost a lookup.
    packets_by_type: Counter[type] = field(default_factory=Counter)

    def count_end(self, reason: str) -> None:
        self.disconnects_by_reason[reason] = self.disconnects_by_reason.get(reason, 0) + 1
