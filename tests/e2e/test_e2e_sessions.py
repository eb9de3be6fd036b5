"""--postfix-tls-dovecot-sessions: established IMAP/POP3 sessions across a renewal.

Real certbot, Pebble, Postfix and Dovecot; logged-in sessions through the standard
library's imaplib and poplib (tests/lab/sessions.py). ``keep`` must leave every
session of a forced renewal alive with one Dovecot reload, while new connections get
the new certificate; ``cut`` (the default) must leave the configuration as it always
was, and Dovecot then cuts the sessions. Rollback and undeploy take away the setting
the plugin added and never touch an operator's own shutdown_clients. Dovecot 2.4 runs
from the Debian 13 chroot (DOVECOT24_ROOT, .ci/heavy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lab
import pytest
from conftest import need, once
from lab.accounts import add_mail_user
from lab.dovecot import DovecotLab
from lab.dovecot24 import ChrootDovecot
from lab.sessions import MailSessions, SessionReport

from certbot_postfix_tls._internal import certs, dialogues, process, tls_client
from certbot_postfix_tls._internal.state import State

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

NAME = lab.LAB_HOSTNAME
OTHER = "mail2.example.net"
PLUGIN_FILE = Path("/etc/dovecot/conf.d/99-certbot-postfix-tls.conf")
KEEP_LINE = "\nshutdown_clients = no\n"
DOVECOT_PORTS = (("imap", 143, "starttls"), ("imap", 993, "implicit"),
                 ("pop3", 110, "starttls"), ("pop3", 995, "implicit"))
RELOAD = "SIGHUP received"
# Dovecot's reload ends old processes 6 s after it (shutdown_clients = yes): wait longer.
AFTER_RENEWAL = 8.0
USERS = (("alice", "correct horse"), ("bob", "battery staple"))
# --- helpers for the end-to-end tests ------------------------------------------------------


@pytest.fixture
def newest(request: pytest.FixtureRequest) -> None:
    """First in a test's arguments: skips the Debian certbot's run before any daemon
    starts (what these tests exercise does not depend on certbot's version)."""
    once(request, "Dovecot's behaviour and the plugin's option do not depend on certbot's "
                  "version")


def add_users(make: Callable[[str, str], None] = add_mail_user) -> None:
    for user, password in USERS:
        make(user, password)


@pytest.fixture
def mail_users() -> Iterator[None]:
    add_users()
    yield
    for user, _ in USERS:
        subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)


def leaf(certbot: lab.Certbot, name: str = NAME) -> bytes:
    pem = (certbot.config_dir / "live" / name / "fullchain.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def served(protocol: str, port: int, tls: str, name: str = NAME) -> bytes:
    endpoint = tls_client.Endpoint("dovecot", protocol, "127.0.0.1", port, tls, str(port))
    return dialogues.handshake(endpoint, name).leaf_der


def doctor_sessions(certbot: lab.Certbot) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir),
         "doctor", "--json"], capture_output=True, text=True, timeout=180, check=False)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    return str(checks["dovecot-sessions"]["message"])


def doveconf(name: str) -> str:
    proc = process.run(["doveconf", name], what="doveconf")
    return proc.stdout.partition("=")[2].strip()


def renew_with_sessions(certbot: lab.Certbot, dv: DovecotLab) -> tuple[SessionReport, str]:
    """Logged-in sessions through a forced renewal: 10 IMAPS NOOP-ing every second,
    2 IMAPS in IDLE, 5 POP3S NOOP-ing. Returns their report and Dovecot's log of the
    renewal; asserts doctor counted them and the new certificate is served."""
    (alice, bob) = USERS
    old = leaf(certbot)
    with MailSessions() as sessions:
        sessions.open("imap", 10, 993, alice, "noop")
        sessions.open("imap", 2, 993, bob, "idle")
        sessions.open("pop3", 5, 995, bob, "noop")
        counted = doctor_sessions(certbot)
        assert "17 established sessions (imap 12, pop3 5)" in counted, counted
        offset = len(dv.log())
        certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                    *certbot.acme_args())
        time.sleep(AFTER_RENEWAL)
        report = sessions.close()
    new = leaf(certbot)
    assert new != old
    for protocol, port, tls in DOVECOT_PORTS:  # new connections: the new certificate
        assert served(protocol, port, tls) == new, (protocol, port)
    return report, dv.log()[offset:]


def keep_scenario(certbot: lab.Certbot, dv: DovecotLab, *extra: str) -> None:
    master = dv.master_pid()
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                "--postfix-tls-dovecot-sessions", "keep", *extra, *certbot.acme_args())
    assert KEEP_LINE in PLUGIN_FILE.read_text()
    assert doveconf("shutdown_clients") == "no"
    assert State.load(str(certbot.config_dir)).dovecot_sessions == "keep"
    assert "mode keep" in doctor_sessions(certbot)

    report, log = renew_with_sessions(certbot, dv)
    assert report.opened("imap") == 12 and report.opened("pop3") == 5
    assert report.cut() == 0, [(r.protocol, r.mode, r.reason) for r in report.results]
    assert log.count(RELOAD) == 1  # one reload for the whole run
    assert dv.master_pid() == master
    assert KEEP_LINE in PLUGIN_FILE.read_text()  # re-rendered from the state: still there


