"""``livechain`` command line: ``run`` (the service) and ``simulate`` (the Dhan simulator alone)."""

from __future__ import annotations

import argparse
import asyncio
import os
import logging
import sys
from pathlib import Path

from feeds.simulator.faults import Fault, parse_fault
from service.errors import ServiceError
from service.logs import configure_logging
from service.settings import load_settings

log = logging.getLogger("livechain")


def _fault(spec: str) -> Fault:
    try:
        return parse_fault(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livechain", description="Live option-chain service (DhanHQ v2).")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the service (default: on the embedded simulator)")
    run.add_argument("--config", type=Path, help="TOML settings file (default: $LIVECHAIN_CONFIG, else the packaged defaults)")
    rec = sub.add_parser("record", help="run the service and record every raw feed frame")
    rec.add_argument("--config", type=Path, help="TOML settings file")
    rec.add_argument("--out", type=Path, required=True, help="recording base path, e.g. recordings/today.lcr")
    rec.add_argument("--max-bytes", type=int, help="rotate segments at this size (default 64 MiB)")
    rec.add_argument("--max-files", type=int, help="keep at most this many segments (default 10)")
    rep = sub.add_parser("replay", help="run the service on a recording, through the Dhan client")
    rep.add_argument("file", type=Path, help="a recording segment or base path")
    rep.add_argument("--config", type=Path, help="TOML settings file")
    rep.add_argument("--speed", type=float, help="1 = recorded pace, 10 = ten times faster, 0 = as fast as possible")
    replica = sub.add_parser("replica", help="serve the HTTP API from Redis (a read replica; no broker connection)")
    replica.add_argument("--config", type=Path, help="TOML settings file; [redis], [http] and [cache] are used")
    doc = sub.add_parser("doctor", help="check settings, credentials, instruments, feed, Redis and ports; exit 1 on a failure")
    doc.add_argument("--config", type=Path, help="TOML settings file (as for run)")
    doc.add_argument("--no-feed", action="store_true",
                     help="skip the feed check (it opens one of the account's 5 sockets for a few seconds)")
    sim = sub.add_parser("simulate", help="run the Dhan v2 simulator standalone")
    sim.add_argument("--config", type=Path, help="TOML settings file; its [simulator] section is used")
    sim.add_argument("--host", help="bind address (default: simulator.host)")
    sim.add_argument("--port", type=int, help="port (default: 8765)")
    sim.add_argument(
        "--broker", choices=("dhan", "kite"), default="dhan",
        help="the protocol spoken: Dhan v2 (default) or Zerodha Kite's ticker (instruments CSV at /instruments)",
    )
    sim.add_argument(
        "--fault", dest="faults", action="append", type=_fault, default=[], metavar="KIND@SECONDS[+DURATION][=ARG]",
        help="inject a fault: drop@30, silence@60+20, garbage@90, disconnect@120=805, reject@150=429x3",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """CLI options as the LIVECHAIN_* variables they stand for (they win over file and env)."""
    out: dict[str, str] = {}
    if args.command == "record":
        out["LIVECHAIN_RECORD__PATH"] = str(args.out)
        if args.max_bytes is not None:
            out["LIVECHAIN_RECORD__MAX_BYTES"] = str(args.max_bytes)
        if args.max_files is not None:
            out["LIVECHAIN_RECORD__MAX_FILES"] = str(args.max_files)
    elif args.command == "replay":
        out["LIVECHAIN_FEED__KIND"] = "replay"
        out["LIVECHAIN_REPLAY__FILE"] = str(args.file)
        if args.speed is not None:
            out["LIVECHAIN_REPLAY__SPEED"] = str(args.speed)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    os.environ.update(_overrides(args))
    try:
        settings = load_settings(getattr(args, "config", None))
    except ServiceError as exc:
        if command == "doctor":
            print(f"livechain doctor\n  FAIL  settings       {exc}\nFAILED: settings", flush=True)
            return exc.exit_code
        configure_logging()
        log.error("%s", exc)
        return exc.exit_code
    if command == "doctor":
        from service.doctor import run_doctor

        configure_logging("WARNING", settings.logging.json_format)  # the checklist is the output
        report, code = run_doctor(settings, config=getattr(args, "config", None), check_feed=not args.no_feed)
        print(report, end="", flush=True)
        return code
    configure_logging(settings.logging.level, settings.logging.json_format)
    try:
        if command == "simulate":
            from service.feed_source import simulate

            asyncio.run(simulate(
                settings.simulator, host=args.host, port=args.port, faults=tuple(args.faults), broker=args.broker
            ))  # fmt: skip
        elif command == "replica":
            from service.app import run_replica

            asyncio.run(run_replica(settings))
        else:
            from service.app import run_service

            asyncio.run(run_service(settings))
    except ServiceError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
