"""Settings, command line and launcher."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import launch
from modules.app.options import build_parser, parse_args, parse_auth
from modules.core.errors import ValidationError
from modules.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_settings_roundtrip_and_override_copy(tmp_path):
    path = tmp_path / "config.json"
    s = Settings().override({"samples_format": "jpg", "CLIP_stop_at_last_layers": 2})
    s.save(path)
    loaded = Settings.load(path)
    assert loaded == s
    copy = loaded.override({"samples_save": False})
    assert copy.samples_save is False and loaded.samples_save is True


@pytest.mark.parametrize(
    "values, field",
    [({"samples_format": "gif"}, "samples_format"), ({"sd_checkpoints_limit": 0}, "sd_checkpoints_limit"),
     ({"samples_save": "yes"}, "samples_save"), ({"nope": 1}, "override_settings.nope")],
)  # fmt: skip
def test_invalid_overrides_name_the_field(values, field):
    with pytest.raises(ValidationError) as e:
        Settings().override(values)
    assert e.value.field == field


def test_settings_file_with_bad_entries_keeps_the_good_ones(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_format": "jpg", "sd_checkpoints_limit": -5, "unknown": 1}))
    s = Settings.load(path)
    assert s.samples_format == "jpg" and s.sd_checkpoints_limit == 1
    path.write_text("{truncated")
    assert Settings.load(path) == Settings()


def test_flags_and_help():
    args = parse_args(["--nowebui", "--port", "7999", "--ckpt-dir", "/x", "--disable-safe-unpickle"])
    assert args.api and args.port == 7999 and args.disable_safe_unpickle and str(args.ckpt_dir) == "/x"
    text = build_parser().format_help()
    for flag in ("--listen", "--port", "--ckpt-dir", "--ckpt", "--api", "--nowebui", "--device", "--precision",
                 "--no-half", "--disable-safe-unpickle", "--skip-install", "--api-auth", "--gradio-auth"):  # fmt: skip
        assert flag in text
    assert parse_auth("a:b,c:d:e") == {"a": "b", "c": "d:e"}


def test_launch_help_needs_no_environment():
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--ckpt-dir" in out.stdout


def test_launcher_checks_pins(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("# comment\npytest==0.0.1\nnumpy\n\n")
    assert launch._requirements(req) == ["pytest==0.0.1", "numpy"]
    assert not launch._satisfied("pytest==0.0.1") and launch._satisfied("numpy")
    assert not launch._satisfied("surely-not-installed-package")
    assert launch._without_launcher_options(["-x", "--venv", "v", "--skip-install", "--venv=w", "-k", "a"]) == [
        "-x",
        "-k",
        "a",
    ]
    assert launch.in_virtualenv() == (sys.prefix != sys.base_prefix)


def _dist_name(spec: str) -> str:
    name = re.split(r"[\s<>=!~;\[(]", spec.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_launcher_installs_nodeps_requirements_after_the_others_without_dependencies(monkeypatch):
    """`python launch.py test` on a fresh venv: requirements(-dev).txt as usual, then spandrel with --no-deps."""
    calls: list[list[str]] = []
    monkeypatch.setattr(launch, "ensure_venv", lambda argv: None)
    monkeypatch.setattr(launch, "_satisfied", lambda spec: False)  # nothing installed yet
    monkeypatch.setattr(launch.subprocess, "check_call", lambda cmd: calls.append(cmd))
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd, cwd=None: 0)
    assert launch.main(["test", "-q"]) == 0
    regular, no_deps = calls
    pinned = launch._requirements(ROOT / "requirements.txt") + launch._requirements(ROOT / "requirements-dev.txt")
    nodeps = launch._requirements(launch.NODEPS_REQUIREMENTS)
    assert any(spec.startswith("spandrel==") for spec in nodeps)
    assert "--no-deps" not in regular and regular[-len(pinned) :] == pinned
    assert no_deps[:5] == [sys.executable, "-m", "pip", "install", "--no-deps"] and no_deps[-len(nodeps) :] == nodeps
    assert "torchvision" not in {_dist_name(spec) for spec in pinned + nodeps}


def test_nodeps_packages_have_their_real_dependencies_pinned():
    """What a --no-deps package declares (torchvision excepted, see requirements-nodeps.txt) is in requirements.txt."""
    from importlib import metadata

    pinned = {_dist_name(spec) for spec in launch._requirements(ROOT / "requirements.txt")}
    for spec in launch._requirements(launch.NODEPS_REQUIREMENTS):
        assert launch._satisfied(spec), f"{spec} is not installed; run python launch.py test"
        declared = {_dist_name(r) for r in metadata.requires(_dist_name(spec)) or [] if "extra ==" not in r}
        assert declared - {"torchvision"} <= pinned, f"{spec} needs {declared - pinned - {'torchvision'}}"
