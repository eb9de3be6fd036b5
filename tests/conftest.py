"""Test rig: the whole session runs inside the lab's private namespaces.

Before any test runs, this process moves into its own mount and network
namespace (tests/lab): /etc and /var are overlays, Postfix's and
Dovecot's state directories are private, loopback is private. Tests may then
use default paths and standard ports, create users and groups, and start
daemons, without touching the machine's own mail system (SPEC section 10).
Without root (or without namespace support) the end-to-end tests are skipped
with that reason; unit tests still run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import lab
import pytest
from lab.dovecot import DovecotLab

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

_SCRATCH = Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-tests-"))
try:
    lab.enter_private_namespace(_SCRATCH / "namespace")
    LAB_PROBLEM = ""
except (lab.LabError, OSError) as exc:
    LAB_PROBLEM = f"no private namespace for the lab: {exc}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


def need(tool: str) -> None:
    """Skip (visibly) when the lab or a system tool is missing."""
    if LAB_PROBLEM:
        pytest.skip(LAB_PROBLEM)
    from certbot_postfix_tls._internal import process

    if process.find_tool(tool) is None:
        pytest.skip(f"{tool} is not installed (see .ci/run for the packages)")


def certbot_pythons() -> list[tuple[str, str]]:
    """Interpreters whose certbot the end-to-end tests run: PyPI newest, Debian 12's."""
    flavors = [("pypi", sys.executable)]
    debian = os.environ.get("CERTBOT_DEBIAN_PYTHON", str(REPO / ".venv-deb" / "bin" / "python"))
    if Path(debian).exists():
        flavors.append(("debian", debian))
    return flavors


def once(request: pytest.FixtureRequest, why: str) -> None:
    """Run a test with the newest certbot only: what it exercises does not depend on
    certbot's version, and the suite has a time budget."""
    if "[debian]" in request.node.name:
        pytest.skip(f"runs with the newest certbot only: {why}")


@pytest.fixture(scope="session")
def pebble() -> Iterator[lab.Pebble]:
    need("pebble")
    server = lab.Pebble(_SCRATCH / "pebble")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dovecot_config() -> Iterator[Optional[DovecotLab]]:
    """Debian's stock Dovecot configuration (not started), when Dovecot is installed.

    Installed for every end-to-end test so that what the plugin finds in
    /etc/dovecot never depends on the host's own files.
    """
    if LAB_PROBLEM or shutil.which("doveconf", path="/usr/bin:/usr/sbin") is None:
        yield None
        return
    instance = DovecotLab()
    instance.install_config(snakeoil=False)
    yield instance
    instance.stop()
    Path(instance.log_file).unlink(missing_ok=True)


@pytest.fixture
def postfix_lab(dovecot_config: Optional[DovecotLab]) -> Iterator[lab.PostfixLab]:
    """Postfix as Debian installs it, started on the private loopback."""
    need("postfix")
    instance = lab.PostfixLab()
    main_cf, master_cf = lab.debian_stock_config()
    instance.install_config(main_cf, master_cf)
    instance.start()
    yield instance
    instance.stop()
    Path(instance.log_file).unlink(missing_ok=True)


@pytest.fixture
def dovecot_lab(dovecot_config: Optional[DovecotLab]) -> DovecotLab:
    """The stock Dovecot configuration with its snakeoil certificate, started."""
    need("dovecot")
    assert dovecot_config is not None
    dovecot_config.install_config(snakeoil=True)
    dovecot_config.start()
    return dovecot_config


@pytest.fixture(params=certbot_pythons(), ids=lambda flavor: flavor[0])
def certbot(request: pytest.FixtureRequest, pebble: lab.Pebble) -> lab.Certbot:
    flavor, python = request.param
    # Like /etc/letsencrypt, the config dir's ancestors are traversable (0755):
    # pytest's tmp_path is not, and key-permission checks would rightly complain.
    root = _SCRATCH / "certbot"
    root.mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(dir=root, prefix=f"{flavor}-"))
    for directory in (_SCRATCH, root, base):
        directory.chmod(0o755)
    runner = lab.Certbot(pebble, base, python=python)
    if flavor == "debian" and not runner.version().startswith("2."):
        pytest.skip(f"{python} does not run Debian 12's certbot 2.x")
    return runner
