"""What an independent TLS scanner sees after a deploy on Debian's stock configuration.

The judge is ``openssl s_client``, driven the way a scanner (sslyze, testssl.sh) probes:
TLS 1.0 and 1.1 pinned, anonymous suites only, RSA-only and ECDSA-only clients, the
chain as received. After ``certbot install`` with ``--postfix-tls-smtps yes``: 587 and
465 refuse TLS 1.0/1.1 and anonymous suites, port 25 stays opportunistic, every port
serves the lineage's leaf with its chain in order to both kinds of client. Then the two
faults a scanner finds and ``verify`` must too: a chain sent out of order on Dovecot's
ports, and an RSA certificate left as Dovecot's ``ssl_alt_cert`` beside the ECDSA
lineage (and in Postfix's ``smtpd_tls_chain_files`` where Postfix imposes its own order).
``undeploy`` puts master.cf back byte for byte.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab
from lab.flows import HOST, OTHER, issue, run_cli

from certbot_postfix_tls._internal import certs

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

ECDSA, RSA = "scan-ecdsa", "scan-rsa"
# port -> s_client's -starttls protocol (None: implicit TLS)
PORTS = {25: "smtp", 587: "smtp", 465: None, 143: "imap", 993: None, 110: "pop3", 995: None}
SUBMISSION = (587, 465)
SIGALGS = {"ecdsa": "ECDSA+SHA256:ECDSA+SHA384", "rsa": "RSA-PSS+SHA256:RSA+SHA256"}
PLUGIN_DOVECOT = Path("/etc/dovecot/conf.d/99-certbot-postfix-tls.conf")
SSL_CONF = Path("/etc/dovecot/conf.d/10-ssl.conf")
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def s_client(port: int, *options: str, sni: bool = True, other: bool = False,
             ) -> subprocess.CompletedProcess[str]:
    name = ["-servername", OTHER if other else HOST] if sni else ["-noservername"]
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts", *name,
            *options]
    if PORTS[port]:
        argv += ["-starttls", str(PORTS[port])]
    return subprocess.run(argv, input="", capture_output=True, text=True, timeout=30,
                          check=False)


def handshake_completes(port: int, *options: str) -> bool:
    """Whether the handshake finished (s_client prints the negotiated cipher)."""
    proc = s_client(port, *options)
    match = re.search(r"^\s*Cipher\s*:\s*(\S+)", proc.stdout, re.M)
    return bool(match) and match.group(1) not in ("0000", "(NONE)")


def received_chain(port: int, key_type: str, sni: bool = True, other: bool = False,
                   ) -> list[bytes]:
    """The chain (DER, as received) an RSA-only or ECDSA-only client gets; [] when the
    handshake fails (the server has no certificate for that client)."""
    proc = s_client(port, "-sigalgs", SIGALGS[key_type], sni=sni, other=other)
    return [certs.load_pem_chain(pem.encode())[0].public_bytes(
        certs.serialization.Encoding.DER) for pem in PEM.findall(proc.stdout)]


def in_order(chain: list[bytes]) -> bool:
    parsed = [certs.x509.load_der_x509_certificate(der) for der in chain]
    return all(parsed[i].issuer == parsed[i + 1].subject for i in range(len(parsed) - 1))


def fullchain(certbot: lab.Certbot, name: str) -> list[bytes]:
    pem = (certbot.config_dir / "live" / name / "fullchain.pem").read_bytes()
    return [c.public_bytes(certs.serialization.Encoding.DER) for c in certs.load_pem_chain(pem)]


def verify(certbot: lab.Certbot) -> tuple[int, dict[str, Any]]:
    proc = run_cli(certbot, "verify", "--json")
    return proc.returncode, json.loads(proc.stdout)


def doctor(certbot: lab.Certbot) -> dict[str, Any]:
    return json.loads(run_cli(certbot, "doctor", "--json").stdout)


def named(report: dict[str, Any], name: str) -> list[dict[str, str]]:
    return [c for c in report["checks"] if c["name"] == name]


def pebble_root(pebble: lab.Pebble) -> str:
    """Pebble's root certificate (PEM), from its management interface."""
    context = ssl.create_default_context(cafile=str(pebble.ca_bundle))
    context.check_hostname = False
    url = f"https://127.0.0.1:{lab.PEBBLE_MANAGEMENT_PORT}/roots/0"
    with urllib.request.urlopen(url, context=context, timeout=10) as answer:  # noqa: S310
        return str(answer.read().decode())