# --- Dovecot 2.3 (Debian 12) ---------------------------------------------------------------


def test_keep_sessions_survive_a_forced_renewal(
    newest: None, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, mail_users: None,
) -> None:
    keep_scenario(certbot, dovecot_lab)


def test_cut_is_the_default_and_dovecot_cuts(
    newest: None, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, mail_users: None,
) -> None:
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                *certbot.acme_args())
    assert "shutdown_clients" not in PLUGIN_FILE.read_text()  # the file as it always was
    assert doveconf("shutdown_clients") == "yes"
    assert State.load(str(certbot.config_dir)).dovecot_sessions == "cut"
    assert "mode cut" in doctor_sessions(certbot)

    report, log = renew_with_sessions(certbot, dovecot_lab)
    # Today's behaviour, and proof that the sessions notice a cut: every one ends.
    assert report.cut() == report.opened() == 17
    assert log.count(RELOAD) == 1


def test_rollback_and_undeploy_remove_only_the_plugins_setting(
    newest: None, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, snakeoil_pair: None,
) -> None:
    config_dir = str(certbot.config_dir)
    for name in (NAME, OTHER):
        certbot.run("certonly", "-a", "standalone", "-d", name, *certbot.acme_args())
    undeploy = [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", config_dir,
                "undeploy", "--work-dir", str(certbot.base / "work"), "--cert-name"]

    def install(name: str, *extra: str) -> str:
        proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", name, *extra)
        return proc.stdout + proc.stderr

    def remove(name: str) -> None:
        proc = subprocess.run([*undeploy, name], capture_output=True, text=True,
                              timeout=180, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    before = files()
    install(NAME)
    assert "shutdown_clients" not in PLUGIN_FILE.read_text()
    cut_file = PLUGIN_FILE.read_text()
    install(NAME, "--postfix-tls-dovecot-sessions", "keep")
    assert KEEP_LINE in PLUGIN_FILE.read_text()
    certbot.run("rollback", "--installer", "postfix-tls")  # the keep install goes
    assert PLUGIN_FILE.read_text() == cut_file
    assert State.load(config_dir).dovecot_sessions == "cut"
    assert doveconf("shutdown_clients") == "yes"

    install(NAME, "--postfix-tls-dovecot-sessions", "keep")
    install(OTHER)  # no option: the recorded mode stays
    assert State.load(config_dir).dovecot_sessions == "keep"
    assert KEEP_LINE in PLUGIN_FILE.read_text()
    remove(OTHER)  # re-rendered from the state
    assert KEEP_LINE in PLUGIN_FILE.read_text()
    remove(NAME)  # the last one: the plugin's file goes
    assert not PLUGIN_FILE.exists()
    assert files() == before

    # An operator's own shutdown_clients: kept as it is, never added to, never removed.
    master_conf = Path("/etc/dovecot/conf.d/10-master.conf")
    master_conf.write_text(master_conf.read_text() + "shutdown_clients = yes\n")
    before = files()
    output = install(NAME, "--postfix-tls-dovecot-sessions", "keep")
    assert "already sets shutdown_clients = yes" in output
    assert "shutdown_clients" not in PLUGIN_FILE.read_text()
    assert doveconf("shutdown_clients") == "yes"
    assert "your own setting" in doctor_sessions(certbot)
    certbot.run("rollback", "--installer", "postfix-tls")
    assert files() == before
    install(NAME, "--postfix-tls-dovecot-sessions", "keep")
    remove(NAME)
    assert files() == before


def files() -> dict[str, bytes]:
    """Every Dovecot file, byte for byte."""
    return {str(p): p.read_bytes() for p in sorted(Path("/etc/dovecot").rglob("*"))
            if p.is_file()}


# --- Dovecot 2.4 (Debian 13 chroot) ------------------------------------------------------


def test_keep_sessions_survive_a_forced_renewal_dovecot24(
    newest: None, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    tmp_path: Path,
) -> None:
    """The same with Debian 13's Dovecot 2.4.1 run from the chroot (tests/lab/dovecot24.py:
    the real certbot and the plugin see it at the usual paths). SASL stays off: the
    chroot's postfix user is not the host's."""
    root = os.environ.get("DOVECOT24_ROOT", "")
    if not root or not os.path.exists(f"{root}/usr/sbin/dovecot"):
        pytest.skip("no Debian 13 chroot with Dovecot 2.4 (set DOVECOT24_ROOT to one)")
    need("chroot")
    dv = ChrootDovecot(root=root, scratch=tmp_path / "dovecot24", shared=[str(certbot.base)])
    dv.enter()
    try:
        dv.install_config(snakeoil=True)
        dv.start()
        add_users(dv.add_user)
        keep_scenario(certbot, dv, "--postfix-tls-sasl", "none")
        assert "ssl_server_cert_file = " in PLUGIN_FILE.read_text()  # 2.4 syntax
    finally:
        dv.leave()
