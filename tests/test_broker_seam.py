"""The broker seam: ``service`` reaches a broker's package only where the feed source is chosen.

Everything else (the composition root, the cache, ingest, roll, HTTP, Redis, metrics, health,
analytics) sees ``feeds.source.FeedSource`` and broker-neutral ticks, so a second broker runs
through the same code. The few other modules named below are Dhan-only features or settings
declared once on the client's own model; each says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
BROKER_PACKAGES = ("feeds.dhan", "feeds.kite")
CHOOSES_THE_SOURCE = "feed_source.py"
# Modules that may import a broker package besides feed_source.py, and why.
DHAN_ONLY = {
    "settings.py": "FeedSettings extends the client config model (DhanFeedConfig): settings declared once",
    "token_source.py": "wraps Dhan's Credentials for its REST client (token_reader itself is broker-neutral)",
    "scrip_cache.py": "the day's cached copy of Dhan's scrip master, used from feed_source.load_master",
    "doctor.py": "livechain doctor checks a Dhan account's budget and credentials",
    "analytics/rest_seed.py": "seeding from Dhan's REST option chain, a Dhan-only source",
}


def _broker_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [n for n in names if n.startswith(BROKER_PACKAGES)]
    return found


def test_only_the_feed_source_chooses_a_broker() -> None:
    """No service module but feed_source.py (and the listed Dhan-only features) imports feeds.dhan or feeds.kite."""
    offenders = {}
    for path in sorted(SERVICE.rglob("*.py")):
        rel = path.relative_to(SERVICE).as_posix()
        if rel == CHOOSES_THE_SOURCE or rel in DHAN_ONLY:
            continue
        imports = _broker_imports(path)
        if imports:
            offenders[rel] = imports
    assert offenders == {}
    assert any(m.startswith("feeds.kite") for m in _broker_imports(SERVICE / CHOOSES_THE_SOURCE))
    for rel in DHAN_ONLY:
        assert not any(m.startswith("feeds.kite") for m in _broker_imports(SERVICE / rel)), rel
