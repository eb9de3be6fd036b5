"""``doctor`` (and ``verify``) on mail servers this plugin did not configure (issue #13).

Each test configures a real Postfix/Dovecot by hand, the way a how-to or an
administrator does, to show one problem, runs ``certbot-postfix-tls doctor --json``
and asserts the status, the named file/setting/port and the exact fix. The how-to
configuration (cert.pem, a copied submission entry whose SASL socket nobody
declared, a restart hook) must come out CRITICAL with every fix, and OK once
``certbot install --installer postfix-tls`` deployed and the restart hook is gone;
a deployment by the plugin is green, for root and for a monitoring user.

Lab note: Postfix stops a service whose smtpd died at start for
``service_throttle_time`` (60 s). Any connection to a submission port without its
SASL backend does that, doctor's included; the how-to test shortens it to 1 s so
that the install right after can verify 587 without waiting a minute.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import lab
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lab.dovecot import SNAKEOIL_CERT, SNAKEOIL_KEY, DovecotLab, cert_lines, installed_version

from certbot_postfix_tls._internal import dialogues, tls_client

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

NAME = lab.LAB_HOSTNAME
MAIN_CF = "/etc/postfix/main.cf"
SASL_SOCKET = "/var/spool/postfix/private/auth"
SSL_CONF = Path("/etc/dovecot/conf.d/10-ssl.conf")
DOVECOT_AUTH = f"""
service auth {{
  unix_listener {SASL_SOCKET} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""
# What how-tos copy into master.cf (Debian's commented template, abridged).
HOWTO_SUBMISSION = ("submission/inet=submission inet n - y - - smtpd"
                    " -o syslog_name=postfix/submission -o smtpd_tls_security_level=encrypt"
                    " -o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes")


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def certbot(pebble: lab.Pebble) -> Iterator[lab.Certbot]:
    """The newest certbot only (what doctor finds does not depend on certbot's version),
    with a config dir whose ancestors others can traverse, like /etc/letsencrypt."""
    base = Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-doctor-", dir="/var/tmp"))
    base.chmod(0o755)
    yield lab.Certbot(pebble, base)
    shutil.rmtree(base, ignore_errors=True)



def cli(config_dir: Path | str, *args: str, user: Optional[str] = None
        ) -> tuple[int, dict[str, Any]]:
    argv = [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(config_dir),
            *args, "--json"]
    if user:
        argv = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False,
                          cwd="/")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(proc.stdout + proc.stderr) from None
    return proc.returncode, report


def doctor(config_dir: Path | str, user: Optional[str] = None) -> tuple[int, dict[str, Any]]:
    return cli(config_dir, "doctor", user=user)


def named(report: dict[str, Any], name: str) -> list[dict[str, str]]:
    return [c for c in report["checks"] if c["name"] == name]


def only(report: dict[str, Any], name: str, status: str) -> str:
    """The message of the one check called ``name``, which must have ``status``."""
    found = named(report, name)
    assert [c["status"] for c in found] == [status], found
    return found[0]["message"]


def problems(report: dict[str, Any]) -> list[str]:
    return [f"{c['status']} {c['name']}: {c['message']}" for c in report["checks"]
            if c["status"] != "OK"]


def issue(certbot: lab.Certbot, name: str = NAME) -> Path:
    certbot.run("certonly", "-a", "standalone", "-d", name, *certbot.acme_args())
    return certbot.config_dir / "live" / name


def reload_postfix() -> None:
    lab.process.run(["postfix", "reload"], what="postfix reload")


def postfix_certificate(postfix_lab: lab.PostfixLab, cert: str | Path, key: str | Path,
                        *extra: str) -> None:
    postfix_lab.postconf("-e", f"smtpd_tls_cert_file={cert}", f"smtpd_tls_key_file={key}",
                         *extra)


def dovecot_certificate(dovecot_config: DovecotLab, cert: str | Path, key: str | Path,
                        extra: str = "", local: str = "") -> None:
    """Debian's stock Dovecot with 10-ssl.conf edited as a how-to says, then started.
    ``extra`` goes to the end of 10-master.conf, ``local`` into local.conf (read last)."""
    dovecot_config.install_config(snakeoil=False)
    text = SSL_CONF.read_text()
    for stock, own in zip(cert_lines(SNAKEOIL_CERT, SNAKEOIL_KEY), cert_lines(str(cert), str(key))):
        text = text.replace(stock, own)
    SSL_CONF.write_text(text)
    if extra:
        with open("/etc/dovecot/conf.d/10-master.conf", "a") as handle:
            handle.write(extra)
    if local:
        Path("/etc/dovecot/local.conf").write_text(local)
    dovecot_config.start()


def self_signed(directory: Path, name: str, days: float,
                usages: tuple[x509.ObjectIdentifier, ...] = (),
                lifetime: Optional[float] = None) -> tuple[Path, Path]:
    """A certificate (expiring in ``days``, negative: expired; valid for ``lifetime``
    days in all, else from 90 days ago) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (lab.as_issued(x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                             .public_key(key.public_key())
                             .serial_number(x509.random_serial_number())
                             .not_valid_before(now - datetime.timedelta(
                                 days=90 if lifetime is None else lifetime - days))
                             .not_valid_after(now + datetime.timedelta(days=days)),
                             key.public_key(), key.public_key(), ca=False)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),
                              critical=False))
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


# --- the how-to configuration ------------------------------------------------------------


def test_howto_configuration_then_install(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_config: Optional[DovecotLab],
) -> None:
    assert dovecot_config is not None, "Dovecot is not installed"
    live = issue(certbot)
    config_dir = certbot.config_dir
    # The classic slip: cert.pem (no intermediate) instead of fullchain.pem; the
    # submission entry copied from a how-to, SASL through Dovecot's socket, whose
    # listener in 10-master.conf was never uncommented; a restart deploy hook.
    postfix_certificate(postfix_lab, live / "cert.pem", live / "privkey.pem",
                        "smtpd_sasl_type=dovecot", "smtpd_sasl_path=private/auth",
                        "service_throttle_time=1s")
    postfix_lab.postconf("-M", HOWTO_SUBMISSION)
    reload_postfix()
    dovecot_certificate(dovecot_config, live / "fullchain.pem", live / "privkey.pem")
    hook = config_dir / "renewal-hooks" / "deploy" / "restart-mail.sh"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\nsystemctl restart postfix; systemctl restart dovecot\n")
    hook.chmod(0o755)

    code, report = doctor(config_dir)
    print("\n".join(problems(report)))
    assert code == 2, problems(report)
    assert "not deployed by postfix-tls" in only(report, "deployed", "OK")
    chain = only(report, "chain", "CRITICAL")
    assert chain.startswith(f"smtpd_tls_cert_file = {live}/cert.pem in {MAIN_CF} holds the "
                            "certificate without its intermediate"), chain
    assert "port 25 (postfix smtp)" in chain
    assert (f"fix: postconf -e smtpd_tls_cert_file={live}/fullchain.pem, then postfix reload"
            in chain), chain
    sasl = only(report, "sasl-backend", "CRITICAL")
    assert sasl.startswith("master.cf service submission/inet (port 587) enables SASL "
                           "(smtpd_sasl_type=dovecot, smtpd_sasl_path=private/auth), but "
                           f"Dovecot's auth socket {SASL_SOCKET} does not exist"), sasl
    assert "no SASL authentication mechanisms" in sasl
    assert f"unix_listener {SASL_SOCKET}" in sasl and "doveadm reload" in sasl
    restart = only(report, "restart-hook", "WARNING")
    assert restart.startswith(f"{hook} runs `systemctl restart postfix` and `systemctl "
                              "restart dovecot`: every renewal then refuses connections"), restart
    assert ("fix: replace `systemctl restart postfix` by `postfix reload`, replace `systemctl "
            f"restart dovecot` by `doveadm reload` in {hook}") in restart
    assert f"certbot install --installer postfix-tls --cert-name {NAME}" in chain

    # A monitoring user sees the same chain (by the served certificate and the setting's
    # value) and is told which checks need root.
    code, as_nobody = doctor(config_dir, user="nobody")
    assert code == 2, problems(as_nobody)
    assert only(as_nobody, "chain", "CRITICAL") == chain
    assert only(as_nobody, "sasl-backend", "OK").startswith("skipped: ")
    assert only(as_nobody, "certificate-files", "OK").startswith("skipped: ")

    code, verified = cli(config_dir, "verify")
    assert code == 2
    port25 = [e for e in verified["endpoints"] if e["port"] == 25]
    assert port25 and port25[0]["chain_complete"] is False

    certbot.run("install", "--installer", "postfix-tls", "--cert-name", NAME)
    code, report = doctor(config_dir)
    print("\n".join(problems(report)))
    assert [c["name"] for c in report["checks"] if c["status"] != "OK"] == ["restart-hook"]
    assert f"fix: rm {hook}" in only(report, "restart-hook", "WARNING")
    hook.unlink()
    code, report = doctor(config_dir)
    assert code == 0, problems(report)


def test_plugin_deployment_is_green_for_root_and_monitoring(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME, *certbot.acme_args())
    code, report = doctor(certbot.config_dir)
    assert code == 0, problems(report)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    for name in ("deployed", "chain", "certificate-files", "stale-certificate", "expiry",
                 "tls-protocols", "submission-tls", "submission-auth", "sasl-backend",
                 "port25-plaintext", "outbound-tls", "restart-hook", "renewal-hooks",
                 "key-exposure", f"key-permissions {NAME}"):
        assert statuses.get(name) == "OK", (name, report["checks"])
    assert {(e["port"], e["sni"]) for e in report["endpoints"]} >= {
        (25, None), (25, NAME), (587, NAME), (993, NAME)}

    # A monitoring user: same verdict; what needs root is named as skipped, with why.
    code, as_nobody = doctor(certbot.config_dir, user="nobody")
    assert code == 0, problems(as_nobody)
    skipped = {c["name"]: c["message"] for c in as_nobody["checks"]
               if c["message"].startswith("skipped: ")}
    assert {"certificate-files", "postfix-running"} <= set(skipped), as_nobody["checks"]
    assert "root" in skipped["certificate-files"]


# --- one configuration per check ---------------------------------------------------------


def test_incomplete_chain_names_the_setting_and_its_fix(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_config: Optional[DovecotLab],
) -> None:
    assert dovecot_config is not None, "Dovecot is not installed"
    live = issue(certbot)
    postfix_certificate(postfix_lab, live / "fullchain.pem", live / "privkey.pem")
    # Only submission overrides the certificate, with the leaf alone.
    postfix_lab.postconf("-M", "submission/inet=submission inet n - y - - smtpd -o "
                         f"smtpd_tls_security_level=encrypt -o smtpd_tls_cert_file={live}/cert.pem")
    reload_postfix()
    dovecot_certificate(dovecot_config, live / "cert.pem", live / "privkey.pem")

    code, report = doctor(certbot.config_dir)
    assert code == 2
    postfix_chain, dovecot_chain = sorted((c["message"] for c in named(report, "chain")),
                                          key=lambda m: not m.startswith("-o"))
    assert postfix_chain.startswith(f"-o smtpd_tls_cert_file={live}/cert.pem on master.cf "
                                    "service submission/inet holds the certificate without its "
                                    "intermediate"), postfix_chain
    assert "verify what port 587 (postfix submission) serves" in postfix_chain
    assert (f"fix: postconf -P submission/inet/smtpd_tls_cert_file={live}/fullchain.pem, then "
            "postfix reload") in postfix_chain
    cert_only = cert_lines(f"{live}/cert.pem", "")[0]
    line = SSL_CONF.read_text().splitlines().index(cert_only) + 1
    assert dovecot_chain.startswith(f"{cert_only} in {SSL_CONF} line {line} "
                                    "holds the certificate without its intermediate"), dovecot_chain
    assert "ports 143 (dovecot imap), 993 (dovecot imaps)" in dovecot_chain
    full = cert_lines(f"{live}/fullchain.pem", "")[0]
    assert (f"fix: set `{full}` in {SSL_CONF} line {line}, then "
            "doveadm reload") in dovecot_chain
    assert all(c["status"] == "OK" for c in named(report, "certificate-files"))


def test_missing_and_mismatched_keys_with_the_daemons_reasons(
    tmp_path: Path, certbot: lab.Certbot,
    postfix_lab: lab.PostfixLab, dovecot_config: Optional[DovecotLab],
) -> None:
    assert dovecot_config is not None, "Dovecot is not installed"
    live = issue(certbot)
    postfix_certificate(postfix_lab, live / "fullchain.pem", "/etc/postfix/mail.key")
    reload_postfix()
    _, other_key = self_signed(tmp_path, "other.example.org", 30)
    dovecot_certificate(dovecot_config, live / "fullchain.pem", other_key)

    code, report = doctor(certbot.config_dir)
    assert code == 2
    found = sorted(c["message"] for c in named(report, "certificate-files"))
    assert [c["status"] for c in named(report, "certificate-files")] == ["CRITICAL"] * 2, found
    postfix_files, dovecot_files = found
    assert postfix_files.startswith(f"smtpd_tls_key_file = /etc/postfix/mail.key in {MAIN_CF}: "
                                    "/etc/postfix/mail.key does not exist; port 25 (postfix "
                                    "smtp): answered STARTTLS with '454 4.7.0 TLS not available "
                                    "due to local problem'"), postfix_files
    assert "Postfix's log says: cannot get" in postfix_files and "/etc/postfix/mail.key" \
        in postfix_files
    assert (f"fix: postconf -e smtpd_tls_cert_file={live}/fullchain.pem "
            f"smtpd_tls_key_file={live}/privkey.pem, then postfix reload") in postfix_files
    served_cert, served_key = cert_lines(f"{live}/fullchain.pem", str(other_key))
    assert dovecot_files.startswith(f"{served_cert} in {SSL_CONF} line "), dovecot_files
    assert (f"and {served_key} in {SSL_CONF} line ") in dovecot_files
    assert ": the private key does not match the certificate;" in dovecot_files
    says = ("Failed to initialize SSL connection: Couldn't initialize SSL server context: "
            "Can't load SSL private key (ssl_server_key_file setting): Key file is for a "
            "different certificate file" if installed_version() >= (2, 4) else
            "Failed to initialize SSL server context: Can't load SSL private key (ssl_key "
            "setting): Key is for a different cert than ssl_cert")
    assert f"Dovecot's log says: {says}; fix: " in dovecot_files
    fix_cert, fix_key = cert_lines(f"{live}/fullchain.pem", f"{live}/privkey.pem")
    assert (f"fix: set `{fix_cert}` and `{fix_key}` "
            f"in {SSL_CONF}, then doveadm reload") in dovecot_files


def test_submission_without_mandatory_tls_offers_auth_in_clear(
    tmp_path: Path, postfix_lab: lab.PostfixLab, dovecot_config: Optional[DovecotLab],
) -> None:
    assert dovecot_config is not None, "Dovecot is not installed"
    cert, key = self_signed(tmp_path, NAME, 60)
    dovecot_certificate(dovecot_config, cert, key, extra=DOVECOT_AUTH)  # a working backend
    postfix_certificate(postfix_lab, cert, key)
    postfix_lab.postconf("-M", "submission/inet=submission inet n - y - - smtpd -o "
                         "smtpd_tls_security_level=may -o smtpd_sasl_auth_enable=yes -o "
                         "smtpd_sasl_type=dovecot -o smtpd_sasl_path=private/auth")
    reload_postfix()

    code, report = doctor(tmp_path)
    assert code == 2
    tls = only(report, "submission-tls", "CRITICAL")
    assert tls.startswith("master.cf service submission/inet (port 587) runs with "
                          "smtpd_tls_security_level=may"), tls
    assert "port 587 (postfix submission) accepted MAIL FROM before STARTTLS (250 " in tls
    assert tls.endswith("fix: postconf -P submission/inet/smtpd_tls_security_level=encrypt, "
                        "then postfix reload")
    # Advice: submission-tls is the failure on 587.
    auth = only(report, "submission-auth", "WARNING")
    assert auth.startswith("port 587 (postfix submission) offers AUTH before STARTTLS "
                           f"(smtpd_tls_auth_only = no in {MAIN_CF})"), auth
    assert auth.endswith("fix: postconf -P submission/inet/smtpd_tls_auth_only=yes, then "
                         "postfix reload")
    assert only(report, "sasl-backend", "OK")

    # ISPConfig's and Modoboa's stock main.cf: SASL on globally, smtpd_tls_auth_only = no,
    # so 25 offers AUTH before STARTTLS. Every client works: advice, not an alarm.
    postfix_lab.postconf("-e", "smtpd_sasl_auth_enable=yes", "smtpd_sasl_type=dovecot",
                         "smtpd_sasl_path=private/auth", "smtpd_tls_auth_only=no")
    postfix_lab.postconf("-P", "submission/inet/smtpd_tls_security_level=encrypt")
    reload_postfix()
    code, report = doctor(tmp_path)
    assert code == 1, problems(report)
    [auth] = [c["message"] for c in named(report, "submission-auth") if c["status"] != "OK"]
    assert auth.startswith("port 25 (postfix smtp) offers AUTH before STARTTLS "
                           f"(smtpd_tls_auth_only = no in {MAIN_CF})"), auth
    assert "fix: postconf -P smtp/inet/smtpd_tls_auth_only=yes" in auth
    postfix_lab.postconf("-X", "smtpd_sasl_auth_enable", "smtpd_sasl_type", "smtpd_sasl_path",
                         "smtpd_tls_auth_only")

    # Without any submission service: mail clients have nowhere to submit.
    postfix_lab.postconf("-MX", "submission/inet")
    reload_postfix()
    code, report = doctor(tmp_path)
    missing = only(report, "submission-service", "WARNING")
    assert "has no service on port 587" in missing
    assert ("fix: certbot install --installer postfix-tls --cert-name NAME (adds it with "
            "mandatory TLS), or postconf -M 'submission/inet=submission inet n - y - - smtpd' "
            "&& postconf -P submission/inet/smtpd_tls_security_level=encrypt") in missing


def test_cyrus_sasl_without_a_password_source(
    tmp_path: Path, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab,
) -> None:
    cert, key = self_signed(tmp_path, NAME, 60)
    postfix_certificate(postfix_lab, cert, key)
    # smtpd_sasl_type defaults to cyrus; nobody wrote /etc/postfix/sasl/smtpd.conf.
    postfix_lab.postconf("-M", "submission/inet=submission inet n - y - - smtpd -o "
                         "smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes -o "
                         "smtpd_tls_auth_only=yes")
    reload_postfix()
    code, report = doctor(tmp_path)
    assert code == 2
    sasl = only(report, "sasl-backend", "CRITICAL")
    assert sasl.startswith("master.cf service submission/inet (port 587) enables SASL "
                           "(smtpd_sasl_type=cyrus, smtpd_sasl_path=smtpd), but Cyrus SASL has "
                           "no smtpd.conf in /etc/postfix/sasl"), sasl
    assert "advertises AUTH that nobody can use" in sasl
    assert ("fix: postconf -e smtpd_sasl_type=dovecot smtpd_sasl_path=private/auth, then "
            "certbot install --installer postfix-tls") in sasl


def test_renewed_but_never_loaded(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
) -> None:
    live = issue(certbot)
    postfix_certificate(postfix_lab, live / "fullchain.pem", live / "privkey.pem")
    reload_postfix()
    # An smtpd process loads the certificate and stays (max_idle) for the next client.
    endpoint = tls_client.Endpoint("postfix", "smtp", "127.0.0.1", 25, "starttls", "smtp")
    old = dialogues.handshake(endpoint, None).leaf_der
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())

    code, report = doctor(certbot.config_dir)
    stale = only(report, "stale-certificate", "CRITICAL")
    assert stale.startswith("port 25 (postfix smtp) serves a certificate that expires "), stale
    assert f"older than the newest of its lineage ({live}/cert.pem, expires " in stale
    assert stale.endswith("fix: postfix reload (the configured file already holds the newest)")
    assert len(re.findall(r"expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", stale)) == 2
    assert dialogues.handshake(endpoint, None).leaf_der == old  # still the old process

    reload_postfix()
    code, report = doctor(certbot.config_dir)
    assert only(report, "stale-certificate", "OK")


def test_restart_hooks_and_skipped_hooks(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
) -> None:
    issue(certbot)
    hooks_dir = certbot.config_dir / "renewal-hooks"
    restart = hooks_dir / "deploy" / "10-mail"
    restart.write_text("#!/bin/bash\nset -e\nsudo systemctl restart postfix.service && "
                       "echo restarted\n")
    restart.chmod(0o755)
    skipped = hooks_dir / "post" / "notify"
    skipped.write_text("#!/bin/sh\necho renewed | mail -s renewed root\n")
    skipped.chmod(0o644)
    conf = certbot.config_dir / "renewal" / f"{NAME}.conf"
    with open(conf, "a") as handle:  # [renewalparams] is the last section
        handle.write("renew_hook = service dovecot restart\n")

    code, report = doctor(certbot.config_dir)
    assert code == 2
    first, second = (c["message"] for c in named(report, "restart-hook"))
    assert first.startswith(f"{restart} runs `sudo systemctl restart postfix.service`: every "
                            "renewal then refuses connections"), first
    assert ("fix: replace `sudo systemctl restart postfix.service` by `postfix reload` in "
            f"{restart}") in first
    assert second.startswith(f"{conf} has `renew_hook = service dovecot restart`"), second
    assert second.endswith(f"fix: set `renew_hook = doveadm reload` in {conf}")
    assert only(report, "renewal-hook-skipped", "CRITICAL") == (
        f"{skipped} is not executable, so certbot skips it at every renewal; fix: chmod 755 "
        f"{skipped} (or delete it if it is not needed)")


def test_protocols_that_exclude_tls12_and_tls13(
    tmp_path: Path, postfix_lab: lab.PostfixLab, dovecot_config: Optional[DovecotLab],
) -> None:
    assert dovecot_config is not None, "Dovecot is not installed"
    cert, key = self_signed(tmp_path, NAME, 60)
    postfix_certificate(postfix_lab, cert, key, "smtpd_tls_protocols=!SSLv2, !SSLv3, !TLSv1.2, "
                        "!TLSv1.3")
    postfix_lab.postconf("-M", "submission/inet=submission inet n - y - - smtpd -o "
                         "smtpd_tls_security_level=encrypt -o "
                         "smtpd_tls_mandatory_protocols=>=TLSv1.3")
    reload_postfix()
    # In local.conf: 2.4's stock 10-ssl.conf sets ssl_min_protocol itself, after 10-master.conf.
    dovecot_certificate(dovecot_config, cert, key, local="ssl_min_protocol = TLSv1.3\n")

    code, report = doctor(tmp_path)
    assert code == 2
    found = {c["message"].split(":")[0]: c for c in named(report, "tls-protocols")}
    port25 = found["port 25 (postfix smtp)"]
    assert port25["status"] == "CRITICAL"
    assert port25["message"] == (
        "port 25 (postfix smtp): TLS 1.2 and TLS 1.3 handshakes fail; only TLS 1.0/1.1 works, "
        "which current clients refuse: decided by "
        f"smtpd_tls_protocols = !SSLv2, !SSLv3, !TLSv1.2, !TLSv1.3 in {MAIN_CF} (it enables "
        "TLSv1, TLSv1.1); fix: postconf -e 'smtpd_tls_protocols=>=TLSv1.2', then postfix reload")
    port587 = found["port 587 (postfix submission)"]
    assert port587["status"] == "WARNING"
    assert "only TLS 1.3 works" in port587["message"]
    assert ("decided by -o smtpd_tls_mandatory_protocols=>=TLSv1.3 on master.cf service "
            "submission/inet; fix: postconf -P "
            "'submission/inet/smtpd_tls_mandatory_protocols=>=TLSv1.2', then postfix reload"
            ) in port587["message"]
    imap = [c for key_, c in found.items() if key_.startswith("ports 143 (dovecot imap)")]
    assert [c["status"] for c in imap] == ["WARNING"], found
    assert "decided by ssl_min_protocol = TLSv1.3" in imap[0]["message"]


def test_outbound_tls_and_a_client_certificate_without_client_auth(
    tmp_path: Path, postfix_lab: lab.PostfixLab,
) -> None:
    cert, key = self_signed(tmp_path, NAME, 60)
    # As Let's Encrypt issues since its default profile dropped clientAuth.
    client_cert, client_key = self_signed(tmp_path, "client.example.org", 60,
                                          usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    postfix_certificate(postfix_lab, cert, key, "smtp_tls_security_level=encrypt",
                        f"smtp_tls_cert_file={client_cert}", f"smtp_tls_key_file={client_key}")
    reload_postfix()
    code, report = doctor(tmp_path)
    outbound = only(report, "outbound-tls", "WARNING")
    assert outbound.startswith(f"smtp_tls_security_level = encrypt in {MAIN_CF}: mail to "
                               "domains whose servers do not offer TLS is deferred"), outbound
    assert "fix: postconf -e smtp_tls_security_level=may" in outbound
    client = only(report, "client-certificate", "WARNING")
    assert client.startswith(f"smtp_tls_cert_file = {client_cert} in {MAIN_CF}: "), client
    assert "lacks clientAuth" in client
    assert "fix: postconf -e smtp_tls_cert_file= smtp_tls_key_file= " in client

    postfix_lab.postconf("-X", "smtp_tls_security_level")  # Postfix's default: none
    code, report = doctor(tmp_path)
    outbound = only(report, "outbound-tls", "WARNING")
    assert outbound.startswith(f"smtp_tls_security_level unset in {MAIN_CF} (so: none): "
                               "Postfix sends outgoing mail in clear"), outbound
    assert outbound.endswith("fix: postconf -e smtp_tls_security_level=may, then postfix reload")


def test_expiring_and_expired_certificates_on_any_port(
    tmp_path: Path, postfix_lab: lab.PostfixLab, dovecot_config: Optional[DovecotLab],
) -> None:
    assert dovecot_config is not None, "Dovecot is not installed"
    soon, soon_key = self_signed(tmp_path, NAME, 5)
    expired, expired_key = self_signed(tmp_path, "imap.example.org", -3)
    postfix_certificate(postfix_lab, soon, soon_key)
    reload_postfix()
    dovecot_certificate(dovecot_config, expired, expired_key)

    code, report = doctor(tmp_path)
    assert code == 2
    found = {c["status"]: c["message"] for c in named(report, "expiry")}
    assert set(found) == {"WARNING", "CRITICAL"}, found
    assert found["WARNING"].startswith("port 25 (postfix smtp) serves a certificate for "
                                       f"CN={NAME}"), found
    # 95 days of lifetime, 4 days left: past the 14-day warning, before the 3-day critical.
    assert "(expires in 4 day(s): certbot should have renewed it at " in found["WARNING"]
    assert "; fix: put a current certificate in " f"{soon}, then postfix reload" \
        in found["WARNING"]
    assert found["CRITICAL"].startswith("ports 143 (dovecot imap), 993 (dovecot imaps)")
    assert "(expired 3 day(s) ago); fix: put a current certificate in " f"{expired}, then " \
        "doveadm reload" in found["CRITICAL"]

    code, verified = cli(tmp_path, "verify")
    assert code == 2
    assert {e["port"]: e["status"] for e in verified["endpoints"]}[25] == "WARNING"


def test_shortlived_certificates_judged_by_their_lifetime(
    tmp_path: Path, postfix_lab: lab.PostfixLab,
) -> None:
    """160-hour certificates: fresh is OK (a fixed 14 days would warn forever), WARNING
    once certbot's renewal point (80 hours left) is long past, CRITICAL when expired."""
    hours = 160 / 24
    for name, left, status in (("fresh", 150 / 24, "OK"), ("overdue", 20 / 24, "WARNING"),
                               ("expired", -10 / 24, "CRITICAL")):
        cert, key = self_signed(tmp_path / name, NAME, left, lifetime=hours)
        postfix_certificate(postfix_lab, cert, key)
        reload_postfix()
        _, report = doctor(tmp_path)
        found = named(report, "expiry")
        assert [c["status"] for c in found] == [status], found
        if status == "WARNING":
            assert "(expires in 19 hour(s): certbot should have renewed it at " in (
                found[0]["message"]), found
        _, verified = cli(tmp_path, "verify")
        assert {e["port"]: e["status"] for e in verified["endpoints"]}[25] == status, verified


def test_port_25_requiring_tls(tmp_path: Path, postfix_lab: lab.PostfixLab) -> None:
    cert, key = self_signed(tmp_path, NAME, 60)
    postfix_certificate(postfix_lab, cert, key, "smtpd_tls_security_level=encrypt")
    reload_postfix()
    code, report = doctor(tmp_path)
    port25 = only(report, "port25-plaintext", "WARNING")
    assert port25.startswith("port 25 (master.cf service smtp/inet) requires TLS "
                             f"(smtpd_tls_security_level = encrypt in {MAIN_CF}); MAIL FROM "
                             "before STARTTLS was answered 530 "), port25
    assert "fix: postconf -e smtpd_tls_security_level=may" in port25

    # Another instance named explicitly: a wrong path is UNKNOWN, in one sentence.
    code, report = cli(tmp_path, "doctor", "--postfix-dir", "/etc/postfix",
                       "--dovecot-config", "/etc/dovecot/missing.conf")
    assert only(report, "dovecot", "UNKNOWN").startswith("/etc/dovecot/missing.conf does not exist")
    assert only(report, "port25-plaintext", "WARNING")
