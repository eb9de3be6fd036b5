"""RSA and ECDSA lineages for the same names, served side by side on every port.

The judge is ``openssl s_client`` offering only ECDSA or only RSA signature
algorithms, over TLS 1.2 and 1.3, with and without SNI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import lab
import pytest
from conftest import once
from lab import load as lab_load
from lab.dovecot import DovecotLab
from lab.flows import HOST

from certbot_postfix_tls._internal import certs
from certbot_postfix_tls._internal.state import State

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

ECDSA, RSA = "mail-ecdsa", "mail-rsa"
SIGALGS = {ECDSA: "ECDSA+SHA256", RSA: "RSA-PSS+SHA256:RSA+SHA256"}
# port -> s_client's -starttls protocol (None: implicit TLS)
PORTS = {25: "smtp", 587: "smtp", 993: None, 995: None}


def leaf(certbot: lab.Certbot, name: str) -> bytes:
    pem = (certbot.config_dir / "live" / name / "cert.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def served(port: int, lineage: str, version: str, sni: str | None) -> bytes:
    """The leaf an ECDSA-only or RSA-only OpenSSL client gets."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}",
            "-sigalgs", SIGALGS[lineage]]
    if PORTS[port]:
        argv += ["-starttls", PORTS[port]]
    argv += ["-servername", sni] if sni else ["-noservername"]
    proc = subprocess.run(argv, input="", capture_output=True, text=True, timeout=30,
                          check=False)
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                      proc.stdout, re.S)
    assert match, (port, lineage, version, proc.stdout[-500:], proc.stderr[-500:])
    return certs.load_pem_chain(match.group(0).encode())[0].public_bytes(
        certs.serialization.Encoding.DER)


def assert_both_served(certbot: lab.Certbot, ports: tuple[int, ...] = tuple(PORTS)) -> None:
    for port in ports:
        for lineage in (ECDSA, RSA):
            for version in ("tls1_2", "tls1_3"):
                for sni in (None, HOST):
                    assert served(port, lineage, version, sni) == leaf(certbot, lineage), (
                        port, lineage, version, sni)


def issue(certbot: lab.Certbot, name: str, key_type: str) -> None:
    certbot.run("certonly", "-a", "standalone", "--cert-name", name, "--key-type", key_type,
                "-d", HOST, *certbot.acme_args())


def install(certbot: lab.Certbot, name: str) -> None:
    certbot.run("install", "-i", "postfix-tls", "--cert-name", name)


def postfix_and_dovecot_accept() -> None:
    for argv in (["postfix", "check"], ["doveconf", "-x", "base_dir"]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (argv, proc.stdout + proc.stderr)


def test_rsa_and_ecdsa_side_by_side(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "pairing does not depend on certbot's version")
    issue(certbot, ECDSA, "ecdsa")
    issue(certbot, RSA, "rsa")
    install(certbot, ECDSA)
    install(certbot, RSA)
    assert_both_served(certbot)
    verify = subprocess.run([sys.executable, "-m", "certbot_postfix_tls", "--config-dir",
                             str(certbot.config_dir), "verify", "--json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert {e["algorithm"] for e in json.loads(verify.stdout)["endpoints"]} == {
        "ecdsa", "rsa"}

    # The other order gives the same configuration.
    first = postconf_chain()
    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "2")
    install(certbot, RSA)
    install(certbot, ECDSA)
    assert postconf_chain() == first
    assert_both_served(certbot, ports=(25, 993))

    # Renewing the RSA member alone, under load: both still served, RSA is the new one.
    load = lab_load.HandshakeLoad(lab_load.mail_endpoints(ports=(25, 587, 993)), HOST,
                                  threads=1, timeout=10.0, max_seconds=120)
    load.start()
    try:
        old_rsa = leaf(certbot, RSA)
        certbot.run("renew", "--force-renewal", "--cert-name", RSA,
                    "--no-random-sleep-on-renew", *certbot.acme_args())
    finally:
        results = load.stop()
    assert leaf(certbot, RSA) != old_rsa
    assert results.failures == 0, results.stats
    assert_both_served(certbot, ports=(25, 995))

    # Undeploy the ECDSA member: RSA alone everywhere.
    undo = subprocess.run([sys.executable, "-m", "certbot_postfix_tls", "--config-dir",
                           str(certbot.config_dir), "undeploy", "--work-dir",
                           str(certbot.base / "work"), "--cert-name", ECDSA],
                          capture_output=True, text=True, timeout=120, check=False)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert list(State.load(str(certbot.config_dir)).lineages) == [RSA]
    postfix_and_dovecot_accept()
    for port in PORTS:
        for version in ("tls1_2", "tls1_3"):
            assert served(port, RSA, version, HOST) == leaf(certbot, RSA), (port, version)


def postconf_chain() -> str:
    return subprocess.run(["postconf", "-h", "smtpd_tls_chain_files"], capture_output=True,
                          text=True, check=True).stdout.strip()
