"""``livechain`` command line: ``run`` (the service) and ``simulate`` (the Dhan simulator alone)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from service.errors import ServiceError
from service.logs import configure_logging
from service.settings import load_settings

log = logging.getLogger("livechain")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livechain", description="Live option-chain service (DhanHQ v2).")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the service (default: on the embedded simulator)")
    run.add_argument("--config", type=Path, help="TOML settings file (default: $LIVECHAIN_CONFIG or config/livechain.toml)")
    sim = sub.add_parser("simulate", help="run the Dhan v2 simulator standalone")
    sim.add_argument("--config", type=Path, help="TOML settings file; its [simulator] section is used")
    sim.add_argument("--host", help="bind address (default: simulator.host)")
    sim.add_argument("--port", type=int, help="port (default: 8765)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings(getattr(args, "config", None))
    except ServiceError as exc:
        configure_logging()
        log.error("%s", exc)
        return exc.exit_code
    configure_logging(settings.logging.level, settings.logging.json_format)
    try:
        if command == "simulate":
            from service.app import simulate

            asyncio.run(simulate(settings.simulator, host=args.host, port=args.port))
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
