"""DANE (RFC 7672): never put into service a chain the published TLSA records don't match.

Senders that validate DANE look up ``_25._tcp.MX-HOST`` TLSA and refuse (defer)
mail when the certificate Postfix serves matches none of the records. A
renewal with a new key, or a new Let's Encrypt intermediate under ``2 1 1``,
does exactly that until someone fixes DNS by hand. So every time the pipeline
loads a lineage's files to put them into service (``pipeline.render``), it asks
``choose_material`` which material to serve:

- the TLSA records of every name of the lineage, on every port Postfix serves
  among 25, 465 and 587, are looked up through the system resolver (or
  ``--postfix-tls-dane-resolver``) with DNSSEC requested; an answer counts only
  when the resolver validated it (AD bit), as DANE clients do. Unsigned records
  are reported, not obeyed. A failed lookup never blocks anything by itself.
- validated, usable records (usages 3 and 2, selectors 0/1, matching types
  0/1/2) that the new chain does not match *hold* the lineage: Postfix keeps
  serving the archive version it serves now, the state records the hold, and
  the records to publish are printed.
- a held lineage is activated once a validated record matching the new chain
  has been seen for twice its TTL (every resolver's cached copy of the old
  record set has expired by then): ``certbot-postfix-tls dane check`` (hourly
  timer while anything is held) and every post hook re-check.

``--postfix-tls-dane ignore`` turns all of this off for a lineage.
"""

from __future__ import annotations

import configparser
import datetime
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsigkeyring
import dns.update
from certbot import errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certbot_postfix_tls._internal import certs, constants, findings, pipeline
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.state import DeployedLineage, State

logger = logging.getLogger(__name__)

Warn = Callable[[str], None]

SMTP_PORTS = constants.PUBLIC_SMTP_PORTS  # where Postfix's certificate meets DANE senders
IGNORE = "ignore"  # --postfix-tls-dane ignore
MODES = ("auto", IGNORE)
LOOKUP_TIMEOUT = 4.0  # seconds per lookup; a silent resolver costs this once (parallel)
PARALLEL_LOOKUPS = 16
EXPIRY_CRITICAL_DAYS = 7  # verify is CRITICAL when the held certificate expires sooner
# <config-dir>/postfix-tls/dane-held exists while some lineage is held: the condition of
# the Debian package's hourly timer (and cron entry) that runs ``dane check``.
HELD_FLAG = "dane-held"

SECURE, INSECURE, NONE, ERROR = "secure", "insecure", "none", "error"
_DIGEST_SIZES = {1: 32, 2: 64}


# --- records ----------------------------------------------------------------------------


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


@dataclass(frozen=True)
class Record:
    """One TLSA record's data: usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def for_cert(cls, cert: x509.Certificate, usage: int = 3, selector: int = 1,
                 mtype: int = 1) -> Record:
        return cls(usage, selector, mtype, _digest(_selected(cert, selector), mtype))

    @property
    def usable(self) -> bool:
        """What an SMTP DANE client uses (RFC 7672: usages 0 and 1 are not)."""
        return (self.usage in (2, 3) and self.selector in (0, 1) and self.mtype in (0, 1, 2)
                and len(self.data) == _DIGEST_SIZES.get(self.mtype, len(self.data))
                and bool(self.data))

    def matches(self, chain: Sequence[x509.Certificate]) -> bool:
        """Usage 3: the leaf (``chain[0]``); usage 2: a CA certificate of the served chain."""
        if not self.usable or not chain:
            return False
        candidates = chain[:1] if self.usage == 3 else chain[1:]
        return any(_digest(_selected(cert, self.selector), self.mtype) == self.data
                   for cert in candidates)

    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def owner(port: int, name: str) -> str:
    """The TLSA owner name of ``name`` on ``port``, absolute."""
    return f"_{port}._tcp.{name.rstrip('.').lower()}."


def record_line(port: int, name: str, record: Record) -> str:
    """A record as a zone file line, e.g. ``_25._tcp.mail.example.org. IN TLSA 3 1 1 ...``."""
    return f"{owner(port, name)} IN TLSA {record.text()}"


# --- lookups ----------------------------------------------------------------------------


@dataclass
class Lookup:
    """The TLSA answer for one owner name, as the resolver gave it."""

    port: int
    name: str
    status: str  # SECURE (validated: AD bit), INSECURE (not validated), NONE, ERROR
    records: tuple[Record, ...] = ()
    ttl: int = 0
    error: str = ""

    @property
    def owner(self) -> str:
        return owner(self.port, self.name)

    @property
    def usable(self) -> list[Record]:
        return [record for record in self.records if record.usable]

    @property
    def binding(self) -> bool:
        """Validated usable records: DANE clients require a match."""
        return self.status == SECURE and bool(self.usable)

    def matching(self, chain: Sequence[x509.Certificate]) -> list[Record]:
        return [record for record in self.usable if record.matches(chain)]

    def line(self, record: Record) -> str:
        return record_line(self.port, self.name, record)


def parse_resolver(value: str) -> tuple[str, int]:
    """``ADDR`` or ``ADDR@PORT`` (--postfix-tls-dane-resolver) as (address, port)."""
    address, _, port = value.strip().partition("@")
    try:
        ipaddress.ip_address(address)
        number = int(port) if port else 53
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        raise errors.PluginError(
            f"--postfix-tls-dane-resolver {value} is not an IP address (optionally ADDR@PORT): "
            "give the address of a validating resolver, e.g. 127.0.0.1."
        ) from None
    return address, number


def resolver_label(address: Optional[str]) -> str:
    return f"the resolver {address}" if address else "the system resolver (/etc/resolv.conf)"


def make_resolver(address: Optional[str] = None,
                  timeout: float = LOOKUP_TIMEOUT) -> dns.resolver.Resolver:
    """A stub resolver that asks for DNSSEC (EDNS DO, and AD so the answer says whether the
    resolver validated it); ``address``: that resolver instead of /etc/resolv.conf's."""
    resolver = dns.resolver.Resolver(configure=address is None)
    if address is not None:
        host, port = parse_resolver(address)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, dns.resolver.NoNameservers):
        # dnspython lists every server's answer; SERVFAIL from a validating resolver is
        # usually a bogus signature.
        text = str(exc)
        return "SERVFAIL (a bogus signature, or no server answered)" if "SERVFAIL" in text \
            else text.split(": ", 1)[-1]
    if isinstance(exc, dns.exception.Timeout):
        return "no answer (timed out)"
    return str(exc) or type(exc).__name__


