"""DANE: TLSA matching, the lookups (against a real UDP DNS server in this process), and
the gate's decisions on real certbot-shaped lineages (archive versions, live/ links)."""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import lab
import pytest
from certbot import errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certbot_postfix_tls._internal import certs
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.dane import (
    archive,
    flag,
    gate,
    history,
    lookup,
    names,
    records,
    report,
    update,
)
from certbot_postfix_tls._internal.state import DeployedLineage, State

NAME = "mail.example.org"
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


# --- a small CA: keys can be reused, intermediates swapped ----------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool, names: tuple[str, ...] = (),
          days: float = 90, age: float = 1) -> x509.Certificate:
    """Valid for ``days``, from ``age`` days ago."""
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=age)
    builder = lab.as_issued(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days)),
        key.public_key(), issuer_key.public_key(), ca=ca,
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class CA:
    root_key: ec.EllipticCurvePrivateKey
    inter_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    name: str

    @classmethod
    def make(cls, name: str = "R10") -> CA:
        root_key, inter_key = _key(), _key()
        inter = _cert(name, inter_key, "Root", root_key, ca=True)
        return cls(root_key, inter_key, inter, name)

    def issue(self, key: ec.EllipticCurvePrivateKey, names: tuple[str, ...] = (NAME,),
              days: float = 90, age: float = 1) -> tuple[bytes, bytes]:
        leaf = _cert(names[0], key, self.name, self.inter_key, ca=False, names=names,
                     days=days, age=age)
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.inter))
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, pem


class Certbot:
    """A lineage laid out as certbot does: archive/NAME/*N.pem, live/NAME/ links."""

    def __init__(self, config_dir: Path, name: str = NAME) -> None:
        self.config_dir, self.name, self.version = config_dir, name, 0
        self.archive = config_dir / "archive" / name
        self.live = config_dir / "live" / name
        self.archive.mkdir(parents=True)
        self.live.mkdir(parents=True)

    def renew(self, key_pem: bytes, fullchain: bytes) -> None:
        self.version += 1
        n = self.version
        (self.archive / f"privkey{n}.pem").write_bytes(key_pem)
        (self.archive / f"fullchain{n}.pem").write_bytes(fullchain)
        (self.archive / f"cert{n}.pem").write_bytes(certs.load_pem_chain(fullchain)[0]
                                                    .public_bytes(serialization.Encoding.PEM))
        for kind in ("privkey", "fullchain", "cert"):
            link = self.live / f"{kind}.pem"
            if link.is_symlink():
                link.unlink()
            link.symlink_to(f"../../archive/{self.name}/{kind}{n}.pem")

    @property
    def lineage(self) -> certs.Lineage:
        return certs.Lineage.from_live_dir(str(self.live), str(self.config_dir))

    def material(self) -> certs.Material:
        return certs.load_material(self.lineage)

    def deployed(self) -> DeployedLineage:
        """As the state records it right after a deploy of the current version."""
        lineage = self.lineage
        material = self.material()
        return DeployedLineage(self.name, lineage.key_path, lineage.fullchain_path,
                               lineage.chain_file, material.names,
                               expected=material.fingerprints())


def chain_of(fullchain: bytes) -> list[x509.Certificate]:
    return certs.load_pem_chain(fullchain)


def secure(*tlsa: records.Record, ttl: int = 2, port: int = 25,
           name: str = NAME) -> lookup.Lookup:
    return lookup.Lookup(port, name, lookup.SECURE, tlsa, ttl)


def choose(site: Certbot, deployed: DeployedLineage, lookups: list[lookup.Lookup],
           now: datetime.datetime = NOW) -> gate.Choice:
    return gate.choose_material(site.lineage, deployed, site.material(), None,
                                lookups=lookups, now=now)


@pytest.fixture
def site(tmp_path: Path) -> Certbot:
    return Certbot(tmp_path / "config")


# --- records ----------------------------------------------------------------------------


