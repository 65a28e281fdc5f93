"""Scheduled fault injection for a simulator run: ``livechain simulate --fault drop@30``.

Each fault is ``KIND@AT[+DURATION][=ARG]``, with AT and DURATION in seconds since start:

    drop@30            reset every client socket (no close frame, no code 50)
    silence@60+20      send nothing for 20 s while keeping sockets open
    garbage@90         send malformed and truncated packets
    disconnect@120=805 send a code-50 packet with that reason, then close
    reject@150=429x3   answer the next 3 handshakes with HTTP 429

The 5-connection rule (a 6th socket makes the oldest get 805) is always on unless the
simulator's ``max_connections`` is None.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feeds.dhan.packets import DisconnectReason

if TYPE_CHECKING:
    from feeds.simulator.server import SimulatorServer

log = logging.getLogger(__name__)

KINDS = ("drop", "silence", "garbage", "disconnect", "reject")
_SPEC = re.compile(r"^(?P<kind>[a-z]+)@(?P<at>\d+(?:\.\d+)?)(?:\+(?P<dur>\d+(?:\.\d+)?))?(?:=(?P<arg>[0-9x]+))?$")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    at_s: float
    duration_s: float = 0.0
    code: int = 0  # disconnect reason or HTTP status
    count: int = 1  # handshakes to reject


def parse_fault(spec: str) -> Fault:
    """Parse one ``KIND@AT[+DURATION][=ARG]`` spec; ValueError says what is wrong."""
    m = _SPEC.match(spec.strip())
    if m is None or m["kind"] not in KINDS:
        raise ValueError(f"bad fault {spec!r}: expected KIND@SECONDS[+DURATION][=ARG], KIND one of {', '.join(KINDS)}")
    kind, at, dur, arg = m["kind"], float(m["at"]), float(m["dur"] or 0), m["arg"]
    if kind == "silence" and dur <= 0:
        raise ValueError(f"bad fault {spec!r}: silence needs +DURATION")
    if kind == "disconnect":
        reasons = ", ".join(str(int(r)) for r in DisconnectReason)
        if not arg or not arg.isdigit():
            raise ValueError(f"bad fault {spec!r}: disconnect needs =REASON, one of {reasons}")
        if int(arg) not in DisconnectReason._value2member_map_:
            raise ValueError(f"bad fault {spec!r}: {arg} is not a Dhan disconnect reason; use one of {reasons}")
        return Fault(kind, at, code=int(arg))
    if kind == "reject":
        status, _, count = (arg or "429").partition("x")
        if not status.isdigit() or not 400 <= int(status) <= 599 or (count and not count.isdigit()) or count == "0":
            raise ValueError(f"bad fault {spec!r}: reject takes =STATUS[xCOUNT], an HTTP error status 400-599 "
                             "and a count of at least 1, e.g. =429x3")  # fmt: skip
        return Fault(kind, at, code=int(status), count=int(count or 1))
    return Fault(kind, at, dur)


async def run_faults(sim: SimulatorServer, faults: tuple[Fault, ...]) -> None:
    """Apply ``faults`` at their times (seconds since this coroutine started)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for fault in sorted(faults, key=lambda f: f.at_s):
        await asyncio.sleep(max(0.0, start + fault.at_s - loop.time()))
        log.warning("injecting fault: %s", fault)
        try:
            _apply(sim, fault, loop)
        except Exception:  # one bad fault must not end the rest of the schedule
            log.exception("fault %s could not be applied; the schedule continues", fault)


def _apply(sim: SimulatorServer, fault: Fault, loop: asyncio.AbstractEventLoop) -> None:
    """Apply one fault now."""
    if fault.kind == "drop":
        sim.drop_connections()
    elif fault.kind == "garbage":
        sim.send_garbage()
    elif fault.kind == "disconnect":
        sim.disconnect_all(fault.code)
    elif fault.kind == "reject":
        sim.reject_handshakes(fault.code, fault.count)
    elif fault.kind == "silence":
        sim.silence(True)
        loop.call_later(fault.duration_s, sim.silence, False)
