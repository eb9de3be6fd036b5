"""Renewal-hook fixtures shared by the hook tests: planted modules, old hooks, a venv."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER_NAME = "PLANTED-MODULE-RAN"


def plant(directory: Path) -> Path:
    """A certbot_postfix_tls package (and a runpy) that leave a marker when imported."""
    marker = directory / MARKER_NAME
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran as uid 0')\n"
    package = directory / "certbot_postfix_tls"
    package.mkdir(parents=True)
    for name in ("__init__.py", "__main__.py"):
        (package / name).write_text(code)
    (directory / "runpy.py").write_text(code)
    return marker


def format1_hook(python: str, config_dir: str, kind: str) -> str:
    """The hook the plugin wrote before it ran Python isolated."""
    return (
        "#!/bin/sh\n"
        "# Installed by certbot-postfix-tls; removed when its last lineage is undeployed.\n"
        f"exec {python} -m certbot_postfix_tls --config-dir {config_dir} hook {kind}\n"
    )


def install_text(path: str, text: str, mode: int = 0o755) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_text(text)
    os.chmod(path, mode)


def make_venv(target: Path) -> Path:
    """A throwaway virtualenv that imports this checkout (and certbot) through a .pth,
    as a plugin installed into its own venv would."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True,
                   timeout=120)
    site = subprocess.run(
        [str(target / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(site, "plugin.pth").write_text(f"{REPO}\n{sysconfig.get_path('purelib')}\n")
    return target
