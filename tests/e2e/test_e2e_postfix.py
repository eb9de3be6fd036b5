"""End to end, as a user runs it: real certbot, real Pebble, real Postfix on loopback.

Every test here runs once per certbot flavour (newest from PyPI, and the distribution's
python3-certbot when installed: 2.1 on Debian 12, 4.0 on Debian 13) inside the lab namespace.
"""

from __future__ import annotations

import os
import shutil
import smtplib
from pathlib import Path

import lab
import pytest

from certbot_postfix_tls._internal import certs, dialogues, tls_client

NAME = lab.LAB_HOSTNAME


def files(postfix_lab: lab.PostfixLab) -> dict[str, bytes]:
    return {
        name: Path(postfix_lab.config_dir, name).read_bytes() for name in ("main.cf", "master.cf")
    }


def served(port: int, tls: str = "starttls", sni: str | None = NAME) -> dialogues.Handshake:
    endpoint = tls_client.Endpoint("postfix", "smtp", "127.0.0.1", port, tls, str(port))
    return dialogues.handshake(endpoint, sni)


def lineage_chain(certbot: lab.Certbot, name: str = NAME) -> list[bytes]:
    pem = (certbot.config_dir / "live" / name / "fullchain.pem").read_bytes()
    return [c.public_bytes(certs.serialization.Encoding.DER) for c in certs.load_pem_chain(pem)]


def issue_and_install(certbot: lab.Certbot, *extra: str, name: str = NAME) -> str:
    proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name,
                       *certbot.acme_args(), *extra)
    return proc.stdout + proc.stderr


def test_run_deploys_verifies_and_rolls_back(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    # A listener on a non-standard port must be found from master.cf, not assumed.
    postfix_lab.postconf("-M", "2525/inet=2525 inet n - y - - smtpd")
    lab.process.run(["postfix", "reload"], what="reload")
    before = files(postfix_lab)
    master_pid = postfix_lab.master_pid()

    output = issue_and_install(certbot)
    assert "smtpd_tls_chain_files" in output  # shows exactly what changed
    assert "no SASL backend" in output  # and warns that nobody can submit yet

    chain = lineage_chain(certbot)
    for port in (25, 587, 2525):
        handshake = served(port)
        assert handshake.leaf_der == chain[0], port
        # The intermediate is served too (never the leaf alone).
        assert chain[1] in handshake.chain_der[1:], port
    assert postfix_lab.master_pid() == master_pid  # reloaded, never restarted

    # 587: no AUTH and no mail before STARTTLS; 25 still accepts plaintext mail.
    with smtplib.SMTP("127.0.0.1", 587, timeout=10) as client:
        client.ehlo("client.example")
        assert not client.has_extn("auth")
        assert client.has_extn("starttls")
        code, _ = client.mail("someone@example.org")
        assert code == 530
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as client:
        client.ehlo("client.example")
        assert client.mail("someone@example.org")[0] == 250

    # The chain file Postfix reads holds key + chain and nobody else can read it.
    chain_file = certbot.config_dir / "postfix-tls" / "lineages" / NAME / "key-fullchain.pem"
    assert os.stat(chain_file).st_mode & 0o077 == 0

    rollback = certbot.run("rollback", "--installer", "postfix-tls")
    assert rollback.returncode == 0
    assert files(postfix_lab) == before  # byte for byte
    assert not chain_file.exists()
    assert postfix_lab.master_pid() == master_pid


def test_second_deploy_is_idempotent(certbot: lab.Certbot, postfix_lab: lab.PostfixLab) -> None:
    issue_and_install(certbot)
    after_first = files(postfix_lab)
    certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME)
    assert files(postfix_lab) == after_first
    master = lab.process.run(["postconf", "-M"], what="postconf").stdout
    assert sum(line.startswith("submission ") for line in master.splitlines()) == 1


