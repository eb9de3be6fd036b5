"""The daemon registry and interface, shown with a third daemon (no root, no lab).

``FakeDaemon`` is a POP3S server on 127.0.0.1 that serves the key+chain file its own
configuration file names, read again on ``reload()``. Registered next to (or instead
of) Postfix and Dovecot, it gets its own plan from ``pipeline.render``, is written by
``pipeline.write``, reloaded and verified by ``pipeline.activate`` with the real
verifier, and taken out again by the removal render.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import pytest
import trustme

from certbot_postfix_tls._internal import daemons, pipeline, tls_client, verify
from certbot_postfix_tls._internal.daemons.base import DaemonPlan, PlanRequest, Preview
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix.config import PostfixConfig
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.state import DeployedLineage, State

NAME = "mail.fake.example"
LINEAGE = "fake"


class TLSServer:
    """POP3 with implicit TLS in a thread; ``load`` swaps the certificate it serves."""

    def __init__(self, certfile: str) -> None:
        self.context = self._context(certfile)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _context(certfile: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile)  # key and chain in one file, like Postfix's
        return context

    def load(self, certfile: str) -> None:
        self.context = self._context(certfile)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                self._serve(conn)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with self.context.wrap_socket(conn, server_side=True) as tls:
            reader = tls.makefile("rb")
            tls.sendall(b"+OK fake ready\r\n")
            for raw in reader:
                command = raw.strip().upper()
                if command == b"CAPA":
                    tls.sendall(b"+OK\r\nUSER\r\n.\r\n")
                elif command == b"QUIT":
                    tls.sendall(b"+OK bye\r\n")
                    return
                else:
                    tls.sendall(b"-ERR\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@dataclass
class FakePlan(DaemonPlan):
    text: Optional[str] = None  # the configuration file's new content
    remove: bool = False

    @property
    def empty(self) -> bool:
        return self.text is None and not self.remove

    def report(self) -> list[str]:
        return [f"fake.conf: {self.text.strip()}"] if self.text else []


class FakeDaemon:
    """The third daemon: ``fake.conf`` names the key+chain file to serve."""

    name: ClassVar[str] = "fake"
    advice: ClassVar[verify.Advice] = verify.Advice(
        display="Fake", reload="fake reload", start="fake start",
        cert_setting="chain_file in fake.conf", log_programs=("fake[",))
    cert_settings: ClassVar[tuple[str, ...]] = ("chain_file",)
    serves_derived: ClassVar[bool] = True
    config_file: ClassVar[str] = ""
    server: ClassVar[Optional[TLSServer]] = None
    calls: ClassVar[list[str]] = []

    @classmethod
    def configured(cls, state: State) -> bool:
        return bool(cls.config_file)

    @classmethod
    def for_state(cls, state: State) -> FakeDaemon:
        return cls()

    @property
    def label(self) -> str:
        return f"Fake ({self.config_file})"

    def plan(self, request: PlanRequest) -> FakePlan:
        self.calls.append("plan")
        if request.removing:
            return FakePlan(remove=True, notes=["fake: removed fake.conf"], check=False)
        default = request.served.lineages[str(request.served.default)]
        text = f"chain_file = {default.chain_file}\n"
        current = Path(self.config_file).read_text() if os.path.exists(self.config_file) else None
        return FakePlan(text=None if text == current else text,
                        notes=[f"fake: serves {default.name}"])

    def files(self, plan: DaemonPlan) -> list[str]:
        return [self.config_file]

    def apply(self, plan: DaemonPlan) -> None:
        assert isinstance(plan, FakePlan)
        self.calls.append("apply")
        if plan.remove:
            os.unlink(self.config_file)
        elif plan.text is not None:
            Path(self.config_file).write_text(plan.text)

    def preview(self, plan: DaemonPlan, state: State) -> Preview:
        assert isinstance(plan, FakePlan)
        files: dict[str, Optional[bytes]] = {}
        if plan.remove:
            files[self.config_file] = None
        elif plan.text is not None:
            files[self.config_file] = plan.text.encode()
        return Preview(files, self.endpoints(state))

    def _chain_file(self) -> str:
        return Path(self.config_file).read_text().split("=", 1)[1].strip()

    def check(self) -> None:
        self.calls.append("check")
        assert os.path.isfile(self._chain_file())

    def reload(self) -> None:
        self.calls.append("reload")
        assert self.server is not None
        self.server.load(self._chain_file())

    def running(self) -> Optional[bool]:
        return True

    def endpoints(self, state: State) -> list[tls_client.Endpoint]:
        assert self.server is not None
        return [tls_client.Endpoint(self.name, "pop3", state.verify_address, self.server.port,
                                "implicit", "pop3s", advice=self.advice)]

    def unchecked(self, state: State) -> list[tuple[str, str]]:
        return []


def _pem_pair(directory: Path, leaf: trustme.LeafCert) -> tuple[str, str]:
    directory.mkdir(parents=True)
    fullchain, key = directory / "fullchain.pem", directory / "privkey.pem"
    fullchain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(fullchain), str(key)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[str, State, TLSServer]]:
    """A lineage in certbot's live/ layout, its state, and the fake daemon serving an
    unrelated certificate (what the server had before the deploy)."""
    ca = trustme.CA()
    config_dir = tmp_path / "letsencrypt"
    fullchain, key = _pem_pair(config_dir / "live" / LINEAGE, ca.issue_cert(NAME))
    old_chain, old_key = _pem_pair(tmp_path / "old", ca.issue_cert("old.fake.example"))
    old_combined = tmp_path / "old" / "combined.pem"
    old_combined.write_text(Path(old_key).read_text() + Path(old_chain).read_text())
    server = TLSServer(str(old_combined))
    state = State()
    state.add(DeployedLineage(
        name=LINEAGE, key_path=key, fullchain_path=fullchain,
        chain_file=str(config_dir / "postfix-tls" / "lineages" / LINEAGE / "key-fullchain.pem"),
        names=[NAME], dane="ignore"))
    state.verify_address = "127.0.0.1"
    FakeDaemon.config_file = str(tmp_path / "fake.conf")
    FakeDaemon.server = server
    FakeDaemon.calls = []
    try:
        with daemons.register(FakeDaemon, only=True):
            yield str(config_dir), state, server
    finally:
        server.close()
        FakeDaemon.config_file, FakeDaemon.server = "", None


def postfix_config() -> PostfixConfig:
    """What render reads from Postfix (the default rule's myhostname), without Postfix."""
    return PostfixConfig(main={"myhostname": NAME}, explicit={}, services=[], map_types=set())


# The pipeline gives the key+chain files it writes to root (and the key group): as
# another user (the package build) the write itself is refused.
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the pipeline writes root-owned key+chain files: run as root")


def test_registry_order_and_registration() -> None:
    assert daemons.names() == ["postfix", "dovecot"]
    assert daemons.by_name("dovecot") is Dovecot
    with daemons.register(FakeDaemon):
        assert daemons.names() == ["postfix", "dovecot", "fake"]
        assert daemons.by_name("fake") is FakeDaemon
    assert daemons.names() == ["postfix", "dovecot"]
    with pytest.raises(KeyError):
        daemons.by_name("fake")


def test_providers_deploy_and_reload_first() -> None:
    # Dovecot declares the SASL socket Postfix uses: written and reloaded before it,
    # as is a daemon registered after both.
    found = [object.__new__(cls) for cls in (Dovecot, Postfix)]
    assert [d.name for d in daemons.ordered(found)] == ["postfix", "dovecot"]
    assert [d.name for d in daemons.deploy_order(found)] == ["dovecot", "postfix"]
    with daemons.register(FakeDaemon):
        found.append(FakeDaemon())
        assert [d.name for d in daemons.deploy_order(found)] == ["fake", "dovecot", "postfix"]


def test_state_configures_by_registry() -> None:
    state = State()
    assert daemons.configured_names(state) == ["postfix"]
    state.dovecot_config = "/etc/dovecot/dovecot.conf"
    assert daemons.configured_names(state) == ["postfix", "dovecot"]


@needs_root
def test_a_third_daemon_is_planned_written_reloaded_and_verified(
    fake: tuple[str, State, TLSServer],
) -> None:
    config_dir, state, server = fake
    site = pipeline.Site.from_state(config_dir, state)
    assert [d.name for d in site.daemons] == ["fake"]

    desired = pipeline.render(site, state, postfix_config(), [], {})
    plan = desired.plans["fake"]
    chain_file = state.lineages[LINEAGE].chain_file
    assert isinstance(plan, FakePlan) and plan.text == f"chain_file = {chain_file}\n"
    assert "fake: serves fake" in desired.notes
    assert str(Path(FakeDaemon.config_file)) in pipeline.config_files(site, desired)

    # plan's preview: the daemon's file with its text, the key+chain file by path only,
    # nothing written.
    shown = pipeline.preview(site, desired)
    assert shown.files[FakeDaemon.config_file] == (None, plan.text.encode())
    assert [(k.path, k.action, k.mode) for k in shown.key_files] == [(chain_file, "create",
                                                                      0o600)]
    assert State.path(config_dir) in shown.files
    assert shown.endpoints == site.daemons[0].endpoints(state)
    assert not os.path.exists(FakeDaemon.config_file) and not os.path.exists(chain_file)
    assert FakeDaemon.calls == ["plan"]

    pipeline.write(site, desired)
    assert Path(FakeDaemon.config_file).read_text() == plan.text
    assert os.path.isfile(state.lineages[LINEAGE].chain_file)
    assert FakeDaemon.calls == ["plan", "apply", "check"]

    # Before the reload the old certificate is served: the verifier says so, and the
    # advice names the fake daemon's own reload command.
    expected = verify.ExpectedCert.from_fullchain(state.lineages[LINEAGE].fullchain_path)
    endpoint = site.daemons[0].endpoints(state)[0]
    stale = verify.check_endpoint(endpoint, expected, NAME, retry_seconds=0)
    assert stale.status == "CRITICAL" and stale.kind == "other-cert"
    assert "fix: point it at the deployed lineage, then fake reload" in verify.summarize([stale])[0]

    warnings: list[str] = []
    problems = pipeline.activate(site, state, site.names(), None, warnings.append)
    assert problems == [] and warnings == []
    assert FakeDaemon.calls[-2:] == ["check", "reload"]
    served = verify.check_endpoint(endpoint, expected, NAME, retry_seconds=0)
    assert served.status == "OK", served.message

    # Nothing changed: planning again gives nothing to write.
    again = pipeline.render(site, State.load(config_dir), postfix_config(), [], {})
    assert again.plans["fake"].empty
    nothing = pipeline.preview(site, again)
    assert (nothing.files, nothing.key_files, nothing.permissions) == ({}, [], [])


@needs_root
def test_the_last_lineage_takes_the_third_daemon_out(
    fake: tuple[str, State, TLSServer],
) -> None:
    config_dir, state, _ = fake
    site = pipeline.Site.from_state(config_dir, state)
    pipeline.write(site, pipeline.render(site, state, postfix_config(), [], {}))
    assert os.path.exists(FakeDaemon.config_file)

    state.remove(LINEAGE)
    desired = pipeline.render(site, state, postfix_config(), [], {})
    assert isinstance(desired.plans["fake"], FakePlan) and desired.plans["fake"].remove
    pipeline.write(site, desired)
    assert not os.path.exists(FakeDaemon.config_file)
    assert not os.path.exists(State.path(config_dir))


def _second_lineage(config_dir: str, state: State, name: str, host: str) -> DeployedLineage:
    """Another lineage in the live/ layout, added to ``state``."""
    fullchain, key = _pem_pair(Path(config_dir) / "live" / name, trustme.CA().issue_cert(host))
    lineage = DeployedLineage(
        name=name, key_path=key, fullchain_path=fullchain,
        chain_file=str(Path(config_dir) / "postfix-tls" / "lineages" / name /
                       "key-fullchain.pem"),
        names=[host], dane="ignore")
    state.add(lineage)
    return lineage


@needs_root
def test_a_lineage_whose_files_are_gone_is_left_out_until_they_are_back(
    fake: tuple[str, State, TLSServer],
) -> None:
    config_dir, state, _ = fake
    other = _second_lineage(config_dir, state, "other", "mail.other.example")
    site = pipeline.Site.from_state(config_dir, state)
    pipeline.write(site, pipeline.render(site, state, postfix_config(), [], {}), check=False)
    state.sni_map_type = "hash"  # rendered only below (postmap is Postfix's)
    assert "mail.other.example" in str(
        pipeline.render(site, state, postfix_config(), [], {}).sni_map)
    # Its derived key+chain file is still there, but the files Dovecot reads are gone
    # (archive/ removed): the deploy of the first lineage leaves it out, with a warning.
    aside = Path(config_dir) / "aside"
    os.rename(Path(other.fullchain_path).parent, aside)
    desired = pipeline.render(site, state, postfix_config(), [], {}, rebuild=[LINEAGE])
    assert desired.broken == ["other"]
    assert "mail.other.example" not in str(desired.sni_map)
    assert any("lineage other cannot be served" in w and "does not exist" in w
               for w in desired.warnings)
    assert "other" in desired.state.lineages  # kept: served again once its files are back
    os.rename(aside, Path(other.fullchain_path).parent)
    again = pipeline.render(site, state, postfix_config(), [], {}, rebuild=[LINEAGE])
    assert again.broken == [] and "mail.other.example" in str(again.sni_map)


def test_default_rule_compares_myhostname_expanded(fake: tuple[str, State, TLSServer]) -> None:
    config_dir, state, _ = fake
    _second_lineage(config_dir, state, "aaa-first", "mail.other.example")
    state.order = ["aaa-first", LINEAGE]
    site = pipeline.Site.from_state(config_dir, state)
    # `myhostname = mail.$mydomain`: postconf -n gives it as written, -x expanded.
    config = PostfixConfig(main={"myhostname": "mail.$mydomain", "mydomain": "fake.example"},
                           explicit={}, services=[], map_types=set(),
                           expanded={"myhostname": NAME})
    assert pipeline.render(site, state, config, [], {}).state.default == LINEAGE
