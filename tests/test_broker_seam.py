"""The broker seam: ``service`` reaches a broker's package only where the feed source is chosen.

Everything else (the composition root, the cache, ingest, roll, HTTP, Redis, metrics, health,
analytics, settings, the token source, the scrip-master cache, doctor) sees broker-neutral
interfaces (``feeds.source.FeedSource``, ``ChainSeedSource``, ``feeds.connection.FeedConnectionConfig``,
``feeds.master.InstrumentMaster``) and broker-neutral ticks, so a second broker runs through
the same code.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
BROKER_PACKAGES = ("feeds.dhan", "feeds.kite")
CHOOSES_THE_SOURCE = "feed_source.py"


def _broker_imports(path: Path) -> list[str]:
    """The broker modules ``path`` imports (``from feeds import dhan`` counts as feeds.dhan)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [n for n in names if n.startswith(BROKER_PACKAGES)]
    return found


def test_only_the_feed_source_chooses_a_broker() -> None:
    """No service module but feed_source.py imports feeds.dhan or feeds.kite: no exceptions."""
    offenders = {}
    for path in sorted(SERVICE.rglob("*.py")):
        rel = path.relative_to(SERVICE).as_posix()
        if rel == CHOOSES_THE_SOURCE:
            continue
        imports = _broker_imports(path)
        if imports:
            offenders[rel] = imports
    assert offenders == {}
    chooser = _broker_imports(SERVICE / CHOOSES_THE_SOURCE)
    assert any(m.startswith("feeds.kite") for m in chooser) and any(m.startswith("feeds.dhan") for m in chooser)


def test_the_seam_check_sees_every_import_form(tmp_path: Path) -> None:
    """The check itself can fail: each way of importing a broker package is found."""
    sample = tmp_path / "m.py"
    sample.write_text(
        "import feeds.dhan.client\nfrom feeds.kite.client import KiteFeed\nfrom feeds import dhan\n"
        "from feeds.source import FeedSource\n"
    )
    assert sorted(set(_broker_imports(sample))) == ["feeds.dhan", "feeds.dhan.client", "feeds.kite.client",
                                                     "feeds.kite.client.KiteFeed"]