def test_record_matching_every_usage_selector_and_matching_type() -> None:
    ca = CA.make()
    _, pem = ca.issue(_key())
    leaf, inter = chain_of(pem)
    for selector in (0, 1):
        for mtype in (0, 1, 2):
            assert records.Record.for_cert(leaf, 3, selector, mtype).matches([leaf, inter])
            assert records.Record.for_cert(inter, 2, selector, mtype).matches([leaf, inter])
            # Usage 3 is the leaf only; usage 2 a CA certificate of the chain only.
            assert not records.Record.for_cert(inter, 3, selector, mtype).matches([leaf, inter])
            assert not records.Record.for_cert(leaf, 2, selector, mtype).matches([leaf, inter])
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    record = records.Record.for_cert(leaf)
    assert record.text() == "3 1 1 " + hashes_hex(spki)
    assert records.record_line(25, "Mail.Example.org.", record) == (
        f"_25._tcp.mail.example.org. IN TLSA 3 1 1 {hashes_hex(spki)}")


def hashes_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_unusable_records_bind_nothing() -> None:
    ca = CA.make()
    leaf, inter = chain_of(ca.issue(_key())[1])
    good = records.Record.for_cert(leaf)
    pkix = [records.Record(usage, 1, 1, good.data) for usage in (0, 1)]
    broken = [records.Record(3, 1, 1, good.data[:20]), records.Record(3, 2, 1, good.data),
              records.Record(3, 1, 3, good.data), records.Record(3, 1, 0, b"")]
    for record in pkix + broken:
        assert not record.usable and not record.matches([leaf, inter])
    assert not secure(*pkix, *broken).binding
    assert secure(good, *pkix).binding


# --- lookups against a real DNS server ------------------------------------------------------


