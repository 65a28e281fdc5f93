"""docs/configuration.md is generated from the settings model and kept equal to it."""

from __future__ import annotations

import re
import subprocess
import sys

from service.settings import ENV_PREFIX, Settings
from service.settings_doc import DOC_PATH, REGENERATE, render, undocumented


def test_configuration_reference_is_up_to_date() -> None:
    """The committed reference equals what the model generates (else: run the regenerate command)."""
    assert DOC_PATH.read_text(encoding="utf-8") == render(), f"docs/configuration.md is stale: run {REGENERATE}"


def test_every_key_has_a_meaning() -> None:
    """Each key has a description or a comment next to it in the model."""
    assert undocumented() == []


def test_every_key_is_in_the_reference_with_its_variable_and_default() -> None:
    """One row per key: its environment variable and the default the model declares."""
    text = render()
    for section, field in Settings.model_fields.items():
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            assert re.search(rf"^\| `{key}` \|.*\| `{env}` \|", text, re.M), env
    assert "| `port` | integer, ≥ 0, ≤ 65535 | `8080` | `LIVECHAIN_HTTP__PORT` |" in text
    assert '| `underlyings` | list of string | `["NIFTY"]` | `LIVECHAIN_INSTRUMENTS__UNDERLYINGS` |' in text


def test_check_mode_fails_on_drift(tmp_path) -> None:  # noqa: ANN001
    """`python -m service.settings_doc --check` exits 1 on a stale file and 0 on a fresh one."""
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    run = [sys.executable, "-m", "service.settings_doc", "--out", str(stale)]
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 1
    assert subprocess.run(run, capture_output=True).returncode == 0
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 0
