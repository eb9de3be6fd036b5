"""DANE end to end: real certbot + Pebble, Postfix, Knot signing example.org, Unbound
validating it, and Postfix's own DANE client (posttls-finger) as the judge.

The lab's DNS (tests/lab/dns.py) runs on loopback in the private namespace;
/etc/resolv.conf (an overlay there) points at the validating Unbound, so
posttls-finger and the plugin's default lookups see the same validated records.
Every TTL is 2 s: the plugin's wait of twice the TTL is 4 s.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.rdatatype
import lab
import pytest
from conftest import need, once
from lab import dns as labdns
from lab.dovecot import DovecotLab
from lab.flows import (
    POSTFIX_RELOAD,
    count,
    install,
    issue,
    renew,
    run_cli,
    served_leaf,
    wait_for_count,
)

from certbot_postfix_tls._internal import certs
from certbot_postfix_tls._internal.dane import flag, records
from certbot_postfix_tls._internal.state import State

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

NAME = lab.LAB_HOSTNAME  # mail.example.org, Postfix's myhostname in the lab
VERIFIED = "Verified TLS connection established"


@pytest.fixture
def dns_lab(postfix_lab: lab.PostfixLab) -> Iterator[labdns.DnsLab]:
    for tool in ("knotd", "unbound", "posttls-finger"):
        need(tool)
    server = labdns.DnsLab(Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-dns-")))
    try:
        server.start()
        server.use_as_system_resolver()
        yield server
    finally:
        server.stop()


def finger() -> str:
    """Postfix's DANE client, through the validating resolver: 'Verified' or why not."""
    proc = subprocess.run(
        ["posttls-finger", "-t30", "-T180", "-c", "-l", "dane", "-P", "/etc/ssl/certs",
         f"[{NAME}]:25"], capture_output=True, text=True, timeout=240, check=False)
    return proc.stdout + proc.stderr


def chain(certbot: lab.Certbot) -> list[certs.x509.Certificate]:
    return certs.load_pem_chain((certbot.config_dir / "live" / NAME / "fullchain.pem")
                                .read_bytes())


def der(cert: certs.x509.Certificate) -> bytes:
    return cert.public_bytes(certs.serialization.Encoding.DER)


def tlsa(cert: certs.x509.Certificate, usage: int = 3) -> str:
    return records.Record.for_cert(cert, usage).text()


def held(certbot: lab.Certbot) -> dict[str, object]:
    return State.load(str(certbot.config_dir)).lineages[NAME].held


def test_new_key_is_held_until_its_record_is_published_then_activated(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab,
    dns_lab: labdns.DnsLab
) -> None:
    issue(certbot, NAME)
    install(certbot, NAME)
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    assert VERIFIED in finger()
    doctor = json.loads(run_cli(certbot, "doctor", "--json").stdout)
    [found] = [c for c in doctor["checks"] if c["name"] == f"dane {NAME}"]
    assert found["status"] == "WARNING" and "reuse_key is off" in found["message"]

    # 1. A renewal with a new key (certbot's default): port 25 keeps the old one.
    renewed = renew(certbot)
    new = chain(certbot)
    assert der(new[0]) != der(old[0]) and tlsa(new[0]) != tlsa(old[0])
    line = f"_25._tcp.{NAME}. IN TLSA {tlsa(new[0])}"
    assert line in renewed.stdout + renewed.stderr  # certbot shows the deploy hook's output
    assert served_leaf(25, NAME) == der(old[0])
    assert VERIFIED in finger()
    assert held(certbot)["version"] == 1
    # DANE is Postfix's: Dovecot (live/ files) serves the renewal, and verify expects that.
    assert served_leaf(993, NAME, "imap", "implicit") == der(new[0])
    checked = run_cli(certbot, "verify")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"WARNING: dane-held {NAME}: " in checked.stdout and line in checked.stdout
    listed = run_cli(certbot, "dane", "records")
    assert line in listed.stdout and f"IN TLSA {tlsa(old[0])}" in listed.stdout

    # 2. Published (Knot re-signs): activated twice the TTL after the record was first seen,
    # with one reload. `dane check` with the newest certbot, the post hook with Debian's.
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]), tlsa(new[0]))
    reloads = count(postfix_lab.log(), POSTFIX_RELOAD)
    command = ("dane", "check") if "pypi" in str(certbot.base) else ("hook", "post")
    waiting = run_cli(certbot, *command)
    assert "twice their TTL after they were first seen" in waiting.stdout + waiting.stderr
    assert served_leaf(25, NAME) == der(old[0])
    time.sleep(2 * labdns.TTL + 0.5)
    done = run_cli(certbot, *command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "activated" in done.stdout
    assert served_leaf(25, NAME) == der(new[0])
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, reloads + 1) == reloads + 1
    assert VERIFIED in finger()
    assert not held(certbot)
    assert run_cli(certbot, "verify").returncode == 0
    assert run_cli(certbot, "dane", "check").stdout.startswith("OK: no lineage is held")


