"""End to end with Dovecot beside Postfix: real certbot, Pebble, Postfix and Dovecot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import lab
import pytest
from conftest import need, once
from lab.accounts import add_mail_user
from lab.dovecot import SNAKEOIL_CERT, SNAKEOIL_KEY, DovecotLab, cert_lines

from certbot_postfix_tls._internal import certs, dialogues, tls_client

NAME = lab.LAB_HOSTNAME
PLUGIN_FILE = Path("/etc/dovecot/conf.d/99-certbot-postfix-tls.conf")
MAIL_ENDPOINTS = (
    ("imap", 143, "starttls"),
    ("imap", 993, "implicit"),
    ("pop3", 110, "starttls"),
    ("pop3", 995, "implicit"),
    ("smtp", 25, "starttls"),
    ("smtp", 587, "starttls"),
)


def configs() -> dict[str, bytes]:
    return {
        **{f"dovecot/{k}": v for k, v in lab.file_tree("/etc/dovecot").items()},
        "main.cf": Path("/etc/postfix/main.cf").read_bytes(),
        "master.cf": Path("/etc/postfix/master.cf").read_bytes(),
    }


def leaf_of(certbot: lab.Certbot) -> bytes:
    pem = (certbot.config_dir / "live" / NAME / "fullchain.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def served_leaf(protocol: str, port: int, tls: str) -> bytes:
    service = "postfix" if protocol == "smtp" else "dovecot"
    endpoint = tls_client.Endpoint(service, protocol, "127.0.0.1", port, tls, str(port))
    return dialogues.handshake(endpoint, NAME).leaf_der


def test_run_serves_every_port_and_wires_sasl(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab
) -> None:
    need("swaks")
    before = configs()
    dovecot_pid = dovecot_lab.master_pid()
    postfix_pid = postfix_lab.master_pid()

    proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                       *certbot.acme_args())
    output = proc.stdout + proc.stderr
    assert "dovecot:" in output and "no SASL backend" not in output

    leaf = leaf_of(certbot)
    for protocol, port, tls in MAIL_ENDPOINTS:
        assert served_leaf(protocol, port, tls) == leaf, (protocol, port)
    assert dovecot_lab.master_pid() == dovecot_pid  # doveadm reload, not a restart
    assert postfix_lab.master_pid() == postfix_pid
    # Debian's snakeoil line is commented out with a marker, not deleted.
    ssl_conf = Path("/etc/dovecot/conf.d/10-ssl.conf").read_text()
    snakeoil_cert = cert_lines(SNAKEOIL_CERT, SNAKEOIL_KEY)[0]
    assert f"#certbot-postfix-tls# {snakeoil_cert}\n" in ssl_conf

    # A real client submits on 587: STARTTLS, then AUTH PLAIN against Dovecot's socket.
    add_mail_user("alice", "correct horse")
    try:
        swaks = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", "587", "--tls",
             "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "correct horse",
             "--from", f"alice@{NAME}", "--to", "root@localhost", "--timeout", "20"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert swaks.returncode == 0, swaks.stdout + swaks.stderr
        assert "235 2.7.0 Authentication successful" in swaks.stdout
        assert "250 2.0.0 Ok: queued" in swaks.stdout
        wrong = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", "587", "--tls",
             "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong",
             "--from", f"alice@{NAME}", "--to", "root@localhost", "--timeout", "20"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert wrong.returncode != 0
    finally:
        subprocess.run(["userdel", "--remove", "alice"], check=False, capture_output=True)

    certbot.run("rollback", "--installer", "postfix-tls")
    assert configs() == before  # every Dovecot file, main.cf, master.cf, byte for byte
    assert not PLUGIN_FILE.exists()
    assert dovecot_lab.master_pid() == dovecot_pid
    # ... and reloaded: Dovecot serves its snakeoil certificate again.
    for protocol, port, tls in MAIL_ENDPOINTS[:4]:
        assert served_leaf(protocol, port, tls) != leaf, (protocol, port)


def test_missing_snakeoil_then_operator_starts_dovecot(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_config: DovecotLab | None
) -> None:
    need("dovecot")
    assert dovecot_config is not None
    # Debian's 10-ssl.conf names a snakeoil file that does not exist: Dovecot refuses
    # to start even though a later file would override the setting.
    with pytest.raises(lab.LabError):
        dovecot_config.start()
    proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                       *certbot.acme_args())
    output = proc.stdout + proc.stderr
    assert "Dovecot" in output and "is not running" in output  # configured, not started
    assert dovecot_config.master_pid() is None
    # No SASL wired to a stopped Dovecot: smtpd would die without its backend.
    assert "no SASL backend" in output
    dovecot_config.start()  # the operator's choice
    assert served_leaf("imap", 993, "implicit") == leaf_of(certbot)


@pytest.fixture
def lineage(certbot: lab.Certbot, postfix_lab: lab.PostfixLab) -> Path:
    certbot.run("certonly", "-a", "standalone", "-d", NAME, *certbot.acme_args())
    return certbot.config_dir / "live" / NAME


def refused_install(certbot: lab.Certbot) -> str:
    before = configs()
    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME, check=False)
    assert proc.returncode != 0, proc.stdout
    assert configs() == before
    return proc.stdout + proc.stderr


def test_config_dovecot_rejects_is_refused(
    certbot: lab.Certbot, lineage: Path, dovecot_config: DovecotLab | None
) -> None:
    need("dovecot")
    with open("/etc/dovecot/conf.d/10-logging.conf", "a") as handle:
        handle.write("bogus_setting_from_a_typo = yes\n")
    message = refused_install(certbot)
    assert "bogus_setting_from_a_typo" in message and "dovecot" in message.lower()


def test_include_of_missing_file_is_refused(
    certbot: lab.Certbot, lineage: Path, dovecot_config: DovecotLab | None
) -> None:
    need("dovecot")
    with open("/etc/dovecot/dovecot.conf", "a") as handle:
        handle.write("!include /etc/dovecot/not-there.conf\n")
    message = refused_install(certbot)
    assert "dovecot.conf line" in message and "No matches" in message


def test_services_option_leaves_dovecot_alone(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "option handling is the plugin's own")
    before = lab.file_tree("/etc/dovecot")
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                "--postfix-tls-services", "postfix", *certbot.acme_args())
    assert lab.file_tree("/etc/dovecot") == before
    assert served_leaf("smtp", 25, "starttls") == leaf_of(certbot)
    assert served_leaf("imap", 993, "implicit") != leaf_of(certbot)
    bad = certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME,
                      "--postfix-tls-services", "dovecot", check=False)
    assert bad.returncode != 0 and "postfix or postfix,dovecot" in bad.stdout + bad.stderr
