"""TLSA lookups through a stub resolver that asks for DNSSEC, side by side."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver
from certbot import errors
from cryptography import x509

from certbot_postfix_tls._internal.dane.records import Record, owner, query_names, record_line

LOOKUP_TIMEOUT = 4.0  # seconds per lookup; a silent resolver costs this once (parallel)
PARALLEL_LOOKUPS = 16

# SECURE: validated (AD bit). INSECURE: signed (RRSIGs came with DO) but the resolver did
# not validate: obeyed all the same, since senders' validating resolvers see those records.
# UNSIGNED: no RRSIG at all (an unsigned zone): DANE senders ignore it, so does the gate.
SECURE, INSECURE, UNSIGNED, NONE, ERROR = "secure", "insecure", "unsigned", "none", "error"
OBEYED = (SECURE, INSECURE)


@dataclass
class Lookup:
    """The TLSA answer for one owner name, as the resolver gave it."""

    port: int
    name: str
    status: str  # SECURE, INSECURE, UNSIGNED, NONE, ERROR (above)
    records: tuple[Record, ...] = ()
    ttl: int = 0  # the TTL the zone signed (the RRSIG's original TTL), else the answer's
    error: str = ""

    @property
    def owner(self) -> str:
        return owner(self.port, self.name)

    @property
    def usable(self) -> list[Record]:
        return [record for record in self.records if record.usable]

    @property
    def binding(self) -> bool:
        """Signed usable records (validated here or not): DANE clients require a match."""
        return self.status in OBEYED and bool(self.usable)

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
    signatures = [sig for rrset in answer.response.answer
                  if rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers == dns.rdatatype.TLSA
                  for sig in rrset]
    # A caching resolver counts the TTL down (and may cap it); the zone's own TTL is what
    # remote caches may keep the set for: the RRSIG carries it.
    ttl = max([int(answer.rrset.ttl), *(int(sig.original_ttl) for sig in signatures)])
    if answer.response.flags & dns.flags.AD:
        status = SECURE
    else:
        status = INSECURE if signatures else UNSIGNED
    return Lookup(port, name, status, records, ttl)


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


def _answer_texts(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> list[str]:
    try:
        answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
    except (dns.exception.DNSException, OSError):
        return []  # the TLSA lookups of the same resolver say whether it works
    return [rdata.to_text() for rdata in answer.rrset or ()]


def mail_hosts(domains: Iterable[str], resolver_address: Optional[str] = None,
               timeout: float = LOOKUP_TIMEOUT) -> dict[str, list[str]]:
    """The MX hosts of ``domains`` with their addresses (A and AAAA), side by side."""
    domains = sorted({d.rstrip(".").lower() for d in domains if d})
    if not domains:
        return {}
    try:
        resolver = make_resolver(resolver_address, timeout)
    except dns.resolver.NoResolverConfiguration:
        return {}
    with ThreadPoolExecutor(max_workers=min(PARALLEL_LOOKUPS, len(domains))) as pool:
        mx = list(pool.map(lambda d: _answer_texts(resolver, d, "MX"), domains))
        hosts = sorted({text.split()[-1].rstrip(".").lower() for texts in mx
                        for text in texts if text.split()[-1] != "."})
        jobs = [(host, rdtype) for host in hosts for rdtype in ("A", "AAAA")]
        answers = list(pool.map(lambda job: _answer_texts(resolver, *job), jobs))
    found: dict[str, list[str]] = {host: [] for host in hosts}
    for (host, _), texts in zip(jobs, answers):
        found[host] += texts
    return found
