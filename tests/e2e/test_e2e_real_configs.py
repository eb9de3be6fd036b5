"""The configurations real servers run (issue #18), end to end: real certbot, Pebble,
Postfix and Dovecot in the lab namespace.

- postconf warnings (an unused parameter, an undefined $name in master.cf) are notes;
- an IPv6-only Postfix and a Dovecot listening on ::1 are verified over IPv6;
- content-filter, TLS-off and PROXY-protocol listeners are listed, not checked;
- an operator's Dovecot auth listener (mode 0666) is reused as is;
- implicit TLS on 587 is a deploy WARNING and a doctor CRITICAL;
- a failed verification is one line per endpoint, with Postfix's own reason.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lab
import pytest
from conftest import need, need_lab, once
from lab.dovecot import DovecotLab

from certbot_postfix_tls._internal import certs, dialogues, tls_client, verify
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

NAME = lab.LAB_HOSTNAME
SASL_SOCKET = "/var/spool/postfix/private/auth"
PLUGIN_FILE = Path("/etc/dovecot/conf.d/99-certbot-postfix-tls.conf")
SNAKEOIL = ("/etc/ssl/certs/ssl-cert-snakeoil.pem", "/etc/ssl/private/ssl-cert-snakeoil.key")


def run_certbot(certbot: lab.Certbot, *extra: str) -> str:
    proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                       *certbot.acme_args(), *extra)
    return proc.stdout + proc.stderr


def cli(certbot: lab.Certbot, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir),
         *args],
        capture_output=True, text=True, timeout=180, check=False,
    )


def reload_postfix() -> None:
    lab.process.run(["postfix", "reload"], what="postfix reload")


def explicit(postfix_lab: lab.PostfixLab) -> dict[str, str]:
    return postfix_config.parse_postconf(postfix_lab.postconf("-n"))


def leaf_of(certbot: lab.Certbot) -> bytes:
    pem = (certbot.config_dir / "live" / NAME / "fullchain.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def test_postconf_warnings_are_notes(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    once(request, "postconf's warnings do not depend on certbot's version")
    # What policyd-spf how-tos add, and Debian's own commented submission template.
    with open(Path(postfix_lab.config_dir) / "main.cf", "a") as handle:
        handle.write("policyd-spf_time_limit = 3600\n")
    postfix_lab.postconf(
        "-M", "submission/inet=submission inet n - y - - smtpd -o syslog_name=postfix/submission"
        " -o smtpd_client_restrictions=$mua_client_restrictions")
    reload_postfix()
    before = explicit(postfix_lab)

    output = run_certbot(certbot)
    assert "note: postconf: /etc/postfix/main.cf: unused parameter: " \
        "policyd-spf_time_limit=3600" in output
    assert "note: postconf: /etc/postfix/master.cf: undefined parameter: " \
        "mua_client_restrictions" in output

    # Deployed and verified; nothing but the plugin's own parameters changed.
    after = explicit(postfix_lab)
    main_cf = (Path(postfix_lab.config_dir) / "main.cf").read_text()
    assert "\npolicyd-spf_time_limit = 3600\n" in main_cf
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {"smtpd_tls_chain_files", "tls_server_sni_maps", "smtpd_tls_cert_file",
                       "smtpd_tls_key_file", "smtpd_tls_session_cache_database",
                       "smtp_tls_session_cache_database", "smtpd_tls_loglevel",
                       "smtpd_tls_security_level", "smtp_tls_security_level"}, changed
    master = postfix_lab.postconf("-M")
    assert "smtpd_client_restrictions=$mua_client_restrictions" in master
    endpoint = tls_client.Endpoint("postfix", "smtp", "127.0.0.1", 587, "starttls", "submission")
    assert dialogues.handshake(endpoint, NAME).leaf_der == leaf_of(certbot)


def test_ipv6_only_postfix_and_dovecot_on_ipv6_loopback(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_config: DovecotLab | None,
) -> None:
    once(request, "addresses do not depend on certbot's version")
    need("dovecot")
    assert dovecot_config is not None
    postfix_lab.stop()
    postfix_lab.postconf("-e", "inet_protocols=ipv6", "inet_interfaces=::1",
                         "mynetworks=[::1]/128")
    lab.process.run(["postfix", "start"], what="postfix start")
    lab.wait_for_port(25, "::1")
    dovecot_config.listen = "::1"
    dovecot_config.install_config(snakeoil=True)
    dovecot_config.start()

    run_certbot(certbot)  # verifies every endpoint after the reload, or fails
    first = json.loads(cli(certbot, "verify", "--json").stdout)["endpoints"][0]["served_sha256"]
    # The renewal's post hook reloads and verifies at ::1 too.
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())

    report = cli(certbot, "verify", "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    endpoints = json.loads(report.stdout)["endpoints"]
    assert all(e["served_sha256"] != first for e in endpoints)  # the renewed certificate
    assert {(e["service"], e["port"]) for e in endpoints} >= {
        ("postfix", 25), ("postfix", 587), ("dovecot", 143), ("dovecot", 993)}
    assert {e["address"] for e in endpoints} == {"::1"}  # not the IPv4 verify default
    assert all(e["status"] == "OK" for e in endpoints)
    assert all(e["message"].startswith("[::1]:") for e in endpoints)


MODOBOA_AUTH = """
service auth {
  unix_listener /var/spool/postfix/private/auth {
    mode = 0666
    user = postfix
    group = postfix
  }
}
"""


def test_internal_listeners_are_listed_not_checked(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_config: DovecotLab | None,
) -> None:
    once(request, "listener selection does not depend on certbot's version")
    need("dovecot")
    assert dovecot_config is not None
    # An amavis-style re-injection port with TLS off, and a port behind HAProxy.
    postfix_lab.postconf(
        "-M", "127.0.0.1:10025/inet=127.0.0.1:10025 inet n - n - - smtpd -o content_filter="
        " -o smtpd_tls_security_level=none -o smtpd_sasl_auth_enable=no")
    postfix_lab.postconf(
        "-M", "10026/inet=10026 inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy")
    postfix_lab.postconf(
        "-M", "127.0.0.1:10027/inet=127.0.0.1:10027 inet n - n - - smtpd -o content_filter=")
    reload_postfix()
    # The operator's own auth socket for Postfix, world-writable as Modoboa sets it.
    with open("/etc/dovecot/conf.d/10-master.conf", "a") as handle:
        handle.write(MODOBOA_AUTH)
    dovecot_config.install_config(snakeoil=True)
    with open("/etc/dovecot/conf.d/10-master.conf", "a") as handle:
        handle.write(MODOBOA_AUTH)
    dovecot_config.start()

    output = run_certbot(certbot)
    assert "not checked: 127.0.0.1:10025/inet (port 10025): TLS is off " \
        "(-o smtpd_tls_security_level=none" in output
    assert "not checked: 10026/inet (port 10026): expects a PROXY protocol header" in output
    assert "not checked: 127.0.0.1:10027/inet (port 10027): bound to loopback" in output
    assert "kept the auth listener /var/spool/postfix/private/auth" in output

    # The operator's listener is reused as is: not redeclared, mode kept.
    assert "service auth" not in PLUGIN_FILE.read_text()
    assert stat.S_IMODE(os.stat(SASL_SOCKET).st_mode) == 0o666
    effective = subprocess.run(["doveconf", "service/auth"], capture_output=True, text=True,
                               check=True).stdout
    assert "mode = 0666" in effective
    assert "smtpd_sasl_type=dovecot" in postfix_lab.postconf("-M")

    verified = cli(certbot, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert {e["port"] for e in report["endpoints"] if e["service"] == "postfix"} == {25, 587}
    assert sum(c["name"] == "not-checked" for c in report["checks"]) == 3

    doctor = cli(certbot, "doctor", "--json")
    checks = json.loads(doctor.stdout)["checks"]
    assert doctor.returncode == 0, [c for c in checks if c["status"] != "OK"]

    # Named explicitly, a loopback port is checked; ports left out are not.
    certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME,
                "--postfix-tls-verify-ports", "25,10027")
    verified = cli(certbot, "verify", "--json")
    assert verified.returncode == 0, verified.stdout
    assert {e["port"] for e in json.loads(verified.stdout)["endpoints"]} == {25, 10027}


def test_implicit_tls_on_587_is_flagged(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    once(request, "the warning does not depend on certbot's version")
    postfix_lab.postconf(
        "-M", "submission/inet=submission inet n - y - - smtpd -o smtpd_tls_wrappermode=yes")
    reload_postfix()

    output = run_certbot(certbot)
    assert "WARNING: master.cf service submission (port 587) has -o smtpd_tls_wrappermode=yes" \
        in output
    assert "RFC 6409" in output

    doctor = cli(certbot, "doctor", "--json")
    assert doctor.returncode == 2
    [check] = [c for c in json.loads(doctor.stdout)["checks"]
               if c["name"] == "submission-wrappermode"]
    assert check["status"] == "CRITICAL"
    assert "postconf -PX submission/inet/smtpd_tls_wrappermode" in check["message"]


def summary(certbot: lab.Certbot) -> tuple[list[verify.EndpointResult], list[str]]:
    """Check every Postfix endpoint with and without SNI; wait (bounded) for the log line
    postlogd writes asynchronously."""
    expected = verify.ExpectedCert.from_fullchain(
        str(certbot.config_dir / "live" / NAME / "fullchain.pem"))
    targets = postfix_listeners.endpoints(Postfix().read(), "127.0.0.1")
    deadline = time.monotonic() + 10
    while True:
        results = [verify.check_endpoint(endpoint, expected, sni, retry_seconds=0)
                   for endpoint in targets for sni in (None, NAME)]
        lines = verify.summarize(results)
        if all("log says" in line for line in lines) or time.monotonic() > deadline:
            return results, lines
        time.sleep(0.5)


@pytest.fixture
def no_snakeoil() -> Iterator[None]:
    """Debian's snakeoil pair moved aside for one test: ssl-cert makes it on a fresh
    machine, other machines removed it. Only the lab's /etc overlay changes."""
    need_lab()
    moved = [path for path in SNAKEOIL if os.path.exists(path)]
    for path in moved:
        os.rename(path, f"{path}.moved-by-test")
    yield
    for path in moved:
        os.rename(f"{path}.moved-by-test", path)