def test_stopped_postfix_is_configured_not_started(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    postfix_lab.stop()
    output = issue_and_install(certbot)
    assert "is not running" in output
    assert not postfix_lab.running()
    main_cf = (Path(postfix_lab.config_dir) / "main.cf").read_text()
    assert "smtpd_tls_chain_files" in main_cf


@pytest.fixture
def lineage(certbot: lab.Certbot, postfix_lab: lab.PostfixLab) -> Path:
    """An issued lineage that is not installed yet."""
    certbot.run("certonly", "-a", "standalone", "-d", NAME, *certbot.acme_args())
    return certbot.config_dir / "live" / NAME


def refused(certbot: lab.Certbot, postfix_lab: lab.PostfixLab, *args: str) -> str:
    """Run an install that must fail, and prove the configuration is byte-identical."""
    before = files(postfix_lab)
    proc = certbot.run("install", "-i", "postfix-tls", *args, check=False)
    assert proc.returncode != 0, proc.stdout
    assert files(postfix_lab) == before
    return proc.stdout + proc.stderr


def test_mismatched_key_is_refused(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, lineage: Path, tmp_path: Path
) -> None:
    certbot.run("certonly", "-a", "standalone", "-d", "other.example.org", *certbot.acme_args())
    other_key = certbot.config_dir / "live" / "other.example.org" / "privkey.pem"
    message = refused(certbot, postfix_lab, "-d", NAME,
                      "--cert-path", str(lineage / "cert.pem"),
                      "--key-path", str(other_key),
                      "--fullchain-path", str(lineage / "fullchain.pem"))
    assert "does not match the certificate" in message


def test_missing_and_unreadable_files_are_refused(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, lineage: Path, tmp_path: Path
) -> None:
    message = refused(certbot, postfix_lab, "-d", NAME,
                      "--cert-path", str(lineage / "cert.pem"),
                      "--key-path", str(tmp_path / "missing.pem"),
                      "--fullchain-path", str(lineage / "fullchain.pem"))
    assert "does not exist" in message or "missing.pem" in message
    unreadable = tmp_path / "dir-not-a-key.pem"
    unreadable.mkdir()
    message = refused(certbot, postfix_lab, "-d", NAME,
                      "--cert-path", str(lineage / "cert.pem"),
                      "--key-path", str(unreadable),
                      "--fullchain-path", str(lineage / "fullchain.pem"))
    assert "cannot be read" in message or "dir-not-a-key.pem" in message


def test_broken_main_cf_is_refused(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, lineage: Path
) -> None:
    with open(Path(postfix_lab.config_dir) / "main.cf", "a") as handle:
        handle.write("smtpd_tls_loglevel\n")
    message = refused(certbot, postfix_lab, "--cert-name", NAME)
    assert "main.cf, line" in message


def test_wrong_postfix_dir_is_refused(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, lineage: Path, tmp_path: Path
) -> None:
    message = refused(certbot, postfix_lab, "--cert-name", NAME,
                      "--postfix-tls-postfix-dir", str(tmp_path / "nowhere"))
    assert "nowhere/main.cf does not exist" in message


def test_failed_postfix_check_rolls_back(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, lineage: Path, tmp_path: Path
) -> None:
    # Stand in for the process boundary only: a `postfix` that fails `check` once
    # main.cf carries our change (nothing real makes postfix check fail on TLS edits).
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "postfix"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$3" = check ] && grep -q "^smtpd_tls_chain_files" "$2/main.cf"; then\n'
        '  echo "postfix: fatal: simulated check failure" >&2; exit 1\n'
        "fi\n"
        'exec /usr/sbin/postfix "$@"\n'
    )
    fake.chmod(0o755)
    before = files(postfix_lab)
    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME, check=False,
                       env={"PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert proc.returncode != 0
    assert "simulated check failure" in proc.stdout + proc.stderr
    assert files(postfix_lab) == before
    chain_file = certbot.config_dir / "postfix-tls" / "lineages" / NAME / "key-fullchain.pem"
    assert not chain_file.exists()


def test_non_default_instance(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, lineage: Path, tmp_path: Path
) -> None:
    """--postfix-tls-postfix-dir configures another instance (postconf -c) only."""
    second = Path("/etc/postfix-out")
    second.mkdir(exist_ok=True)
    main_cf, master_cf = lab.debian_stock_config()
    (second / "main.cf").write_text(
        main_cf
        + "queue_directory = /var/spool/postfix-out\ndata_directory = /var/lib/postfix-out\n"
    )
    (second / "master.cf").write_text(master_cf)
    postfix_lab.postconf("-e", f"alternate_config_directories = {second}")
    for state_dir in ("/var/spool/postfix-out", "/var/lib/postfix-out"):
        os.makedirs(state_dir, exist_ok=True)
        shutil.chown(state_dir, "postfix", "postfix")
    default_before = files(postfix_lab)
    default_pid = postfix_lab.master_pid()
    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME,
                       "--postfix-tls-postfix-dir", str(second))
    assert "is not running" in proc.stdout + proc.stderr  # that instance is stopped
    assert files(postfix_lab) == default_before
    assert "smtpd_tls_chain_files" in (second / "main.cf").read_text()
    assert "submission" in (second / "master.cf").read_text()
    assert postfix_lab.master_pid() == default_pid


def test_verification_failure_rolls_back(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, tmp_path: Path
) -> None:
    """An operator override makes one port serve another certificate: the deploy
    is rolled back and the message says which port served what."""
    from lab.dovecot import write_self_signed

    cert, key = tmp_path / "other.pem", tmp_path / "other.key"
    write_self_signed(str(cert), str(key), name="stale.example.net")
    combined = tmp_path / "other-chain.pem"
    combined.write_bytes(key.read_bytes() + cert.read_bytes())
    combined.chmod(0o600)
    postfix_lab.postconf(
        "-M", f"2526/inet=2526 inet n - y - - smtpd -o smtpd_tls_chain_files={combined}"
    )
    lab.process.run(["postfix", "reload"], what="reload")
    before = files(postfix_lab)
    proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                       *certbot.acme_args(), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "127.0.0.1:2526" in output and "stale.example.net" in output
    assert "successfully restored" in output
    assert files(postfix_lab) == before
