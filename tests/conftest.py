"""Test rig: three directories, two tiers, one private lab per process.

- tests/unit: no lab, no root, no daemons; runs anywhere (a package build runs it).
- tests/e2e: every test here runs inside the lab (tests/lab): before the first test
  runs, this process moves into its own mount and network namespace, where /etc and
  /var are overlays, Postfix's and Dovecot's state directories and /run are private,
  and loopback is private. Those tests may use default paths and standard ports and
  start daemons without touching the machine's own mail system; the users, groups
  and Dovecot auth socket a test leaves behind are removed after it, so every module
  shares one process (and pytest-xdist's workers each have a lab of their own).
  Nothing is entered at import time or for a run without e2e tests.
- tests/packaging: builds and installs the Debian package in chroots, whose demo
  makes namespaces and overlays of its own; it runs on the machine as it always did,
  never inside the lab's overlays, so in a process of its own.

As root, a lab that cannot start FAILS every e2e test with the reason (a chroot
whose / is not a mount point, no namespace support): the end-to-end proof is never
silently skipped. Without root they are skipped with that reason.
CERTBOT_POSTFIX_TLS_UNIT_ONLY=1 collects tests/unit only (the package build).

Tiers: tests marked ``tier2`` (module-level ``pytestmark``: the pipeline's edge
cases, real-world configurations, the corpus, layouts, doctor on hand-made servers,
key-type pairs, sessions, DANE, monitoring, packaging) take minutes; the README's
test command deselects them (``-m "not tier2"``), .ci/heavy runs ``-m tier2``.
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
from lab import accounts
from lab.dovecot import DovecotLab, installed_version

REPO = Path(__file__).resolve().parent.parent
# Where Debian's python3-* packages install their modules.
DISTRIBUTION_PACKAGES = "/usr/lib/python3/dist-packages/"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Dovecot's stock /etc/dovecot by version: Debian 12's 2.3, Debian 13's 2.4.
DOVECOT_STOCK_TREES = {(2, 3): FIXTURES / "dovecot23", (2, 4): FIXTURES / "dovecot24"}

_SCRATCH = Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-tests-"))
E2E = Path(__file__).resolve().parent / "e2e"
PACKAGING = Path(__file__).resolve().parent / "packaging"
UNIT_ONLY = os.environ.get("CERTBOT_POSTFIX_TLS_UNIT_ONLY") == "1"
# Why the lab is unavailable ("" once inside it); None until it was tried.
_lab_problem: Optional[str] = None


def in_e2e(path: Path) -> bool:
    """Whether a test file lives in tests/e2e (and so runs inside the lab)."""
    return E2E in path.resolve().parents


def lab_problem() -> str:
    """Enter the lab's namespaces on the first call; "" when inside, else why not.

    unshare() moves only the calling thread: a thread still running at that
    moment would stay outside, so the lab is refused then (and tried again
    by the next test that needs it). pytest_collection_finish enters it before
    any test ran (a pytest-xdist worker runs its tests in its main thread too).
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
    """Enter the lab (see lab_problem); if it cannot start, fail as root, else skip.

    As root the end-to-end tests must run: a lab that cannot start fails them with
    the reason instead of letting the run pass with everything skipped.
    """
    problem = lab_problem()
    if not problem:
        return
    if os.geteuid() == 0:
        pytest.fail(f"the lab cannot start, so the end-to-end tests cannot run: {problem} "
                    "(CERTBOT_POSTFIX_TLS_UNIT_ONLY=1 runs the unit tests only)", pytrace=False)
    pytest.skip(problem)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    """CERTBOT_POSTFIX_TLS_UNIT_ONLY=1: collect tests/unit only."""
    if UNIT_ONLY and collection_path.resolve() in (E2E, PACKAGING):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CERTBOT_POSTFIX_TLS_UNIT_ONLY=1: even e2e or packaging files named explicitly."""
    if not UNIT_ONLY:
        return
    outside = [item for item in items
               if in_e2e(item.path) or PACKAGING in item.path.resolve().parents]
    if outside:
        config.hook.pytest_deselected(items=outside)
        items[:] = [item for item in items if item not in outside]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Enter the lab before the first test, when an e2e test is to run.

    tests/packaging must stay outside it (its chroots make namespaces and overlays
    of their own), so the two never share a process.
    """
    if session.config.option.collectonly:
        return
    e2e = any(in_e2e(item.path) for item in session.items)
    packaging = any(PACKAGING in item.path.resolve().parents for item in session.items)
    if e2e and packaging:
        raise pytest.UsageError(
            "tests/packaging runs outside the lab, tests/e2e inside it: run them in separate "
            "pytest processes (as .ci/heavy does)"
        )
    if e2e:
        lab_problem()


@pytest.fixture(autouse=True)
def _lab_for_e2e(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every e2e test runs inside the lab and leaves no account or auth socket behind."""
    if not in_e2e(request.node.path):
        yield
        return
    need_lab()
    before = accounts.accounts()
    yield
    accounts.remove_accounts_since(before)
    accounts.remove_stale_sockets()


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


@pytest.fixture(scope="session")
def shortlived_pebble() -> Iterator[lab.Pebble]:
    """A second Pebble, issuing 160-hour certificates (Let's Encrypt's shortlived profile)."""
    need("pebble")
    server = lab.Pebble(_SCRATCH / "pebble-shortlived", validity_seconds=lab.SHORTLIVED_SECONDS,
                        offset=100)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=certbot_pythons(), ids=lambda flavor: flavor[0])
def certbot(request: pytest.FixtureRequest, pebble: lab.Pebble) -> lab.Certbot:
    return _runner(request, pebble)


@pytest.fixture(params=certbot_pythons(), ids=lambda flavor: flavor[0])
def shortlived_certbot(request: pytest.FixtureRequest,
                       shortlived_pebble: lab.Pebble) -> lab.Certbot:
    """certbot (PyPI's, Debian's) against the Pebble that issues 160-hour certificates."""
    return _runner(request, shortlived_pebble)


def _runner(request: pytest.FixtureRequest, pebble: lab.Pebble) -> lab.Certbot:
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


@pytest.fixture
def snakeoil_pair() -> Iterator[None]:
    """Debian's snakeoil pair, which the lab's stock main.cf names (lab.flows)."""
    from lab.flows import debian_snakeoil

    with debian_snakeoil():
        yield