def test_unvalidated_records_and_a_dead_resolver_never_hold(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    issue(certbot, NAME)
    # A resolver without the zone's trust anchor: the records come without the AD bit.
    install(certbot, NAME, "--postfix-tls-services", "postfix",
            "--postfix-tls-dane-resolver", labdns.UNVALIDATING)
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    renewed = renew(certbot)
    assert "did not validate" in renewed.stdout + renewed.stderr
    assert "reported, not obeyed" in renewed.stdout + renewed.stderr
    current = chain(certbot)
    assert served_leaf(25, NAME) == der(current[0]) != der(old[0])
    assert not held(certbot)

    # The validating resolver, then gone during the renewal: it proceeds with a warning.
    install(certbot, NAME, "--postfix-tls-services", "postfix",
            "--postfix-tls-dane-resolver", labdns.RESOLVER)
    dns_lab.set_tlsa(25, "mail", tlsa(current[0]))
    assert VERIFIED in finger()
    dns_lab.stop_resolver()
    renewed = renew(certbot)
    output = renewed.stdout + renewed.stderr
    assert f"the TLSA lookups of _25._tcp.{NAME}." in output and "failed" in output
    assert served_leaf(25, NAME) == der(chain(certbot)[0]) != der(current[0])
    assert not held(certbot)
    assert run_cli(certbot, "verify").returncode == 0


def test_2_1_1_for_the_issuing_intermediate_survives_a_renewal(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    issue(certbot, NAME)
    install(certbot, NAME, "--postfix-tls-services", "postfix")
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[1], usage=2))  # Pebble's intermediate
    assert VERIFIED in finger()
    renew(certbot)  # a new key, the same intermediate
    new = chain(certbot)
    assert der(new[1]) == der(old[1]) and der(new[0]) != der(old[0])
    assert served_leaf(25, NAME) == der(new[0])
    assert not held(certbot)
    assert VERIFIED in finger()
    assert run_cli(certbot, "verify").returncode == 0


def test_dynamic_updates_roll_the_key_over_with_no_human_step(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab, tmp_path: Path
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    credentials = tmp_path / "rfc2136.ini"
    labdns.tsig_credentials(credentials)
    issue(certbot, NAME)
    install(certbot, NAME, "--postfix-tls-services", "postfix",
            "--postfix-tls-dane-update", str(credentials))
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    renewed = renew(certbot)
    new = chain(certbot)
    assert f"published through {labdns.AUTHORITATIVE}" in renewed.stdout + renewed.stderr
    assert served_leaf(25, NAME) == der(old[0]) and held(certbot)

    # From here on only what the hourly timer runs: dane check.
    def until(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, what
            run_cli(certbot, "dane", "check")
            time.sleep(1)

    until(lambda: not held(certbot), "the renewal was not activated")
    assert served_leaf(25, NAME) == der(new[0])
    assert VERIFIED in finger()
    owner = f"_25._tcp.{NAME}."

    def published() -> set[str]:
        reply = dns_lab.query(labdns.AUTHORITATIVE, owner, "TLSA")
        return {rdata.to_text().replace(" ", "") for rrset in reply.answer
                if rrset.rdtype == dns.rdatatype.TLSA for rdata in rrset}

    until(lambda: published() == {tlsa(new[0]).replace(" ", "")},
          "the retired key's record was not removed")
    assert not State.load(str(certbot.config_dir)).lineages[NAME].dane_retire
    assert not (certbot.config_dir / "postfix-tls" / flag.HELD_FLAG).exists()
    dns_lab.wait_answered(25, "mail", tlsa(new[0]))
    assert VERIFIED in finger()
