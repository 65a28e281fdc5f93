"""The process lifecycle: starting → warming → ready ⇄ degraded → stopping → stopped.

Only the transitions in ``ALLOWED`` are legal; anything else is a bug and raises.
``reason`` says why the process is where it is (shown by /readyz and in the log).
"""

from __future__ import annotations

import logging
from enum import StrEnum

log = logging.getLogger(__name__)


class Phase(StrEnum):
    STARTING = "starting"  # loading settings and instruments
    WARMING = "warming"  # waiting for data: the feed's readiness gate, or a replica's load from Redis
    READY = "ready"  # serving fresh data
    DEGRADED = "degraded"  # serving, but part of the data is known to be stale
    STOPPING = "stopping"
    STOPPED = "stopped"


ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.WARMING, Phase.STOPPING}),
    Phase.WARMING: frozenset({Phase.READY, Phase.STOPPING}),
    # READY → WARMING: a read replica that lost Redis stops serving until it has reloaded.
    Phase.READY: frozenset({Phase.DEGRADED, Phase.WARMING, Phase.STOPPING}),
    Phase.DEGRADED: frozenset({Phase.READY, Phase.STOPPING}),
    Phase.STOPPING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


class Lifecycle:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.reason = "loading instruments"

    @property
    def serving(self) -> bool:
        """True when /readyz should answer 200: the gate passed and we are not stopping."""
        return self.phase in (Phase.READY, Phase.DEGRADED)

    def to(self, phase: Phase, reason: str) -> None:
        if phase == self.phase:
            self.reason = reason
            return
        if phase not in ALLOWED[self.phase]:
            raise RuntimeError(f"illegal lifecycle transition {self.phase} → {phase}")
        log.log(
            logging.WARNING if phase is Phase.DEGRADED else logging.INFO,
            "lifecycle %s → %s: %s", self.phase, phase, reason,
            extra={"phase": phase.value, "previous_phase": self.phase.value, "reason": reason},
        )
        self.phase = phase
        self.reason = reason

    def stopping(self) -> None:
        """Enter STOPPING from wherever we are (idempotent): teardown has begun."""
        if self.phase not in (Phase.STOPPING, Phase.STOPPED):
            self.to(Phase.STOPPING, "shutting down")

    def stopped(self) -> None:
        self.stopping()
        self.to(Phase.STOPPED, "stopped")