def lookup_one(resolver: dns.resolver.Resolver, port: int, name: str) -> Lookup:
    qname = owner(port, name)
    try:
        answer = resolver.resolve(dns.name.from_text(qname), dns.rdatatype.TLSA,
                                  raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return Lookup(port, name, NONE)
    except (dns.exception.DNSException, OSError) as exc:
        return Lookup(port, name, ERROR, error=_error_text(exc))
    if answer.rrset is None:
        return Lookup(port, name, NONE)
    records = tuple(Record(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer.rrset)
    secure = bool(answer.response.flags & dns.flags.AD)
    return Lookup(port, name, SECURE if secure else INSECURE, records, int(answer.rrset.ttl))


def query_names(names: Iterable[str]) -> list[str]:
    """The names to look up: concrete host names (a wildcard is nobody's MX)."""
    return sorted({n.rstrip(".").lower() for n in names if n and not n.startswith("*.")})


def lookup(names: Iterable[str], ports: Iterable[int], resolver_address: Optional[str] = None,
           timeout: float = LOOKUP_TIMEOUT) -> list[Lookup]:
    """TLSA of every name on every port, looked up side by side."""
    jobs = [(port, name) for name in query_names(names) for port in sorted(set(ports))]
    if not jobs:
        return []
    try:
        resolver = make_resolver(resolver_address, timeout)
    except dns.resolver.NoResolverConfiguration as exc:
        return [Lookup(port, name, ERROR, error=f"no resolver configured ({exc})")
                for port, name in jobs]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_LOOKUPS, len(jobs))) as pool:
        return list(pool.map(lambda job: lookup_one(resolver, *job), jobs))


def smtp_ports(config: postfix_config.PostfixConfig) -> list[int]:
    """The ports among 25, 465 and 587 where Postfix serves TLS (25 when none is found)."""
    found = {endpoint.port for endpoint in postfix_listeners.endpoints(config, "127.0.0.1",
                                                             list(SMTP_PORTS))}
    return sorted(found & set(SMTP_PORTS)) or [25]


# --- archive versions -------------------------------------------------------------------

_VERSION = re.compile(r"^fullchain(\d+)\.pem$")


def _archive_dir(lineage: certs.Lineage) -> Optional[str]:
    if not lineage.in_live:
        return None
    return os.path.dirname(os.path.realpath(lineage.fullchain_path))


def live_version(lineage: certs.Lineage) -> Optional[int]:
    """The archive version live/ points at now."""
    match = _VERSION.match(os.path.basename(os.path.realpath(lineage.fullchain_path)))
    return int(match.group(1)) if match and lineage.in_live else None


def _versions(lineage: certs.Lineage) -> list[int]:
    directory = _archive_dir(lineage)
    if directory is None or not os.path.isdir(directory):
        return []
    found = [_VERSION.match(entry) for entry in os.listdir(directory)]
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def version_paths(lineage: certs.Lineage, version: int) -> tuple[str, str]:
    """(privkeyN.pem, fullchainN.pem) of an archive version."""
    directory = _archive_dir(lineage) or os.path.dirname(lineage.fullchain_path)
    return (os.path.join(directory, f"privkey{version}.pem"),
            os.path.join(directory, f"fullchain{version}.pem"))