class TinyDNS:
    """A UDP DNS server on 127.0.0.1 answering TLSA from a table, AD bit as told."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.zone: dict[str, tuple[list[str], bool]] = {}  # owner -> (rdata texts, AD)
        self.servfail: set[str] = set()
        # owner -> the TTL an RRSIG says the zone signed (the answer's own TTL stays 300,
        # as a caching resolver counts it down)
        self.signed: dict[str, int] = {}
        self.queries: list[dns.message.Message] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1@{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if not wire:  # shut down by close()
                return
            query = dns.message.from_wire(wire)
            self.queries.append(query)
            reply = dns.message.make_response(query)
            qname = query.question[0].name.to_text().lower()
            if qname in self.servfail:
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif qname in self.zone:
                texts, ad = self.zone[qname]
                reply.answer.append(dns.rrset.from_text(qname, 300, "IN", "TLSA", *texts))
                if qname in self.signed:
                    reply.answer.append(dns.rrset.from_text(
                        qname, 300, "IN", "RRSIG",
                        f"TLSA 13 4 {self.signed[qname]} 20300101000000 20200101000000 1 "
                        "example.org. " + "A" * 88))
                if ad:
                    reply.flags |= dns.flags.AD
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        # Closing alone leaves the thread blocked in recvfrom, and while it runs the lab's
        # namespaces cannot be entered (every later end-to-end test would be skipped):
        # shutdown wakes it, even on an unconnected socket (which also says ENOTCONN).
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def tiny_dns() -> Iterator[TinyDNS]:
    server = TinyDNS()
    yield server
    server.close()


def test_lookup_obeys_signed_records_validated_or_not(tiny_dns: TinyDNS) -> None:
    record = "3 1 1 " + "ab" * 32
    tiny_dns.zone["_25._tcp.mail.example.org."] = ([record], True)
    tiny_dns.zone["_25._tcp.signed.example.org."] = ([record], False)
    tiny_dns.signed["_25._tcp.signed.example.org."] = 3600
    tiny_dns.zone["_25._tcp.unsigned.example.org."] = ([record], False)
    tiny_dns.servfail.add("_25._tcp.bogus.example.org.")
    found = {f.name: f for f in lookup.lookup(
        ["mail.example.org", "signed.example.org", "unsigned.example.org", "bogus.example.org",
         "none.example.org", "*.example.org"], [25], tiny_dns.address)}
    assert set(found) == {"mail.example.org", "signed.example.org", "unsigned.example.org",
                          "bogus.example.org", "none.example.org"}  # no lookup for a wildcard
    assert found["mail.example.org"].status == lookup.SECURE
    assert found["mail.example.org"].binding and found["mail.example.org"].ttl == 300
    assert [r.text() for r in found["mail.example.org"].records] == [record]
    # Signed, not validated by this resolver: what validating senders see, so obeyed, with
    # the TTL the zone signed rather than the one the resolver counted down.
    assert found["signed.example.org"].status == lookup.INSECURE
    assert found["signed.example.org"].binding and found["signed.example.org"].ttl == 3600
    assert found["unsigned.example.org"].status == lookup.UNSIGNED
    assert not found["unsigned.example.org"].binding
    assert found["bogus.example.org"].status == lookup.ERROR
    assert "SERVFAIL" in found["bogus.example.org"].error
    assert found["none.example.org"].status == lookup.NONE
    for query in tiny_dns.queries:  # EDNS DO and AD set, as a DANE client sends them
        assert query.ednsflags & dns.flags.DO and query.flags & dns.flags.AD
        assert query.question[0].rdtype == dns.rdatatype.TLSA
    notes = report.lookup_notes(list(found.values()), tiny_dns.address)
    assert "does not validate DNSSEC" in notes[0] and "--postfix-tls-dane-resolver" in notes[0]
    assert "_25._tcp.signed.example.org." in notes[0]
    assert "not signed" in notes[1] and "_25._tcp.unsigned.example.org." in notes[1]


def test_silent_resolver_is_an_error_not_a_hold() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        address = f"127.0.0.1@{silent.getsockname()[1]}"
        [found] = lookup.lookup([NAME], [25], address, timeout=0.5)
    assert found.status == lookup.ERROR and "timed out" in found.error


def test_resolver_option_is_checked() -> None:
    assert lookup.parse_resolver("192.0.2.1") == ("192.0.2.1", 53)
    assert lookup.parse_resolver("::1@5353") == ("::1", 5353)
    for bad in ("resolver.example", "127.0.0.1@99999", "127.0.0.1@x"):
        with pytest.raises(errors.PluginError, match="--postfix-tls-dane-resolver"):
            lookup.parse_resolver(bad)


# --- the gate ---------------------------------------------------------------------------


def test_unsigned_records_are_reported_not_obeyed(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    site.renew(*ca.issue(_key()))
    old = records.Record.for_cert(chain_of((site.archive / "fullchain1.pem").read_bytes())[0])
    unsigned = lookup.Lookup(25, NAME, lookup.UNSIGNED, (old,), 300)
    choice = choose(site, deployed, [unsigned, lookup.Lookup(465, NAME, lookup.NONE)])
    assert choice.material.leaf_sha256 == site.material().leaf_sha256
    assert not deployed.held
    assert "not signed" in choice.notes[0] and "_25._tcp.mail.example.org." in choice.notes[0]


def test_signed_records_hold_through_a_resolver_that_does_not_validate(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    signed = lookup.Lookup(25, NAME, lookup.INSECURE, (old,), 300)
    choice = choose(site, deployed, [signed])
    assert choice.material.leaf_sha256 == deployed.expected["leaf_sha256"]
    assert deployed.held["version"] == 1 and deployed.held["publish"]
    assert "does not validate DNSSEC" in choice.notes[0]
    assert "--postfix-tls-dane-resolver" in choice.notes[0]


def test_a_failed_lookup_holds_a_renewal(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    site.renew(*ca.issue(_key()))
    failed = lookup.Lookup(587, NAME, lookup.ERROR, error="no answer (timed out)")
    choice = choose(site, deployed, [failed, lookup.Lookup(25, NAME, lookup.NONE)])
    assert choice.material.leaf_sha256 == deployed.expected["leaf_sha256"]
    assert deployed.held["version"] == 1 and choice.flag
    assert "_587._tcp.mail.example.org." in deployed.held["failed"]
    assert "cannot be checked" in choice.warnings[0] and "is held" in choice.warnings[0]
    [finding] = report.verify_checks(State(lineages={NAME: deployed}), [NAME])
    assert finding.status == "WARNING" and "timed out" in finding.message
    # The resolver is back and there are no records: the renewal goes into service.
    choice = choose(site, deployed, [lookup.Lookup(587, NAME, lookup.NONE)])
    assert not deployed.held and choice.material.leaf_sha256 == site.material().leaf_sha256


def test_a_failed_lookup_on_a_first_deploy_deploys_with_a_warning(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    deployed.expected = {}  # nothing of it in service yet
    failed = lookup.Lookup(25, NAME, lookup.ERROR, error="Network is unreachable")
    choice = choose(site, deployed, [failed])
    assert choice.material.leaf_sha256 == site.material().leaf_sha256 and not deployed.held
    assert "nothing of it is in service yet" in choice.warnings[0]


def test_activation_waits_for_the_largest_ttl_since_the_hold_began(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    new = records.Record.for_cert(site.material().leaf)
    choose(site, deployed, [secure(old, ttl=3600)])  # the old set: an hour
    assert deployed.held["ttl"] == {"_25._tcp.mail.example.org.": 3600}
    # Published with the TTL lowered to 60 s: caches may keep the old set for an hour.
    choose(site, deployed, [secure(old, new, ttl=60)])
    choice = choose(site, deployed, [secure(old, new, ttl=60)],
                    NOW + datetime.timedelta(seconds=7199))
    assert deployed.held and "2030-01-01 02:00:00" in choice.warnings[0]
    choice = choose(site, deployed, [secure(old, new, ttl=60)],
                    NOW + datetime.timedelta(seconds=7200))
    assert not deployed.held and choice.material.leaf_sha256 == site.material().leaf_sha256


def test_a_hold_in_one_instance_is_the_hold_of_every_instance(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    first, second = site.deployed(), site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    new = records.Record.for_cert(site.material().leaf)
    choose(site, first, [secure(old, ttl=600)])
    earlier = NOW - datetime.timedelta(hours=1)
    first.held["since"] = earlier.isoformat()
    # The other instance sees the new record for the first time: the first one's hold
    # (its start and the old set's TTL) decides for both.
    choice = gate.choose_material(site.lineage, second, site.material(), None,
                                  [secure(old, new, ttl=2)], NOW, others_held=[first.held])
    assert second.held["since"] == earlier.isoformat()
    assert second.held["ttl"]["_25._tcp.mail.example.org."] == 600
    assert choice.material.leaf_sha256 == second.expected["leaf_sha256"]


def test_new_key_is_held_until_its_record_has_been_seen_for_twice_the_ttl(
        site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))  # certbot's default: a new key
    new = records.Record.for_cert(site.material().leaf)

    choice = choose(site, deployed, [secure(old)])
    assert choice.material.leaf_sha256 == deployed.expected["leaf_sha256"]  # version 1 stays
    assert deployed.held["version"] == 1 and deployed.held["new_version"] == 2
    line = f"_25._tcp.mail.example.org. IN TLSA {new.text()}"
    assert deployed.held["publish"] == [line]
    assert line in choice.warnings[0] and "archive version 1" in choice.warnings[0]
    assert choice.flag  # the operation raises the held flag (dane check's timer)
    deployed.expected = choice.material.fingerprints()  # what render records

    # Published: seen now, TTL 2 s: still held for 4 s.
    choice = choose(site, deployed, [secure(old, new)], NOW)
    assert choice.material.leaf_sha256 == deployed.expected["leaf_sha256"]
    assert deployed.held["publish"] == [] and deployed.held["seen"][line]["ttl"] == 2
    assert "dane check activates it at 2030-01-01 00:00:04 UTC" in choice.warnings[0]
    choice = choose(site, deployed, [secure(old, new)], NOW + datetime.timedelta(seconds=3))
    assert deployed.held
    choice = choose(site, deployed, [secure(old, new)], NOW + datetime.timedelta(seconds=4))
    assert choice.material.leaf_sha256 == site.material().leaf_sha256
    assert not deployed.held and "activated" in choice.notes[0]


def test_a_failed_lookup_never_releases_a_hold(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    choice = choose(site, deployed, [secure(old)])
    deployed.expected = choice.material.fingerprints()
    failed = lookup.Lookup(25, NAME, lookup.ERROR, error="no answer (timed out)")
    choice = choose(site, deployed, [failed], NOW + datetime.timedelta(days=1))
    assert deployed.held and choice.material.leaf_sha256 == deployed.expected["leaf_sha256"]
    assert any("is held" in warning for warning in choice.warnings)
    # The records went away (validated NXDOMAIN): nothing pins the key any more.
    choice = choose(site, deployed, [lookup.Lookup(25, NAME, lookup.NONE)])
    assert not deployed.held and choice.material.leaf_sha256 == site.material().leaf_sha256


def test_dynamic_update_settings_and_the_retired_records(site: Certbot, tmp_path: Path) -> None:
    credentials = tmp_path / "rfc2136.ini"
    credentials.write_text("dns_rfc2136_server = 192.0.2.53\ndns_rfc2136_name = k\n")
    with pytest.raises(errors.PluginError, match="does not set dns_rfc2136_secret"):
        update.Updater.from_file(str(credentials))
    credentials.write_text("# comment\ndns_rfc2136_server = 192.0.2.53\ndns_rfc2136_port = 5353"
                           "\ndns_rfc2136_name = k.\ndns_rfc2136_secret = c2VjcmV0\n")
    updater = update.Updater.from_file(str(credentials))
    assert (updater.server, updater.port, updater.key_name, updater.algorithm) == (
        "192.0.2.53", 5353, "k.", "hmac-sha512")
    with pytest.raises(errors.PluginError, match="cannot be read"):
        update.Updater.from_file(str(tmp_path / "missing.ini"))

    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    deployed.dane_update = str(tmp_path / "missing.ini")
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    new = records.Record.for_cert(site.material().leaf)
    choice = choose(site, deployed, [secure(old)])
    line = f"_25._tcp.mail.example.org. IN TLSA {new.text()}"
    assert choice.publish == [(line, 2)]  # the operation sends it after render
    notes: list[str] = []
    warnings: list[str] = []
    assert not update.send_update(deployed, choice.publish, [], notes, warnings)
    assert any("dynamic update" in w and "publish the records by hand" in w for w in warnings)
    deployed.expected = choice.material.fingerprints()
    choose(site, deployed, [secure(old, new)], NOW)
    choice = choose(site, deployed, [secure(old, new)], NOW + datetime.timedelta(seconds=4))
    assert not deployed.held and choice.flag  # dane check removes the retired record
    assert deployed.dane_retire == [{
        "record": f"_25._tcp.mail.example.org. IN TLSA {old.text()}",
        "after": (NOW + datetime.timedelta(seconds=8)).isoformat()}]


def test_every_port_and_name_must_match(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key(), (NAME, "smtp.example.org")))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key(), (NAME, "smtp.example.org")))
    new = records.Record.for_cert(site.material().leaf)
    lookups = [secure(new, old), secure(old, port=587), secure(old, name="smtp.example.org")]
    choose(site, deployed, lookups)
    assert deployed.held["publish"] == [
        f"_587._tcp.mail.example.org. IN TLSA {new.text()}",
        f"_25._tcp.smtp.example.org. IN TLSA {new.text()}",
    ]


def test_reused_key_and_unchanged_intermediate_need_no_wait(site: Certbot) -> None:
    ca = CA.make()
    key = _key()
    site.renew(*ca.issue(key))
    deployed = site.deployed()
    site.renew(*ca.issue(key))  # reuse_key: the same 3 1 1 record matches both
    record = records.Record.for_cert(site.material().leaf)
    choice = choose(site, deployed, [secure(record)])
    assert choice.material.leaf_sha256 == site.material().leaf_sha256 and not deployed.held

    deployed = site.deployed()
    site.renew(*ca.issue(_key()))  # a new key, same intermediate: 2 1 1 still matches
    ta = records.Record.for_cert(ca.inter, 2)
    choice = choose(site, deployed, [secure(ta)])
    assert choice.material.leaf_sha256 == site.material().leaf_sha256 and not deployed.held


def test_new_intermediate_under_2_1_1_is_held_with_its_record(site: Certbot) -> None:
    r10, r11 = CA.make("R10"), CA.make("R11")
    site.renew(*r10.issue(_key()))
    deployed = site.deployed()
    site.renew(*r11.issue(_key()))
    choose(site, deployed, [secure(records.Record.for_cert(r10.inter, 2))])
    assert deployed.held["publish"] == [
        f"_25._tcp.mail.example.org. IN TLSA {records.Record.for_cert(r11.inter, 2).text()}"]


def test_a_record_set_that_trusts_nothing_served_does_not_hold(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    site.renew(*ca.issue(_key()))
    new = records.Record.for_cert(site.material().leaf)
    stale = records.Record.for_cert(chain_of(ca.issue(_key())[1])[0])
    # The new key's record is fresh, but the old key was not trusted either: no wait.
    choice = choose(site, deployed, [secure(stale, new)])
    assert choice.material.leaf_sha256 == site.material().leaf_sha256 and not deployed.held


def test_postfix_before_3_4_cannot_hold(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    config = postfix_config.PostfixConfig({"mail_version": "3.3.0"}, {}, [], set())
    choice = gate.choose_material(site.lineage, deployed, site.material(), config,
                                  lookups=[secure(old)], now=NOW)
    assert choice.material.leaf_sha256 == site.material().leaf_sha256 and not deployed.held
    assert "reads live/ directly" in choice.warnings[0]


def test_first_deploy_that_validated_records_reject_is_refused(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    lineage = site.lineage
    fresh = DeployedLineage(NAME, lineage.key_path, lineage.fullchain_path, lineage.chain_file)
    other = records.Record.for_cert(chain_of(ca.issue(_key())[1])[0])
    with pytest.raises(errors.PluginError, match="Nothing was changed: publish _25._tcp"):
        choose(site, fresh, [secure(other)])
    fresh.dane = records.IGNORE
    assert choose(site, fresh, [secure(other)]).material.leaf_sha256 == \
        site.material().leaf_sha256


def test_served_version_gone_from_the_archive_deploys_with_a_warning(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    (site.archive / "fullchain1.pem").unlink()
    choice = choose(site, deployed, [secure(old)])
    assert choice.material.leaf_sha256 == site.material().leaf_sha256
    assert "no longer in the archive" in choice.warnings[0] and not deployed.held


def test_the_gate_asks_no_dns_itself(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    site.renew(*ca.issue(_key()))
    assert gate.needs_lookup(deployed, site.material())
    with pytest.raises(ValueError, match="not made before render"):
        gate.choose_material(site.lineage, deployed, site.material(), None)


def test_ignore_and_already_served_look_nothing_up(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    # No lookups given and none made: the material is already in service.
    choice = gate.choose_material(site.lineage, deployed, site.material(), None)
    assert choice.material.leaf_sha256 == site.material().leaf_sha256
    site.renew(*ca.issue(_key()))
    deployed.dane = records.IGNORE
    deployed.held = {"version": 1}
    choice = gate.choose_material(site.lineage, deployed, site.material(), None)
    assert choice.material.leaf_sha256 == site.material().leaf_sha256 and not deployed.held


def test_rollback_rebuilds_the_held_version(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    choose(site, deployed, [secure(old)])
    held = gate.held_material(site.lineage, deployed)
    assert held.leaf_sha256 != site.material().leaf_sha256
    assert archive.served_chain(str(site.config_dir), deployed)[0] == held.leaf


def test_verify_warns_while_held_and_is_critical_well_before_expiry(site: Certbot) -> None:
    state = State()
    ca = CA.make()
    # CRITICAL once the held certificate would itself be judged expiring (expiry.judge):
    # under 14 days left of 90; under 14/90 of a 6-day certificate's lifetime (22 hours).
    for lifetime, days, status in ((90, 60, "WARNING"), (90, 13, "CRITICAL"),
                                   (6, 2, "WARNING"), (6, 0.9, "CRITICAL")):
        site = Certbot(site.config_dir.parent / f"c{lifetime}-{days}")
        site.renew(*ca.issue(_key(), days=lifetime))
        deployed = site.deployed()
        old = records.Record.for_cert(site.material().leaf)
        site.renew(*ca.issue(_key()))
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
        when = start + datetime.timedelta(days=lifetime - days)
        choose(site, deployed, [secure(old)], when)
        finding = report.held_finding(NAME, deployed.held, when)
        assert finding.status == status, (lifetime, days, finding)
        assert deployed.held["publish"][0] in finding.message
        state.lineages[NAME] = deployed
        assert report.held_status(deployed.held, when) == status  # doctor's rule too
    assert report.verify_checks(State(), [NAME]) == []


def test_records_for_a_rollover(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    current = records.Record.for_cert(site.material().leaf)
    renewal = site.config_dir / "renewal" / f"{NAME}.conf"
    renewal.parent.mkdir()
    renewal.write_text("version = 2.1.0\n[renewalparams]\nreuse_key = False\n")
    lines = records._lineage_records(str(site.config_dir), deployed, [25, 587])
    text = "\n".join(lines)
    assert f"_25._tcp.mail.example.org. IN TLSA {current.text()}" in lines
    assert f"_587._tcp.mail.example.org. IN TLSA {current.text()}" in lines
    assert "reuse_key is off" in text
    assert f"_25._tcp.mail.example.org. IN TLSA {records.Record.for_cert(ca.inter, 2).text()}" \
        in lines and "rotates" in text
    renewal.write_text("[renewalparams]\nreuse_key = True\n")
    assert "reuse_key is on" in "\n".join(
        records._lineage_records(str(site.config_dir), deployed, [25]))

    site.renew(*ca.issue(_key()))
    choose(site, deployed, [secure(current)])
    lines = records._lineage_records(str(site.config_dir), deployed, [25])
    upcoming = records.Record.for_cert(site.material().leaf)
    assert f"_25._tcp.mail.example.org. IN TLSA {current.text()}" in lines
    assert f"_25._tcp.mail.example.org. IN TLSA {upcoming.text()}" in lines


def test_reuse_key_read_from_the_renewal_configuration(tmp_path: Path) -> None:
    (tmp_path / "renewal").mkdir()
    assert records.reuse_key(str(tmp_path), "a") is None
    (tmp_path / "renewal" / "a.conf").write_text("[renewalparams]\nreuse_key = True\n")
    assert records.reuse_key(str(tmp_path), "a") is True
    (tmp_path / "renewal" / "a.conf").write_text("[renewalparams]\nauthenticator = x\n")
    assert records.reuse_key(str(tmp_path), "a") is False


def test_doctor_names_what_dns_and_renewals_will_break(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    chain = [site.material().leaf, *site.material().chain]
    (site.config_dir / "renewal").mkdir()
    (site.config_dir / "renewal" / f"{NAME}.conf").write_text("[renewalparams]\n")
    stale = records.Record.for_cert(chain_of(ca.issue(_key())[1])[0])

    def statuses(*found: lookup.Lookup) -> list[tuple[str, str]]:
        return [(c.status, c.message) for c in report._doctor_lineage(
            str(site.config_dir), deployed, chain, found)]

    [(status, message)] = statuses(secure(stale))
    assert status == "CRITICAL" and "match nothing Postfix serves" in message
    [(status, message)] = statuses(secure(records.Record.for_cert(chain[0])))
    assert status == "WARNING" and "reuse_key is off" in message
    [(status, message)] = statuses(secure(records.Record.for_cert(chain[1], 2)))
    assert status == "WARNING" and "rotates" in message
    [(status, _)] = statuses(secure(records.Record.for_cert(chain[1], 2),
                                    records.Record.for_cert(chain[0])))
    assert status == "OK"
    [(status, message)] = statuses(lookup.Lookup(25, NAME, lookup.NONE))
    assert status == "OK" and "no signed TLSA records" in message
    [(status, message)] = statuses(lookup.Lookup(25, NAME, lookup.ERROR, error="timed out"))
    assert status == "WARNING" and message.startswith("the TLSA lookups of _25._tcp")
    assert "would be held" in message
    # A resolver that does not validate, a zone that is not signed: named.
    [(status, message), _] = statuses(lookup.Lookup(25, NAME, lookup.INSECURE,
                                                    (records.Record.for_cert(chain[1], 2),
                                                     records.Record.for_cert(chain[0]))))
    assert status == "WARNING" and "does not validate DNSSEC" in message
    [(status, message), (status2, _)] = statuses(lookup.Lookup(25, NAME, lookup.UNSIGNED,
                                                               (stale,)))
    assert status == "WARNING" and "not signed" in message and status2 == "OK"


def test_flag_follows_the_states(tmp_path: Path) -> None:
    config_dir = str(tmp_path)
    state = State()
    state.lineages["a"] = DeployedLineage("a", "/k", "/f", "/c", held={"version": 1})
    state.save(config_dir)
    flag.sync_flag(config_dir)
    assert os.path.exists(flag.flag_path(config_dir))
    state.lineages["a"].held = {}
    state.save(config_dir)
    flag.sync_flag(config_dir)
    assert not os.path.exists(flag.flag_path(config_dir))


def test_the_names_senders_use() -> None:
    assert names.covers("*.example.com", "mx.example.com")
    assert not names.covers("*.example.com", "example.com")
    assert not names.covers("*.example.com", "a.mx.example.com")
    state = State(lineages={
        "wild": DeployedLineage("wild", "k", "f", "c", ["example.com", "*.example.com"]),
        "other": DeployedLineage("other", "k", "f", "c", ["other.org"])},
        order=["other", "wild"])
    # myhostname covered by the wildcard: looked up; a wildcard itself never is.
    assert names.sender_names([(state, "mx.example.com")], "wild",
                              ["example.com", "*.example.com"], []) == [
        "example.com", "mx.example.com"]
    # A name no lineage lists goes with the default certificate (the first deployed).
    assert names.sender_names([(state, "host.lan")], "other", ["other.org"],
                              ["mail.other.net"], ["extra.example.net"]) == [
        "extra.example.net", "host.lan", "mail.other.net", "other.org"]
    assert names.sender_names([(state, "host.lan")], "wild", ["example.com", "*.example.com"],
                              ["mail.other.net"]) == ["example.com"]
    assert names.domains_of(["*.example.com", "mail.example.org"]) == [
        "example.com", "mail.example.org"]
    assert names.is_local("127.0.0.1") and not names.is_local("192.0.2.1")
    assert names.local_mail_hosts({"a.example": ["192.0.2.1"], "b.example": ["127.0.0.1"]}) \
        == ["b.example"]


def test_rollback_never_serves_a_key_older_than_one_in_service(site: Certbot) -> None:
    ca = CA.make()
    site.renew(*ca.issue(_key()))
    deployed = site.deployed()
    old = records.Record.for_cert(site.material().leaf)
    site.renew(*ca.issue(_key()))
    choose(site, deployed, [secure(old)])
    restored = dict(deployed.held)  # what the checkpoint holds: held at version 1
    state = State(lineages={NAME: deployed})
    deployed.held = {}  # activated: version 2 in service
    history.record(str(site.config_dir), state)
    assert history.newest(str(site.config_dir), NAME) == 2
    deployed.held = {**restored}
    history.record(str(site.config_dir), state)  # never lowered
    material = gate.held_material(site.lineage, deployed, history.newest(str(site.config_dir),
                                                                         NAME))
    assert material.leaf_sha256 == site.material().leaf_sha256 and not deployed.held
    # Without a newer version in service the held one stays.
    deployed.held = {**restored}
    assert gate.held_material(site.lineage, deployed, 1).leaf_sha256 != \
        site.material().leaf_sha256