def reload_dovecot() -> None:
    lab.process.run(["doveadm", "reload"], what="doveadm reload")


def test_what_a_scanner_sees(
    request: pytest.FixtureRequest, certbot: lab.Certbot, pebble: lab.Pebble,
    postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab, snakeoil_pair: None,
) -> None:
    once(request, "what the servers negotiate does not depend on certbot's version")
    master_before = Path("/etc/postfix/master.cf").read_bytes()
    for name, key_type in ((ECDSA, "ecdsa"), (RSA, "rsa")):
        certbot.run("certonly", "-a", "standalone", "--cert-name", name, "--key-type",
                    key_type, "-d", HOST, *certbot.acme_args())
    certbot.run("install", "-i", "postfix-tls", "--cert-name", ECDSA,
                "--postfix-tls-smtps", "yes")

    # Where passwords travel: TLS 1.2+ only, certificates always.
    for port in SUBMISSION:
        assert handshake_completes(port, "-tls1_2"), port
        for legacy in ("-tls1", "-tls1_1"):
            assert not handshake_completes(port, legacy, "-cipher", "DEFAULT:@SECLEVEL=0"), (
                port, legacy)
        assert not handshake_completes(port, "-tls1_2", "-cipher", "aNULL:@SECLEVEL=0"), port
    # Port 25 stays opportunistic: what a sending server can do is accepted.
    assert handshake_completes(25, "-tls1_2", "-cipher", "aNULL:@SECLEVEL=0")
    assert not [line for line in postfix_lab.postconf("-P").splitlines()
                if line.startswith("smtp/inet/")]

    # Every port: the lineage's leaf, its chain in order; an RSA-only client gets no
    # other certificate (there is none).
    expected = fullchain(certbot, ECDSA)
    for port in PORTS:
        assert received_chain(port, "ecdsa") == expected, port
        assert received_chain(port, "rsa") == [], port
    code, report = verify(certbot)
    assert code == 0, report
    assert {e["port"] for e in report["endpoints"]} == set(PORTS)

    checks = doctor(certbot)
    assert [c["status"] for c in named(checks, "legacy-tls")] == ["OK"], checks
    assert [c["status"] for c in named(checks, "anonymous-tls")] == ["OK"], checks
    [policy] = named(checks, "port25-policy")
    assert "opportunistic" in policy["message"] and "anonymous suites accepted" in policy[
        "message"], policy

    # Fault 1: the chain out of order on Dovecot's ports (the root before the
    # intermediate), as a hand-made chain file does.
    ecdsa_live = certbot.config_dir / "live" / ECDSA
    leaf_pem, *rest = PEM.findall((ecdsa_live / "fullchain.pem").read_text())
    misordered = certbot.base / "misordered.pem"
    misordered.write_text("\n".join([leaf_pem, pebble_root(pebble).strip(), *rest]) + "\n")
    plugin_text = PLUGIN_DOVECOT.read_text()
    PLUGIN_DOVECOT.write_text(plugin_text.replace(f"<{ecdsa_live}/fullchain.pem",
                                                  f"<{misordered}"))
    reload_dovecot()
    try:
        assert not in_order(received_chain(993, "ecdsa"))
        code, report = verify(certbot)
        assert code == 2, report
        bad = {(e["port"], e["status"]) for e in report["endpoints"] if e["status"] != "OK"}
        assert bad == {(port, "CRITICAL") for port in (143, 993, 110, 995)}, report
        assert all("out of order" in e["message"] and "ssl_cert" in e["message"]
                   for e in report["endpoints"] if e["status"] != "OK"), report
    finally:
        PLUGIN_DOVECOT.write_text(plugin_text)

    # Fault 2: an RSA certificate left as Dovecot's alternative certificate; RSA-only
    # clients get it, everyone else the lineage.
    ssl_text = SSL_CONF.read_text()
    rsa_live = certbot.config_dir / "live" / RSA
    SSL_CONF.write_text(ssl_text + f"ssl_alt_cert = <{rsa_live}/fullchain.pem\n"
                                   f"ssl_alt_key = <{rsa_live}/privkey.pem\n")
    reload_dovecot()
    try:
        assert received_chain(993, "rsa") == fullchain(certbot, RSA)
        assert received_chain(993, "ecdsa") == expected
        code, report = verify(certbot)
        assert code == 2, report
        bad = [e for e in report["endpoints"] if e["status"] != "OK"]
        assert {e["port"] for e in bad} == {143, 993, 110, 995}, report
        assert all(e["served_sha256"] == certs.sha256_hex(fullchain(certbot, RSA)[0])
                   and "ssl_alt_cert" in e["message"] for e in bad), bad
    finally:
        SSL_CONF.write_text(ssl_text)
        reload_dovecot()
    assert verify(certbot)[0] == 0

    # Fault 3: the same in Postfix (a second key and chain in smtpd_tls_chain_files, which
    # clients without SNI get: the SNI table decides the others) where Postfix imposes
    # its own order, so that only an RSA-only client sees it.
    chain_files = postfix_lab.postconf("-h", "smtpd_tls_chain_files").strip()
    rsa_file = certbot.base / "rsa-key-chain.pem"
    rsa_file.write_bytes((rsa_live / "privkey.pem").read_bytes()
                         + (rsa_live / "fullchain.pem").read_bytes())
    rsa_file.chmod(0o600)
    postfix_lab.postconf("-e", f"smtpd_tls_chain_files={chain_files}, {rsa_file}",
                         "tls_preempt_cipherlist=yes")
    lab.process.run(["postfix", "reload"], what="postfix reload")
    try:
        assert received_chain(587, "rsa", sni=False) == fullchain(certbot, RSA)
        assert received_chain(587, "ecdsa", sni=False) == expected
        code, report = verify(certbot)
        assert code == 2, report
        bad = [e for e in report["endpoints"] if e["status"] != "OK"]
        assert {(e["port"], e["sni"]) for e in bad} == {(25, None), (587, None), (465, None)}, (
            report)
        assert all("smtpd_tls_chain_files" in e["message"] for e in bad), bad
    finally:
        postfix_lab.postconf("-e", f"smtpd_tls_chain_files={chain_files}")
        postfix_lab.postconf("-X", "tls_preempt_cipherlist")
        lab.process.run(["postfix", "reload"], what="postfix reload")
    assert verify(certbot)[0] == 0

    # Undeploy: master.cf as it was, overrides and services included.
    undo = run_cli(certbot, "undeploy", "--work-dir", str(certbot.base / "work"),
                   "--cert-name", ECDSA)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert Path("/etc/postfix/master.cf").read_bytes() == master_before


