"""What ran the benchmark: recorded beside every result, since ratios still vary by machine."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# The libraries whose speed our figures depend on or are compared with.
LIBRARIES = ("livechain", "dhanhq", "websockets", "aiohttp", "orjson", "redis", "numpy", "prometheus-client")
REPO = Path(__file__).resolve().parent.parent


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        # A busy machine at the start explains a slow run: record it rather than guess later.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "git": _git(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("model name", "Hardware", "Processor"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _git() -> dict[str, Any] | None:
    """The commit measured, and whether the tree had uncommitted changes."""
    try:
        commit = _run_git("rev-parse", "--short", "HEAD")
        dirty = bool(_run_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _run_git(*args: str) -> str:
    done = subprocess.run(("git", *args), cwd=REPO, capture_output=True, text=True, timeout=5, check=True)
    return done.stdout.strip()
