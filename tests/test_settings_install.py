"""Settings → SEGA, and install.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from host_harness import Host, sega_values

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("gradio")


@pytest.fixture
def host():
    h = Host()
    yield h
    h.w.shared.opts.reset()


def test_settings_section_and_defaults(host):
    shared = host.w.shared
    host.w.registration.on_ui_settings()
    labels = shared.opts.data_labels
    assert labels["sega_max_concepts"].section == ("sega", "SEGA")
    assert labels["sega_default_threshold"].label == "Default threshold (λ)"
    assert host.w.registration.ui_defaults()["threshold"] == 0.95
    shared.opts.sega_default_threshold = 0.9
    shared.opts.sega_default_warmup = "3"
    shared.opts.sega_default_scale = "not a number"  # a broken saved value falls back
    defaults = host.w.registration.ui_defaults()
    assert defaults["threshold"] == 0.9 and str(defaults["warmup"]) == "3" and "scale" not in defaults


def test_concept_limit_setting(host):
    host.w.registration.on_ui_settings()
    host.w.shared.opts.sega_max_concepts = 2
    result = host.generate(sega_values("a\nb\nc"))
    assert list(result.comments) == [
        "SEGA off (concepts): line 3 (c): too many concepts: 3 given, the limit is 2 (Settings → SEGA)"
    ]


@pytest.mark.parametrize("tag, warns", [("v1.9.4", True), ("v1.10.1", False), ("", False)])
def test_install_checks_the_webui_version_and_installs_nothing(tmp_path, tag, warns):
    (tmp_path / "launch.py").write_text(
        f"def git_tag():\n    return {tag!r}\n"
        "def run_pip(*a, **k):\n    raise AssertionError('install.py must not install anything')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "install.py")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if warns:
        assert out.stdout.strip() == (
            "[SEGA] WebUI 1.9.4 is older than 1.10.0; SEGA needs WebUI 1.10 or newer and stays off on this one."
        )
    else:
        assert out.stdout == ""
