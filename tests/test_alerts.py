"""config/alerts.yml: promtool's unit tests pass, the shipped Prometheus files check, and every
metric an alert (or the Prometheus config) uses is one a running livechain exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.app import running_service
from tests.helpers import until
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401
from tests.test_metrics import scrape
from tests.test_service import settings_for

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "config" / "alerts.yml"
PROMETHEUS = ROOT / "config" / "prometheus.yml"
ALERT_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (`make test` installs Debian's prometheus package)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@needs_promtool
def test_alert_rules_unit_tests_pass() -> None:
    """`promtool test rules`: each alert fires on its synthetic series, and only then."""
    run = _promtool("test", "rules", str(ALERT_TESTS))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


@needs_promtool
def test_shipped_rules_and_config_check() -> None:
    """`promtool check rules` on the alerts and `promtool check config` on the stack's Prometheus config."""
    rules = _promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _promtool("check", "config", str(PROMETHEUS))
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_unit_test_and_a_severity() -> None:
    """No alert ships untested; each is routed by severity (page or ticket)."""
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    tested = {t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for t in case["alert_rule_test"]}
    names = {r["alert"] for r in rules}
    assert names == tested, names ^ tested
    assert {r["labels"]["severity"] for r in rules} == {"page", "ticket"}
    firing = {
        t["alertname"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for t in case["alert_rule_test"] if t["exp_alerts"]
    }
    assert firing == names  # each is also shown firing, not only silent


async def test_alerts_use_only_metrics_livechain_exports(redis_server: RedisServer) -> None:  # noqa: F811
    """Every livechain_* name in the alerts is in a real scrape of a primary with its Redis mirror."""
    settings = settings_for(None, redis={"enabled": True, "url": redis_server.url})
    async with running_service(settings) as svc:
        assert svc.metrics_port is not None and svc.mirror is not None
        mirror = svc.mirror
        # The lag gauge exists once a flush has carried changes: wait for one, as in production.
        await until(lambda: mirror.stats.lag_s_last is not None)
        s = await scrape(svc.metrics_port)
    exposed = {n for (n, _) in s.samples} | set(s.families) | {
        f"{n}_total" for n, f in s.families.items() if f.type == "counter"
    }
    used = set(re.findall(r"livechain_[a-z0-9_]+", ALERTS.read_text()))
    assert {"livechain_market_open", "livechain_mirror_state_lost_total", "livechain_task_crashes_total"} <= used
    assert used and used <= exposed, sorted(used - exposed)
    assert s.value("livechain_market_open") == 1  # the simulator's market never closes