def load_version(lineage: certs.Lineage, version: int) -> certs.Material:
    """Key and full chain of one archive version, checked like the live ones."""
    key, fullchain = version_paths(lineage, version)
    return certs.load_material(certs.Lineage(lineage.name, key, fullchain, lineage.config_dir,
                                             False))


def held_material(lineage: certs.Lineage, deployed: DeployedLineage) -> certs.Material:
    """What Postfix serves for a lineage without asking DNS again (after a rollback): the
    held archive version while held, else the live files."""
    if deployed.held and deployed.dane != IGNORE:
        return load_version(lineage, int(deployed.held["version"]))
    return certs.load_material(lineage)


def _chain_of(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as handle:
        return certs.load_pem_chain(handle.read())


def _served(lineage: certs.Lineage, deployed: DeployedLineage,
            new: certs.Material) -> Optional[tuple[int, certs.Material]]:
    """The archive version Postfix serves now (the held one, else the one whose leaf the
    state recorded at the last deploy), when it is not the new one."""
    wanted = str(deployed.expected.get("leaf_sha256", ""))
    if not wanted or wanted == new.leaf_sha256:
        return None
    held = deployed.held.get("version")
    candidates = ([int(held)] if held else []) + _versions(lineage)
    for version in dict.fromkeys(candidates):
        try:
            if certs.sha256_der(_chain_of(version_paths(lineage, version)[1])[0]) != wanted:
                continue
            return version, load_version(lineage, version)
        except (OSError, ValueError, errors.Error):
            continue
    return None


# --- the gate ---------------------------------------------------------------------------


@dataclass
class Choice:
    """What ``render`` serves for a lineage, and what to tell the administrator."""

    material: certs.Material
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _time(text: Any) -> datetime.datetime:
    return datetime.datetime.fromisoformat(str(text))


def _chain(material: certs.Material) -> list[x509.Certificate]:
    return [material.leaf, *material.chain]


def _publish(binding: Sequence[Lookup], chain: Sequence[x509.Certificate]) -> list[str]:
    """For each validated record set the chain does not match: the record(s) of the same
    kinds (usage, selector, matching type) that would match it."""
    lines: list[str] = []
    for found in binding:
        if found.matching(chain):
            continue
        kinds = sorted({(r.usage, r.selector, r.mtype) for r in found.usable}, reverse=True)
        for usage, selector, mtype in kinds:
            cert = chain[0] if usage == 3 else (chain[1] if len(chain) > 1 else None)
            if cert is not None:
                lines.append(found.line(Record.for_cert(cert, usage, selector, mtype)))
    return list(dict.fromkeys(lines))


def _texts(records: Iterable[Record]) -> str:
    return ", ".join(record.text() for record in records)


def _lookup_notes(lookups: Sequence[Lookup], resolver: Optional[str]) -> tuple[list[str],
                                                                              list[str]]:
    notes = [f"DANE: {found.owner} has TLSA records ({_texts(found.records)}) that "
             f"{resolver_label(resolver)} did not validate (no AD bit: an unsigned zone, or a "
             "resolver that does not check DNSSEC): reported, not obeyed"
             for found in lookups if found.status == INSECURE and found.records]
    failed = [found for found in lookups if found.status == ERROR]
    warnings = []
    if failed:
        reasons = sorted({found.error for found in failed})
        warnings.append(
            f"DANE: the TLSA lookups of {', '.join(f.owner for f in failed)} failed through "
            f"{resolver_label(resolver)} ({'; '.join(reasons)}): the certificate was deployed "
            "without checking them; certbot-postfix-tls dane check looks again")
    return notes, warnings


def choose_material(lineage: certs.Lineage, deployed: DeployedLineage,
                    material: certs.Material, config: Optional[postfix_config.PostfixConfig],
                    lookups: Optional[Sequence[Lookup]] = None,
                    now: Optional[datetime.datetime] = None) -> Choice:
    """The material to put into service for ``lineage`` (its live files: ``material``).

    The new material when no validated TLSA record binds its names, or when it matches
    every validated record set and the matching records have been seen long enough
    (twice their TTL, unless they match what is served now too); otherwise the archive
    version served now, with ``deployed.held`` recording the hold. A first deploy that
    validated records reject is refused. Updates ``deployed.held``; ``lookups`` (tests)
    replaces the DNS queries.
    """
    now = now or _now()
    served_leaf = str(deployed.expected.get("leaf_sha256", ""))
    if deployed.dane == IGNORE or (not deployed.held and served_leaf == material.leaf_sha256):
        # Turned off, or already in service (the gate passed when it was put there).
        deployed.held = {}
        return Choice(material)
    names = list(material.names) + list(deployed.names)
    if lookups is None:
        ports = smtp_ports(config) if config is not None else [25]
        lookups = lookup(names, ports, deployed.dane_resolver)
    notes, warnings = _lookup_notes(lookups, deployed.dane_resolver)
    binding = [found for found in lookups if found.binding]
    was_held = dict(deployed.held)
    new_chain = _chain(material)
    if was_held and any(found.status == ERROR for found in lookups):
        # A failed lookup never releases a hold either: only validated evidence does.
        served = _served(lineage, deployed, material)
        if served is not None:
            warnings.append(held_message(lineage.name, was_held, now))
            return Choice(served[1], notes, warnings)
    if not binding:
        deployed.held = {}
        if was_held:
            notes.append(f"DANE: no validated TLSA record binds {lineage.name} any more: "
                         "its renewed certificate is served")
        return Choice(material, notes, warnings)
    served = _served(lineage, deployed, material)
    served_chain = _chain(served[1]) if served else []
    seen: dict[str, dict[str, Any]] = {}
    ready = True
    waiting_until: list[datetime.datetime] = []
    for found in binding:
        matching = found.matching(new_chain)
        if not matching:
            ready = False
            continue
        if not served_chain or not found.matching(served_chain):
            continue  # nothing served is trusted by this set: nothing to lose
        if any(record.matches(served_chain) for record in matching):
            continue  # the same record trusts both: it has been there all along
        set_ready = False
        for record in matching:
            line = found.line(record)
            before = was_held.get("seen", {}).get(line, {})
            first = _time(before["first"]) if before else now
            ttl = max(int(before.get("ttl", 0)), found.ttl)
            seen[line] = {"first": first.isoformat(), "ttl": ttl}
            due = first + datetime.timedelta(seconds=2 * ttl)
            if due <= now:
                set_ready = True
            else:
                waiting_until.append(due)
        ready = ready and set_ready
    if ready:
        deployed.held = {}
        if was_held:
            notes.append(f"DANE: activated the renewed certificate of {lineage.name}: validated "
                         "TLSA records match it and have been published for twice their TTL")
            if deployed.dane_update and served_chain:
                # The retired key's records go once no cache can hold a set without the
                # new one any more: twice their TTL after the activation.
                deployed.dane_retire += [
                    {"record": found.line(r),
                     "after": (now + datetime.timedelta(seconds=2 * found.ttl)).isoformat()}
                    for found in binding for r in found.usable
                    if r.matches(served_chain) and not r.matches(new_chain)]
                if deployed.dane_retire:
                    _raise_flag(lineage.config_dir)
        return Choice(material, notes, warnings)
    publish = _publish(binding, new_chain)
    if served is None:  # (then ready is False only when some validated set rejects it)
        if not deployed.expected:
            raise errors.PluginError(
                f"Validated TLSA records of {lineage.name} do not match its certificate: DANE "
                f"senders would refuse mail. Nothing was changed: publish {'; '.join(publish)} "
                "and deploy again, or deploy with --postfix-tls-dane ignore."
            )
        # What is served cannot be found in the archive any more: nothing to hold on to.
        warnings.append(
            f"DANE: the renewed certificate of {lineage.name} matches no validated TLSA record "
            f"and the one served before is no longer in the archive, so it is deployed: "
            f"publish {'; '.join(publish)}")
        deployed.held = {}
        return Choice(material, notes, warnings)
    if config is not None and config.version < (3, 4):
        # Without smtpd_tls_chain_files Postfix reads live/ itself: nothing can be held.
        warnings.append(
            f"DANE: Postfix {'.'.join(map(str, config.version))} reads live/ directly (no "
            f"smtpd_tls_chain_files before 3.4), so the renewed certificate of {lineage.name} "
            f"is served though validated TLSA records do not match it: publish "
            f"{'; '.join(publish)}")
        deployed.held = {}
        return Choice(material, notes, warnings)
    version, held = served
    deployed.held = {
        "version": version,
        "new_version": live_version(lineage),
        "since": str(was_held.get("since") or now.isoformat()),
        "not_after": held.not_after.isoformat(),
        "new": material.fingerprints(),
        "publish": publish,
        "seen": seen,
        "ready_at": max(waiting_until).isoformat() if waiting_until and not publish else "",
    }
    _raise_flag(lineage.config_dir)
    warnings.append(held_message(lineage.name, deployed.held, now))
    if deployed.dane_update and publish:
        ttls = {found.owner: found.ttl for found in binding}
        _send_update(deployed, [(line, ttls.get(line.split()[0], 0)) for line in publish], [],
                     notes, warnings)
    return Choice(held, notes, warnings)


def held_message(name: str, held: dict[str, Any], now: Optional[datetime.datetime] = None
                 ) -> str:
    """One sentence: what is held, why, and what to do."""
    now = now or _now()
    expires = _time(held["not_after"])
    days = (expires - now).days
    head = (f"DANE: lineage {name} is held: Postfix keeps serving archive version "
            f"{held['version']} (expires {expires:%Y-%m-%d}, in {days} days) because ")
    if held.get("publish"):
        return (head + "validated TLSA records do not match its renewed certificate; publish "
                + "; ".join(held["publish"])
                + " (then certbot-postfix-tls dane check activates it twice their TTL later)")
    ready = str(held.get("ready_at") or "")
    when = f" at {_time(ready):%Y-%m-%d %H:%M:%S} UTC" if ready else ""
    return (head + "the TLSA records matching its renewed certificate are new: resolvers may "
            f"still cache the old set; certbot-postfix-tls dane check activates it{when}, "
            "twice their TTL after they were first seen")


# --- publishing by RFC 2136 (--postfix-tls-dane-update) ------------------------------------

_CREDENTIALS = {"server": "dns_rfc2136_server", "name": "dns_rfc2136_name",
                "secret": "dns_rfc2136_secret"}


@dataclass(frozen=True)
class Updater:
    """Dynamic updates with TSIG, configured like certbot-dns-rfc2136's credentials file."""

    path: str
    server: str
    port: int
    key_name: str
    secret: str
    algorithm: str

    @classmethod
    def from_file(cls, path: str) -> Updater:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise errors.PluginError(
                f"--postfix-tls-dane-update {path} cannot be read ({exc.strerror}): give a "
                "certbot-dns-rfc2136 credentials file (server, port, name, secret, algorithm)."
            ) from None
        values = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith("#"):
                values[key.strip()] = value.strip()
        missing = [key for key in _CREDENTIALS.values() if not values.get(key)]
        if missing:
            raise errors.PluginError(
                f"--postfix-tls-dane-update {path} does not set {', '.join(missing)}: add "
                "them as certbot-dns-rfc2136 does (dns_rfc2136_server = ADDRESS, ...).")
        try:
            port = int(values.get("dns_rfc2136_port", "53"))
            ipaddress.ip_address(values[_CREDENTIALS["server"]])
        except ValueError:
            raise errors.PluginError(
                f"--postfix-tls-dane-update {path}: dns_rfc2136_server must be an IP address "
                "and dns_rfc2136_port a number.") from None
        return cls(path, values[_CREDENTIALS["server"]], port, values[_CREDENTIALS["name"]],
                   values[_CREDENTIALS["secret"]],
                   values.get("dns_rfc2136_algorithm", "HMAC-SHA512").lower())

    def _zone(self, owner: str) -> dns.name.Name:
        """The zone the primary is authoritative for that holds ``owner`` (SOA walk, as
        certbot-dns-rfc2136 does)."""
        name = dns.name.from_text(owner)
        while len(name.labels) > 1:
            query = dns.message.make_query(name, dns.rdatatype.SOA)
            reply = dns.query.udp(query, self.server, port=self.port, timeout=LOOKUP_TIMEOUT)
            if reply.rcode() == dns.rcode.NOERROR and any(
                    rrset.rdtype == dns.rdatatype.SOA and rrset.name == name
                    for rrset in reply.answer):
                return name
            name = name.parent()
        raise errors.PluginError(f"{self.server} is authoritative for no zone holding {owner}")

    def send(self, add: Sequence[tuple[str, int]], delete: Sequence[str]) -> None:
        """Add (record line, TTL) and delete record lines, one update per zone."""
        keyring = dns.tsigkeyring.from_text({self.key_name: self.secret})
        updates: dict[dns.name.Name, dns.update.UpdateMessage] = {}

        def update_for(owner: str) -> dns.update.UpdateMessage:
            zone = self._zone(owner)
            if zone not in updates:
                updates[zone] = dns.update.UpdateMessage(
                    zone, keyring=keyring, keyalgorithm=dns.name.from_text(self.algorithm))
            return updates[zone]

        for line in delete:
            owner, rdata = line.split(" IN TLSA ")
            update_for(owner).delete(owner, "TLSA", rdata)
        for line, ttl in add:
            owner, rdata = line.split(" IN TLSA ")
            update_for(owner).add(owner, ttl or 3600, "TLSA", rdata)
        for zone, update in updates.items():
            reply = dns.query.tcp(update, self.server, port=self.port, timeout=10)
            if reply.rcode() != dns.rcode.NOERROR:
                raise errors.PluginError(
                    f"{self.server} refused the update of {zone} "
                    f"({dns.rcode.to_text(reply.rcode())}): check the TSIG key and the "
                    "server's update policy")


def _send_update(deployed: DeployedLineage, add: Sequence[tuple[str, int]],
                 delete: Sequence[str], notes: list[str], warnings: list[str]) -> bool:
    """Publish or remove records as --postfix-tls-dane-update says; a failure is a warning
    (the records are printed for a human to publish)."""
    try:
        updater = Updater.from_file(str(deployed.dane_update))
        updater.send(add, delete)
    except (errors.Error, dns.exception.DNSException, OSError, ValueError) as exc:
        warnings.append(f"DANE: the dynamic update (--postfix-tls-dane-update "
                        f"{deployed.dane_update}) failed: {exc}; publish the records by hand")
        return False
    if add:
        notes.append(f"DANE: published through {updater.server}: "
                     + "; ".join(line for line, _ in add))
    if delete:
        notes.append(f"DANE: removed through {updater.server} the retired key's records: "
                     + "; ".join(delete))
    return True


# --- the Debian timer's condition ---------------------------------------------------------


def flag_path(config_dir: str) -> str:
    return os.path.join(config_dir, constants.PLUGIN_DIR, HELD_FLAG)


def _raise_flag(config_dir: str) -> None:
    certs.write_atomic(flag_path(config_dir), b"a lineage is held: certbot-postfix-tls dane "
                       b"check activates it once DNS is ready\n", 0o644)


def sync_flag(config_dir: str) -> None:
    """The flag exists exactly while some instance's state holds a lineage (or has a
    retired record to remove)."""
    held = any(lineage.held or lineage.dane_retire for state in State.load_all(config_dir)
               for lineage in state.lineages.values())
    if held:
        _raise_flag(config_dir)
    elif os.path.lexists(flag_path(config_dir)):
        os.unlink(flag_path(config_dir))


# --- dane check: activate what DNS is ready for --------------------------------------------


@dataclass
class CheckResult:
    code: int  # findings.EXIT_CODES
    lines: list[str] = field(default_factory=list)


def check(config_dir: str, warn: Warn, skip_renewed: bool = False) -> CheckResult:
    """Re-query every held lineage; activate those whose new certificate DNS now allows
    (rebuild, one Postfix reload per instance, verify). ``skip_renewed``: leave the
    lineages a pending reload is for to that reload (the post hook)."""
    result = CheckResult(findings.EXIT_CODES["OK"])
    if not State.instances(config_dir):
        return result
    with plugin_lock(config_dir):
        for state in State.load_all(config_dir):
            held = sorted(name for name, lineage in state.lineages.items() if lineage.held
                          and not (skip_renewed and name in state.renewed))
            if held:
                _check_state(config_dir, state, held, warn, result)
            _retire(config_dir, State.load(config_dir, state.instance), result)
        sync_flag(config_dir)
    return result


def _retire(config_dir: str, state: State, result: CheckResult) -> None:
    """Remove (RFC 2136) the retired keys' records whose time has come."""
    now = _now()
    changed = False
    for _, lineage in sorted(state.lineages.items()):
        due = [entry for entry in lineage.dane_retire if _time(entry["after"]) <= now]
        if not due or not lineage.dane_update:
            continue
        notes: list[str] = []
        warnings: list[str] = []
        if _send_update(lineage, [], [str(entry["record"]) for entry in due], notes, warnings):
            lineage.dane_retire = [e for e in lineage.dane_retire if e not in due]
            changed = True
        result.lines += [f"OK: {line}" for line in notes]
        result.lines += [f"WARNING: {line}" for line in warnings]
        if warnings:
            _worse(result, "WARNING")
    if changed:
        state.save(config_dir)


def report(result: CheckResult, warn: Warn) -> str:
    """Warn each line that is not OK (still held, failed); return the OK ones as one line."""
    done = []
    for line in result.lines:
        status, _, message = line.partition(": ")
        if status == "OK":
            done.append(message)
        else:
            warn(message)
    return "; ".join(done)


def _worse(result: CheckResult, status: str) -> None:
    result.code = max(result.code, findings.EXIT_CODES[status])


def _check_state(config_dir: str, state: State, held: list[str], warn: Warn,
                 result: CheckResult) -> None:
    site = pipeline.Site.from_state(config_dir, state)
    try:
        desired = pipeline.render(site, state, site.mta.read(), rebuild=held)
    except (errors.Error, OSError) as exc:
        result.lines.append(f"CRITICAL: {', '.join(held)}: {exc}")
        _worse(result, "CRITICAL")
        return
    activated = [name for name in held if not state.lineages[name].held]
    for line in desired.notes:
        if line.startswith("DANE:"):
            result.lines.append(f"OK: {line}")
    for line in desired.warnings:
        result.lines.append(f"WARNING: {line}")
        _worse(result, "WARNING")
    if not activated:
        state.save(config_dir)  # first-seen times of the matching records
        return
    try:
        pipeline.write(site, desired)
        problems = pipeline.activate(site, state, ["postfix"], activated, warn)
    except (errors.Error, OSError) as exc:
        problems = [str(exc)]
    if problems:
        # The post hook and verify take it from here, as after a failed renewal reload.
        marked = State.load(config_dir, state.instance)
        marked.pending = list(dict.fromkeys([*marked.pending, "postfix"]))
        marked.renewed = list(dict.fromkeys([*marked.renewed, *activated]))
        marked.save(config_dir)
        result.lines.append(f"CRITICAL: activating {', '.join(activated)} failed: "
                            + "; ".join(problems))
        _worse(result, "CRITICAL")
        return
    for name in activated:
        result.lines.append(f"OK: activated {name}: Postfix ({state.postfix_dir}) serves its "
                            "renewed certificate, which the validated TLSA records match")


# --- verify, records, doctor ----------------------------------------------------------------


def verify_checks(state: State, names: Iterable[str]) -> list[dict[str, str]]:
    """verify's checks for held lineages: WARNING, CRITICAL within 7 days of expiry."""
    now = _now()
    checks = []
    for name in sorted(names):
        lineage = state.lineages.get(name)
        if lineage is None or not lineage.held:
            continue
        expires = _time(lineage.held["not_after"])
        status = "CRITICAL" if expires - now < datetime.timedelta(
            days=EXPIRY_CRITICAL_DAYS) else "WARNING"
        checks.append({"name": f"dane-held {name}", "status": status,
                       "message": held_message(name, lineage.held, now)})
    return checks


def reuse_key(config_dir: str, name: str) -> Optional[bool]:
    """Does certbot keep the key on renewal (``reuse_key`` in renewal/NAME.conf)? None:
    no renewal configuration."""
    path = os.path.join(config_dir, "renewal", f"{name}.conf")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_string("[top]\n" + handle.read())
    except (OSError, configparser.Error):
        return None
    value = parser.get("renewalparams", "reuse_key", fallback="False")
    return value.strip().lower() in ("true", "yes", "1")


INTERMEDIATE_WARNING = (
    "a 2 1 1 record pins one intermediate: Let's Encrypt rotates them (R10-R14, E5-E9), "
    "so the next renewal may be issued by another and match nothing; publish 3 1 1 too, "
    "or 2 1 1 for every intermediate that may issue")


def _lineage(config_dir: str, deployed: DeployedLineage) -> certs.Lineage:
    return certs.Lineage.from_paths(deployed.name, deployed.key_path, deployed.fullchain_path,
                                    config_dir)


def served_chain(config_dir: str, deployed: DeployedLineage) -> list[x509.Certificate]:
    """The chain Postfix serves for a lineage (the held version while held); certificates
    only, no key."""
    lineage = _lineage(config_dir, deployed)
    if deployed.held:
        return _chain_of(version_paths(lineage, int(deployed.held["version"]))[1])
    return _chain_of(os.path.realpath(lineage.fullchain_path))


def records(config_dir: str, cert_name: Optional[str] = None) -> list[str]:
    """The TLSA set a rollover needs, per lineage, as zone file lines and comments."""
    lines: list[str] = []
    states = [s for s in State.load_all(config_dir)
              if cert_name is None or cert_name in s.lineages]
    if not states:
        raise errors.Error(
            f"{'The lineage ' + cert_name if cert_name else 'Nothing'} was not deployed by "
            f"postfix-tls in {config_dir}: deploy it with certbot install.")
    for state in states:
        ports = smtp_ports(Postfix(state.postfix_dir).read())
        for name in sorted(state.lineages):
            if cert_name is not None and name != cert_name:
                continue
            try:
                lines += _lineage_records(config_dir, state.lineages[name], ports)
            except OSError as exc:
                raise errors.Error(f"The certificates of {name} cannot be read ({exc}): run "
                                   "certbot-postfix-tls dane records as root.") from None
    return lines


def _lineage_records(config_dir: str, deployed: DeployedLineage, ports: list[int]
                     ) -> list[str]:
    lineage = _lineage(config_dir, deployed)
    current = served_chain(config_dir, deployed)
    hosts = query_names(certs.Material(b"", b"", current[0], current[1:]).names
                        or deployed.names)
    lines = [f"; lineage {deployed.name}: {', '.join(hosts)} on port(s) "
             f"{', '.join(map(str, ports))}"]
    if deployed.dane == IGNORE:
        lines.append("; --postfix-tls-dane ignore: renewals do not wait for these records")

    def block(title: str, chain: Sequence[x509.Certificate], usage: int) -> None:
        lines.append(f"; {title}")
        record = Record.for_cert(chain[0] if usage == 3 else chain[1], usage)
        lines.extend(record_line(port, host, record) for host in hosts for port in ports)

    block("current key (served now)", current, 3)
    if deployed.held:
        upcoming = _chain_of(os.path.realpath(lineage.fullchain_path))
        block(f"next key (archive version {deployed.held.get('new_version')}, held until these "
              "are published and seen for twice their TTL)", upcoming, 3)
    elif reuse_key(config_dir, deployed.name):
        lines.append("; next key: the same (reuse_key is on: renewals keep the key)")
    else:
        lines.append(f"; next key: unknown: reuse_key is off, so every renewal makes a new "
                     f"key, which is held until its record is published (certbot reconfigure "
                     f"--cert-name {deployed.name} --reuse-key keeps it)")
    if len(current) > 1:
        issuer = current[1].subject.rfc4514_string()
        block(f"issuing CA ({issuer}); warning: {INTERMEDIATE_WARNING}", current, 2)
    return lines


def doctor_checks(config_dir: str, state: State) -> list[Finding]:
    """DANE problems: validated records that match nothing served, usage-3 records on a
    lineage whose renewals change the key, records the next renewal would break."""
    checks: list[Finding] = []
    try:
        ports = smtp_ports(Postfix(state.postfix_dir).read())
    except errors.Error as exc:
        return [Finding("dane", "UNKNOWN", str(exc))]
    for name, deployed in sorted(state.lineages.items()):
        if deployed.dane == IGNORE:
            checks.append(Finding(f"dane {name}", "OK", "--postfix-tls-dane ignore: not checked"))
            continue
        try:
            chain = served_chain(config_dir, deployed)
        except PermissionError:
            checks.append(Finding(f"dane {name}", "OK",
                                f"skipped: the certificates under {config_dir}/live are read by "
                                "root only; run doctor as root to check them against TLSA"))
            continue
        except (OSError, ValueError, errors.Error) as exc:
            checks.append(Finding(f"dane {name}", "UNKNOWN", f"cannot read what is served: {exc}"))
            continue
        found = lookup(list(deployed.names), ports, deployed.dane_resolver)
        checks += _doctor_lineage(config_dir, deployed, chain, found)
    return checks


def _doctor_lineage(config_dir: str, deployed: DeployedLineage,
                    chain: Sequence[x509.Certificate], found: Sequence[Lookup]) -> list[Finding]:
    name = deployed.name
    checks: list[Finding] = []
    notes, warnings = _lookup_notes(found, deployed.dane_resolver)
    # Lookups that failed leave those names unchecked: said, not counted as a problem (a
    # machine without DNS has its own findings; renewals are never blocked by it).
    failed = sorted({f.error for f in found if f.status == ERROR})
    if failed:
        checks.append(Finding(f"dane {name}", "OK", "not checked: the TLSA lookups of "
                            f"{', '.join(f.owner for f in found if f.status == ERROR)} failed "
                            f"through {resolver_label(deployed.dane_resolver)} "
                            f"({'; '.join(failed)})"))
    checks += [Finding(f"dane {name}", "OK", note) for note in notes]
    binding = [f for f in found if f.binding]
    for item in binding:
        if not item.matching(chain):
            fix = "; ".join(_publish([item], chain))
            checks.append(Finding(
                f"dane {name}", "CRITICAL",
                f"{item.owner} has validated TLSA records ({_texts(item.usable)}) that match "
                f"nothing Postfix serves: DANE senders refuse mail; publish {fix}"))
            continue
        kinds = {r.usage for r in item.matching(chain)}
        if kinds == {3} and not deployed.held and reuse_key(config_dir, name) is False:
            checks.append(Finding(
                f"dane {name}", "WARNING",
                f"{item.owner} matches the current key only (usage 3) and reuse_key is off: "
                "the next renewal makes a new key, which is held until its record is "
                f"published (certbot reconfigure --cert-name {name} --reuse-key avoids it; "
                f"certbot-postfix-tls dane records --cert-name {name} lists the set)"))
        elif kinds == {2}:
            checks.append(Finding(f"dane {name}", "WARNING",
                                f"{item.owner}: only 2 x x records match: {INTERMEDIATE_WARNING}"))
        else:
            checks.append(Finding(f"dane {name}", "OK",
                                f"{item.owner}: validated TLSA records match what is served"))
    if not binding and not failed:
        checks.append(Finding(f"dane {name}", "OK",
                            "no validated TLSA records: DANE senders do not pin this certificate"))
    if deployed.held:
        checks.append(Finding(f"dane {name}", "WARNING", held_message(name, deployed.held)))
    return checks
