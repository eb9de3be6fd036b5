"""Test rig: tests that need the lab run inside its private namespaces.

The first test that needs the lab (through ``need()``, ``need_lab()``, the
lab fixtures below, or by living in a test_e2e_* module) moves this process
into its own mount and network namespace (tests/lab): /etc and /var are
overlays, Postfix's and Dovecot's state directories are private, loopback is
private. Those tests may then use default paths and standard ports, create
users and groups, and start daemons, without touching the machine's own mail
system. Nothing is entered at import time: a run of unit tests only (a
package build may run them as root) never unshares anything.
Without root (or without namespace support) the tests that need the lab are
skipped with that reason; unit tests still run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import lab
import pytest
from lab.dovecot import DovecotLab, installed_version

REPO = Path(__file__).resolve().parent.parent
# Where Debian's python3-* packages install their modules.
DISTRIBUTION_PACKAGES = "/usr/lib/python3/dist-packages/"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Dovecot's stock /etc/dovecot by version: Debian 12's 2.3, Debian 13's 2.4.
DOVECOT_STOCK_TREES = {(2, 3): FIXTURES / "dovecot23", (2, 4): FIXTURES / "dovecot24"}

_SCRATCH = Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-tests-"))
# Why the lab is unavailable ("" once inside it); None until a test needed it.
_lab_problem: Optional[str] = None


def lab_problem() -> str:
    """Enter the lab's namespaces on the first call; "" when inside, else why not.

    unshare() moves only the calling thread: a thread still running at that
    moment would stay outside, so the lab is refused then (and tried again
    by the next test that needs it).
    """
    global _lab_problem
    if _lab_problem is None:
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            return f"no private namespace for the lab: threads still running ({', '.join(others)})"
        try:
            lab.enter_private_namespace(_SCRATCH / "namespace")
            _lab_problem = ""
        except (lab.LabError, OSError) as exc:
            _lab_problem = f"no private namespace for the lab: {exc}"
    return _lab_problem


def need_lab() -> None:
    """Enter the lab (see lab_problem), or skip (visibly) saying why not."""
    problem = lab_problem()
    if problem:
        pytest.skip(problem)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """End-to-end modules run inside the lab, even their tests without lab fixtures."""
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rpartition(".")[2].startswith("test_e2e_"):
        lab_problem()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


def need(tool: str) -> None:
    """Enter the lab; skip (visibly) when the lab or a system tool is missing."""
    need_lab()
    from certbot_postfix_tls._internal import process

    if process.find_tool(tool) is None:
        pytest.skip(f"{tool} is not installed (see .ci/run for the packages)")


def installed_dovecot_tree(target: Path) -> tuple[Path, tuple[int, ...]]:
    """Copy the stock tree in the installed Dovecot's syntax to ``target``; return its
    dovecot.conf and that Dovecot's version. Skips without Dovecot, or when it is neither
    2.3 nor 2.4 (no stock tree to give it)."""
    from certbot_postfix_tls._internal import process

    if process.find_tool("dovecot") is None or process.find_tool("doveconf") is None:
        pytest.skip("dovecot is not installed (apt-get install dovecot-core)")
    version = installed_version()
    stock = DOVECOT_STOCK_TREES.get(version[:2])
    if stock is None:
        pytest.skip(f"no stock tree of Dovecot {version} in tests/fixtures (2.3, 2.4)")
    shutil.copytree(stock, target, ignore=shutil.ignore_patterns("*.txt"))
    return target / "dovecot.conf", version


def certbot_pythons() -> list[tuple[str, str]]:
    """Interpreters whose certbot the end-to-end tests run: PyPI newest, the distribution's
    (python3-certbot: 2.1 on Debian 12, 4.0 on Debian 13)."""
    flavors = [("pypi", sys.executable)]
    debian = os.environ.get("CERTBOT_DEBIAN_PYTHON", str(REPO / ".venv-deb" / "bin" / "python"))
    if Path(debian).exists():
        flavors.append(("debian", debian))
    return flavors


def once(request: pytest.FixtureRequest, why: str) -> None:
    """Run a test with the newest certbot only: what it exercises does not depend on
    certbot's version, and the suite has a time budget."""
    callspec = getattr(request.node, "callspec", None)
    flavor = callspec.params.get("certbot", ("",))[0] if callspec else ""
    if flavor == "debian" or "[debian]" in request.node.name:
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
    if lab_problem() or shutil.which("doveconf", path="/usr/bin:/usr/sbin") is None:
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
    if flavor == "debian" and not runs_distribution_certbot(python):
        pytest.skip(f"{python} does not run the distribution's certbot (python3-certbot)")
    return runner


@functools.cache
def runs_distribution_certbot(python: str) -> bool:
    """Whether ``python`` imports certbot from the distribution's python3-certbot
    (not a PyPI copy that pip put in a venv), whatever its version."""
    proc = subprocess.run(  # noqa: S603
        [python, "-c", "import certbot; print(certbot.__file__)"],
        capture_output=True, text=True, check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip().startswith(DISTRIBUTION_PACKAGES)


# Tests that take minutes run from .ci/heavy (CERTBOT_POSTFIX_TLS_HEAVY=1), not from
# the README's test command, which has a time budget of about 15 minutes.
HEAVY = os.environ.get("CERTBOT_POSTFIX_TLS_HEAVY") == "1"
heavy = pytest.mark.skipif(
    not HEAVY, reason="takes minutes: runs from .ci/heavy (set CERTBOT_POSTFIX_TLS_HEAVY=1)",
)
# Whole end-to-end modules of the second tier: the pipeline's edge cases, real-world
# configurations, the corpus, doctor on hand-made servers, key-type pairs, sessions,
# DANE and monitoring. .ci/heavy runs them all; so does
# `CERTBOT_POSTFIX_TLS_HEAVY=1 sh tools/bootstrap test`.
HEAVY_MODULES = {
    "test_e2e_pipeline.py", "test_e2e_real_configs.py", "test_e2e_corpus.py",
    "test_layouts.py", "test_e2e_doctor.py", "test_e2e_pairs.py", "test_e2e_sessions.py",
    "test_e2e_dane.py", "test_e2e_watch.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HEAVY:
        return
    for item in items:
        if item.path.name in HEAVY_MODULES:
            item.add_marker(heavy)
