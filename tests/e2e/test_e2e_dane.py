"""DANE end to end: real certbot + Pebble, Postfix, Knot signing example.org, Unbound
validating it, and Postfix's own DANE client (posttls-finger) as the judge.

The lab's DNS (tests/lab/dns.py) runs on loopback in the private namespace;
/etc/resolv.conf (an overlay there) points at the validating Unbound, so
posttls-finger and the plugin's default lookups see the same validated records.
Every TTL is 2 s: the plugin's wait of twice the TTL is 4 s. The lab's other tests
deploy with --postfix-tls-dane ignore (the lab's certbot configuration file); these
deploy with auto.
"""

from __future__ import annotations

import json
import shutil
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
AUTO = ("--postfix-tls-dane", "auto")


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
    install(certbot, NAME, *AUTO)
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
    assert "TTL after they were first seen" in waiting.stdout + waiting.stderr
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


def publish_and_activate(certbot: lab.Certbot, dns_lab: labdns.DnsLab,
                         old: list[certs.x509.Certificate],
                         new: list[certs.x509.Certificate]) -> None:
    """Publish the renewal's record beside the old one; activated twice the TTL later."""
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]), tlsa(new[0]))
    dns_lab.wait_answered(25, "mail", tlsa(old[0]), tlsa(new[0]))
    run_cli(certbot, "dane", "check")
    assert served_leaf(25, NAME) == der(old[0])
    time.sleep(2 * labdns.TTL + 0.5)
    done = run_cli(certbot, "dane", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert served_leaf(25, NAME) == der(new[0]) and not held(certbot)


def test_signed_records_hold_through_a_resolver_that_does_not_validate(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    issue(certbot, NAME)
    # A resolver without the zone's trust anchor: no AD bit, but the RRSIGs come along.
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix",
            "--postfix-tls-dane-resolver", labdns.UNVALIDATING)
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    dns_lab.wait_answered(25, "mail", tlsa(old[0]))
    renewed = renew(certbot)
    output = renewed.stdout + renewed.stderr
    assert "does not validate DNSSEC" in output and "--postfix-tls-dane-resolver" in output
    new = chain(certbot)
    assert served_leaf(25, NAME) == der(old[0]) != der(new[0])
    assert held(certbot)["version"] == 1
    assert VERIFIED in finger()  # the validating senders' view
    doctor = json.loads(run_cli(certbot, "doctor", "--json").stdout)
    messages = [c["message"] for c in doctor["checks"]
                if c["name"] in (f"dane {NAME}", f"dane-held {NAME}")]
    assert any("does not validate DNSSEC" in m for m in messages), messages
    assert any("is held (since" in m for m in messages), messages
    publish_and_activate(certbot, dns_lab, old, new)
    assert VERIFIED in finger()


def test_a_resolver_down_during_the_renewal_holds_it(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    issue(certbot, NAME)
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix",
            "--postfix-tls-dane-resolver", labdns.RESOLVER)
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    assert VERIFIED in finger()
    dns_lab.stop_resolver()
    renewed = renew(certbot)
    output = renewed.stdout + renewed.stderr
    assert f"the TLSA lookups of _25._tcp.{NAME}." in output and "failed" in output
    assert "cannot be checked" in output
    new = chain(certbot)
    assert served_leaf(25, NAME) == der(old[0]) != der(new[0])
    assert held(certbot)["failed"]
    checked = run_cli(certbot, "verify")
    assert checked.returncode == 1 and f"WARNING: dane-held {NAME}" in checked.stdout
    dns_lab.start_resolver()
    assert VERIFIED in finger()
    still = run_cli(certbot, "dane", "check")  # back: the records name the old key only
    assert still.returncode == 1 and f"IN TLSA {tlsa(new[0])}" in still.stdout + still.stderr
    publish_and_activate(certbot, dns_lab, old, new)
    assert VERIFIED in finger()
    assert run_cli(certbot, "verify").returncode == 0


def test_a_rollback_after_an_activation_keeps_the_new_key(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    issue(certbot, NAME)
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix")
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    renew(certbot)
    new = chain(certbot)
    assert held(certbot)["version"] == 1
    # A re-install while held: its checkpoint holds a state that says "held at version 1".
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix")
    publish_and_activate(certbot, dns_lab, old, new)
    dns_lab.set_tlsa(25, "mail", tlsa(new[0]))  # the retired key's record removed
    dns_lab.wait_answered(25, "mail", tlsa(new[0]))
    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "1")
    assert not held(certbot)
    assert served_leaf(25, NAME) == der(new[0])
    assert VERIFIED in finger()
    assert run_cli(certbot, "verify").returncode == 0


def test_2_1_1_for_the_issuing_intermediate_survives_a_renewal(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    issue(certbot, NAME)
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix")
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
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix",
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


def test_tlsa_only_on_myhostname_holds_the_default_certificate(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    other = "smtp.example.org"  # the certificate does not list myhostname (mail.example.org)
    issue(certbot, other)
    install(certbot, other, *AUTO, "--postfix-tls-services", "postfix")
    live = certbot.config_dir / "live" / other / "fullchain.pem"
    old = certs.load_pem_chain(live.read_bytes())
    # Senders look up the MX host; Postfix answers it with its default certificate.
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    assert VERIFIED in finger()
    renew(certbot)
    new = certs.load_pem_chain(live.read_bytes())
    assert served_leaf(25, NAME) == der(old[0]) != der(new[0])
    hold = State.load(str(certbot.config_dir)).lineages[other].held
    assert hold["version"] == 1 and not hold["failed"]
    assert hold["publish"] == [f"_25._tcp.{NAME}. IN TLSA {tlsa(new[0])}"]
    assert VERIFIED in finger()


def test_a_second_instance_never_replaces_the_held_file(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dns_lab: labdns.DnsLab
) -> None:
    once(request, "the DNS decisions do not depend on certbot's version")
    # A second (stopped) instance with a name of its own, serving the same lineage from
    # the same key+chain file.
    second = Path("/etc/postfix-out")
    second.mkdir(exist_ok=True)
    main_cf, master_cf = lab.debian_stock_config()
    (second / "main.cf").write_text(
        main_cf + "myhostname = out.example.org\nqueue_directory = /var/spool/postfix-out\n"
        "data_directory = /var/lib/postfix-out\n")
    (second / "master.cf").write_text(master_cf)
    postfix_lab.postconf("-e", f"alternate_config_directories = {second}")
    for state_dir in ("/var/spool/postfix-out", "/var/lib/postfix-out"):
        Path(state_dir).mkdir(exist_ok=True)
        shutil.chown(state_dir, "postfix", "postfix")
    issue(certbot, NAME)
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix")
    install(certbot, NAME, *AUTO, "--postfix-tls-services", "postfix",
            "--postfix-tls-postfix-dir", str(second))
    old = chain(certbot)
    dns_lab.set_tlsa(25, "mail", tlsa(old[0]))
    renew(certbot)
    new = chain(certbot)
    states = State.load_all(str(certbot.config_dir))
    assert len(states) == 2 and all(s.lineages[NAME].held for s in states)
    chain_file = certbot.config_dir / "postfix-tls" / "lineages" / NAME / "key-fullchain.pem"
    assert der(old[0]) in [der(c) for c in certs.load_pem_chain(chain_file.read_bytes())]
    assert served_leaf(25, NAME) == der(old[0]) != der(new[0])
    assert VERIFIED in finger()
    publish_and_activate(certbot, dns_lab, old, new)
    assert not any(s.lineages[NAME].held for s in State.load_all(str(certbot.config_dir)))
    assert VERIFIED in finger()
