#!/usr/bin/env python3
"""Entry point: sets up the environment, then starts the web UI, runs the tests or a batch.

    python launch.py [options]          start the web UI (see --help for every option)
    python launch.py test [pytest args] run the test suite
    python launch.py batch --help       img2img over a folder (see the README)

Run by a Python that is not in a virtual environment, it creates ./venv (or --venv) and re-runs
itself there; run by the python of an existing virtual environment, it uses that one.  Either way
it installs only the requirements that are missing (skip with --skip-install): requirements.txt
(plus requirements-dev.txt for `test`), then requirements-nodeps.txt with `pip install --no-deps`,
for packages whose declared dependencies must not be installed (spandrel declares torchvision, which
would pull another torch build); their real dependencies are pinned in requirements.txt.
Only the standard library is used until the environment is ready.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
COMMANDS = ("test", "batch")
NODEPS_REQUIREMENTS = ROOT / "requirements-nodeps.txt"


def in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _without_launcher_options(argv: list[str]) -> list[str]:
    """Drop --skip-install and --venv DIR, which belong to the launcher, not to pytest or the batch."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--venv":
            skip = True
        elif arg != "--skip-install" and not arg.startswith("--venv="):
            out.append(arg)
    return out


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(argv: list[str]) -> None:
    """Outside a virtual environment: create one and re-run this script with its python."""
    if in_virtualenv() or os.environ.get("SD_DEPTH_NO_VENV") == "1":
        return
    venv_dir = Path(_option(argv, "--venv") or ROOT / "venv").resolve()
    python = venv_python(venv_dir)
    if not python.exists():
        print(f"Creating virtual environment in {venv_dir}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(venv_dir)])
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _satisfied(spec: str) -> bool:
    from importlib import metadata

    name, _, version = spec.partition("==")
    try:
        installed = metadata.version(name.split("[", 1)[0].strip())  # "ray[default]": the extra's name is not the package's
    except metadata.PackageNotFoundError:
        return False
    return not version or installed.split("+", 1)[0] == version.strip()


def ensure_requirements(files: list[Path], *, no_deps: bool = False) -> None:
    """pip-install the pinned requirements that are missing, with requirements.txt as constraints.

    ``no_deps``: install them with ``--no-deps`` (their dependencies are not resolved or installed).
    """
    missing = [spec for f in files for spec in _requirements(f) if not _satisfied(spec)]
    if not missing:
        return
    how = " without their dependencies" if no_deps else ""
    print(f"Installing {len(missing)} missing requirements{how}: {' '.join(missing)}", flush=True)
    constraints = ["-c", str(ROOT / "requirements.txt")]
    flags = ["--no-deps"] if no_deps else []
    subprocess.check_call([sys.executable, "-m", "pip", "install", *flags, *constraints, *missing])


def main(argv: list[str]) -> int:
    command = argv[0] if argv and argv[0] in COMMANDS else "webui"
    rest = argv[1:] if command != "webui" else argv
    if command == "webui" and ("-h" in rest or "--help" in rest):
        sys.path.insert(0, str(ROOT))
        from modules.app.options import build_parser

        build_parser().print_help()
        return 0
    ensure_venv(argv)
    if "--skip-install" not in argv:
        files = [ROOT / "requirements.txt"]
        if command == "test":
            files.append(ROOT / "requirements-dev.txt")
        ensure_requirements(files)
        ensure_requirements([NODEPS_REQUIREMENTS], no_deps=True)
    if command != "webui":
        rest = _without_launcher_options(rest)
    if command == "test":
        return subprocess.call([sys.executable, "-m", "pytest", *rest], cwd=ROOT)
    sys.path.insert(0, str(ROOT))
    if command == "batch":
        from modules.frontends.batch.cli import main as batch_main

        return batch_main(rest)
    import webui

    return webui.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