def test_failed_verification_is_one_line_per_port_with_postfix_reason(
    request: pytest.FixtureRequest, certbot: lab.Certbot, no_snakeoil: None,
    postfix_lab: lab.PostfixLab,
) -> None:
    once(request, "the message does not depend on certbot's version")
    # Debian's stock Postfix without its snakeoil pair: STARTTLS advertised, then 454.
    certbot.run("certonly", "-a", "standalone", "-d", NAME, *certbot.acme_args())
    results, lines = summary(certbot)
    assert len(results) == 2 and all(r.status == "CRITICAL" for r in results), results
    [line] = lines  # port 25, once for both SNI cases
    assert line.startswith(f"port 25, 127.0.0.1:25 (postfix smtp), without SNI and with SNI "
                           f"{NAME}: answered STARTTLS with '454 4.7.0 TLS not available due "
                           "to local problem' instead of 220"), line
    assert "Postfix's log says: cannot get RSA certificate from file" in line
    assert "ssl-cert-snakeoil.pem" in line
    assert "decided by smtpd_tls_cert_file" not in line or "main.cf" in line
    assert "usually" not in line

    # Deployed, then the chain file Postfix reads is gone: the handshake fails.
    certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME)
    postfix_lab.postconf("-e", "smtpd_tls_chain_files=/etc/postfix/missing-chain.pem",
                         "tls_server_sni_maps=")
    reload_postfix()
    results, lines = summary(certbot)
    assert len(results) == 4 and all(r.status == "CRITICAL" for r in results), results
    assert len(lines) == 2, lines  # 25 and 587
    for port, line in zip((25, 587), sorted(lines)):
        assert line.startswith(f"port {port}, 127.0.0.1:{port} "), line
        assert f"without SNI and with SNI {NAME}: TLS failed during the TLS handshake" in line
        assert "Postfix's log says: error opening chain file: " \
            "/etc/postfix/missing-chain.pem: No such file or directory" in line
        assert "decided by smtpd_tls_protocols/smtpd_tls_ciphers and smtpd_tls_chain_files " \
            "in /etc/postfix/main.cf" in line