def test_operator_submission_hardened_and_restored(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """A how-to's 587 (Postfix's >=TLSv1 and anonymous suites there): doctor warns with
    the setting and the fix; install hardens it; undeploy restores it exactly."""
    once(request, "what the servers negotiate does not depend on certbot's version")
    with open("/etc/dovecot/conf.d/10-master.conf", "a") as handle:
        handle.write("service auth {\n  unix_listener /var/spool/postfix/private/auth {\n"
                     "    mode = 0660\n    user = postfix\n    group = postfix\n  }\n}\n")
    reload_dovecot()
    issue(certbot, HOST)
    live = certbot.config_dir / "live" / HOST
    postfix_lab.postconf("-e", f"smtpd_tls_cert_file={live}/fullchain.pem",
                         f"smtpd_tls_key_file={live}/privkey.pem", "smtpd_sasl_type=dovecot",
                         "smtpd_sasl_path=private/auth")
    postfix_lab.postconf("-M", "submission/inet=submission inet n - y - - smtpd"
                         " -o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes"
                         " -o smtpd_tls_auth_only=yes")
    lab.process.run(["postfix", "reload"], what="postfix reload")
    assert handshake_completes(587, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")
    master_before = Path("/etc/postfix/master.cf").read_bytes()

    checks = doctor(certbot)
    [legacy] = named(checks, "legacy-tls")
    assert legacy["status"] == "WARNING", checks
    assert legacy["message"].startswith("port 587 (postfix submission) offers authentication "
                                        "and accepts TLS 1.0/1.1"), legacy
    assert ("decided by smtpd_tls_mandatory_protocols = >=TLSv1 in /etc/postfix/main.cf; "
            "fix: postconf -e 'smtpd_tls_mandatory_protocols=>=TLSv1.2'") in legacy["message"]
    [anonymous] = named(checks, "anonymous-tls")
    assert anonymous["status"] == "WARNING", checks
    assert anonymous["message"].startswith(
        "port 587 (postfix submission) offers authentication and completes a handshake with "
        "an anonymous (certificate-less) suite"), anonymous
    assert ("decided by smtpd_tls_mandatory_exclude_ciphers = (empty) in /etc/postfix/main.cf"
            in anonymous["message"]), anonymous
    assert ("fix: postconf -P submission/inet/smtpd_tls_mandatory_exclude_ciphers=aNULL"
            in anonymous["message"]), anonymous
    assert not any(c["status"] != "OK" and "port 25 " in c["message"]
                   for c in checks["checks"] if c["name"] in ("legacy-tls", "anonymous-tls"))

    certbot.run("install", "-i", "postfix-tls", "--cert-name", HOST)
    assert not handshake_completes(587, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert not handshake_completes(587, "-tls1_2", "-cipher", "aNULL:@SECLEVEL=0")
    checks = doctor(certbot)
    assert [c["status"] for c in named(checks, "legacy-tls")] == ["OK"], checks
    assert [c["status"] for c in named(checks, "anonymous-tls")] == ["OK"], checks

    undo = run_cli(certbot, "undeploy", "--work-dir", str(certbot.base / "work"),
                   "--cert-name", HOST)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert Path("/etc/postfix/master.cf").read_bytes() == master_before
    assert handshake_completes(587, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")


def test_dovecot_min_protocol_said_never_changed(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """An operator's ssl_min_protocol = TLSv1 stays; deploy and doctor say so."""
    once(request, "Dovecot's settings do not depend on certbot's version")
    text = SSL_CONF.read_text()
    SSL_CONF.write_text(text + "ssl_min_protocol = TLSv1\n")
    reload_dovecot()
    issue(certbot, HOST)
    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", HOST)
    said = proc.stdout + proc.stderr
    assert "ssl_min_protocol = TLSv1: IMAP and POP3 clients may log in over TLS 1.0/1.1" in (
        " ".join(said.split())), said
    assert SSL_CONF.read_text().endswith("ssl_min_protocol = TLSv1\n")
    checks = doctor(certbot)
    found = [c for c in checks["checks"] if "ssl_min_protocol = TLSv1" in c["message"]]
    assert found and {c["status"] for c in found} == {"WARNING"}, checks


def test_single_lineage_beside_a_default_pair(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """An RSA+ECDSA pair served by default and an ECDSA lineage for other names: an
    RSA-only client asking for those names gets no certificate for the pair's names
    (Dovecot's local_name block would inherit the default's ssl_alt_cert), and verify,
    which asks as an RSA-preferring client, is OK."""
    once(request, "what the servers negotiate does not depend on certbot's version")
    for name, key_type in ((ECDSA, "ecdsa"), (RSA, "rsa")):
        certbot.run("certonly", "-a", "standalone", "--cert-name", name, "--key-type",
                    key_type, "-d", HOST, *certbot.acme_args())
    issue(certbot, OTHER)
    for name in (ECDSA, RSA, OTHER):
        certbot.run("install", "-i", "postfix-tls", "--cert-name", name)
    for port in PORTS:
        if port == 465:
            continue  # not enabled here
        assert received_chain(port, "rsa", sni=False) == fullchain(certbot, RSA), port
        assert received_chain(port, "rsa", other=True) == [], port
        assert received_chain(port, "ecdsa", other=True) == fullchain(certbot, OTHER), port
    code, report = verify(certbot)
    assert code == 0, [e["message"] for e in report["endpoints"] if e["status"] != "OK"]
