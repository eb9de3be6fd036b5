"""DNSSEC in the lab: Knot signs example.org, Unbound validates it, Postfix's resolver uses it.

Inside the lab's private network namespace (loopback only):

- Knot (authoritative) on 127.0.0.53:53 serves example.org, signed automatically
  (ECDSA P-256, one combined key) and re-signed on every RFC 2136 update, which
  it accepts with the TSIG key ``lab-update``: records change as they would on
  a real primary.
- Unbound on 127.0.0.54:53 validates example.org with the zone's key as trust
  anchor (AD bit on answers); a second Unbound on 127.0.0.55:53 has no anchor,
  so it answers the same records unvalidated, as for an unsigned zone.
- ``use_as_system_resolver()`` writes /etc/resolv.conf (an overlay in the lab)
  with ``options trust-ad``, so Postfix's own DANE client (posttls-finger) and
  the plugin's default lookups both go through the validating Unbound.

Every TTL is 2 s so that waits for caches (the plugin's 2 x TTL) take seconds.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from certbot_postfix_tls._internal import process

from . import LabError

ZONE = "example.org"
AUTHORITATIVE = "127.0.0.53"
RESOLVER = "127.0.0.54"  # validating: example.org's key is its trust anchor
UNVALIDATING = "127.0.0.55"  # no trust anchor: answers without the AD bit
TTL = 2
TSIG_NAME = "lab-update"
TSIG_SECRET = base64.b64encode(b"certbot-postfix-tls lab tsig key!").decode()
RESOLV_CONF = "/etc/resolv.conf"


def tsig_credentials(path: Path) -> None:
    """A certbot-dns-rfc2136 credentials file for the lab's primary."""
    path.write_text(
        f"dns_rfc2136_server = {AUTHORITATIVE}\n"
        "dns_rfc2136_port = 53\n"
        f"dns_rfc2136_name = {TSIG_NAME}\n"
        f"dns_rfc2136_secret = {TSIG_SECRET}\n"
        "dns_rfc2136_algorithm = HMAC-SHA256\n"
    )
    path.chmod(0o600)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop a daemon this process started (and reap it: a zombie still answers kill 0)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class DnsLab:
    """Knot + two Unbounds on loopback; ``hosts`` become signed A records."""

    workdir: Path
    hosts: dict[str, str] = field(default_factory=lambda: {"mail": "127.0.0.1"})
    # Where the resolvers send their queries: Knot, or a proxy in front of it (the
    # benchmark's round-trip delay).
    upstream: str = AUTHORITATIVE
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _resolv_conf: Optional[bytes] = None
    _resolv_link: Optional[str] = None
    _resolv_taken = False

    def start(self) -> None:
        for tool in ("knotd", "unbound"):
            if process.find_tool(tool) is None:
                raise LabError(f"{tool} is not installed (apt-get install knot unbound).")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_knot()
        anchor = self.workdir / "anchor"
        anchor.write_text(self._ksk())
        self._start_unbound("unbound", RESOLVER, anchor)
        self._start_unbound("unbound-plain", UNVALIDATING, None)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.out", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603

    def _start_knot(self) -> None:
        knot = self.workdir / "knot"
        knot.mkdir(exist_ok=True)
        records = "".join(f"{host} A {address}\n" for host, address in self.hosts.items())
        (knot / f"{ZONE}.zone").write_text(
            f"$TTL {TTL}\n"
            f"@ SOA ns.{ZONE}. hostmaster.{ZONE}. 1 {TTL} {TTL} 600 {TTL}\n"
            f"@ NS ns.{ZONE}.\n"
            f"ns A {AUTHORITATIVE}\n" + records
        )
        config = knot / "knot.conf"
        config.write_text(f"""server:
    rundir: "{knot}"
    listen: {AUTHORITATIVE}@53
log:
  - target: {knot}/knot.log
    any: info
database:
    storage: "{knot}"
key:
  - id: {TSIG_NAME}
    algorithm: hmac-sha256
    secret: {TSIG_SECRET}
acl:
  - id: update
    key: {TSIG_NAME}
    action: update
policy:
  - id: lab
    algorithm: ecdsap256sha256
    single-type-signing: on
    dnskey-ttl: {TTL}
    zone-max-ttl: {TTL}
    propagation-delay: 0
template:
  - id: default
    storage: "{knot}"
    file: "%s.zone"
    dnssec-signing: on
    dnssec-policy: lab
    zonefile-sync: -1
    acl: update
zone:
  - domain: {ZONE}
""")
        self._spawn("knot", ["knotd", "-c", str(config)])
        self._wait(AUTHORITATIVE, "SOA", signed=True)

    def _ksk(self) -> str:
        reply = self.query(AUTHORITATIVE, ZONE, "DNSKEY")
        for rrset in reply.answer:
            for key in rrset:
                if rrset.rdtype == dns.rdatatype.DNSKEY and key.flags & 1:  # SEP bit
                    return f"{ZONE}. DNSKEY {key.to_text()}\n"
        raise LabError(f"knot serves no DNSKEY for {ZONE}: see {self.workdir}/knot/knot.log")

    def _start_unbound(self, name: str, address: str, anchor: Optional[Path]) -> None:
        directory = self.workdir / name
        directory.mkdir(exist_ok=True)
        config = directory / "unbound.conf"
        config.write_text(f"""server:
    interface: {address}
    port: 53
    do-ip6: no
    do-not-query-localhost: no
    username: ""
    chroot: ""
    directory: "{directory}"
    pidfile: "{directory}/unbound.pid"
    use-syslog: no
    logfile: "{directory}/unbound.log"
    verbosity: 1
    val-log-level: 2
    module-config: "validator iterator"
    {f'trust-anchor-file: "{anchor}"' if anchor else ''}
    access-control: 127.0.0.0/8 allow
    cache-max-negative-ttl: {TTL}
    qname-minimisation: no
stub-zone:
    name: "{ZONE}"
    stub-addr: {self.upstream}
remote-control:
    control-enable: no
""")
        self._spawn(name, ["unbound", "-d", "-c", str(config)])
        self._wait(address, "SOA")

    def stop_resolver(self) -> None:
        """The validating resolver goes away (its address stays unanswered)."""
        proc = self.procs.pop("unbound", None)
        if proc is not None:
            _end(proc)

    def start_resolver(self) -> None:
        self._start_unbound("unbound", RESOLVER, self.workdir / "anchor")

    def query(self, server: str, name: str, rdtype: str,
              timeout: float = 2.0) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        query.flags |= dns.flags.AD
        return dns.query.udp(query, server, timeout=timeout)

    def _wait(self, server: str, rdtype: str, signed: bool = False,
              timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.query(server, ZONE, rdtype, timeout=0.2)
                if reply.rcode() == dns.rcode.NOERROR and reply.answer and (
                        not signed or any(r.rdtype == dns.rdatatype.RRSIG
                                          for r in reply.answer)):
                    return
            except (OSError, dns.exception.DNSException):
                pass
            if time.monotonic() > deadline:
                raise LabError(f"no signed answer from {server} after {timeout:.0f} s: see "
                               f"the logs in {self.workdir}")
            time.sleep(0.1)

    def update(self, add: tuple[tuple[str, str, str], ...] = (),
               delete: tuple[tuple[str, str], ...] = ()) -> None:
        """RFC 2136 update with TSIG; Knot re-signs what changed. ``add``: (relative owner,
        type, rdata); ``delete``: (relative owner, type) removes that whole RRset."""
        keyring = dns.tsigkeyring.from_text({TSIG_NAME: TSIG_SECRET})
        update = dns.update.UpdateMessage(ZONE, keyring=keyring,
                                          keyalgorithm=dns.tsig.HMAC_SHA256)
        for owner, rdtype in delete:
            update.delete(owner, rdtype)
        for owner, rdtype, rdata in add:
            update.add(owner, TTL, rdtype, rdata)
        reply = dns.query.tcp(update, AUTHORITATIVE, timeout=5)
        if reply.rcode() != dns.rcode.NOERROR:
            raise LabError(f"update refused: {dns.rcode.to_text(reply.rcode())}")

    def set_tlsa(self, port: int, host: str, *records: str) -> None:
        """Replace the TLSA RRset of ``_PORT._tcp.HOST`` (relative to example.org)."""
        owner = f"_{port}._tcp.{host}"
        self.update(add=tuple((owner, "TLSA", record) for record in records),
                    delete=((owner, "TLSA"),))
        if "unbound" in self.procs:
            self.wait_answered(port, host, *records)

    def wait_answered(self, port: int, host: str, *records: str, timeout: float = 10.0) -> None:
        """Until both resolvers answer exactly ``records`` (the validating one with the AD
        bit): their cached copies of the previous set have expired."""
        owner = f"_{port}._tcp.{host}.{ZONE}."
        wanted = {record.replace(" ", "").lower() for record in records}
        deadline = time.monotonic() + timeout
        for server in (RESOLVER, UNVALIDATING):
            while True:
                reply = self.query(server, owner, "TLSA")
                found = {rdata.to_text().replace(" ", "").lower() for rrset in reply.answer
                         if rrset.rdtype == dns.rdatatype.TLSA for rdata in rrset}
                if found == wanted and (server != RESOLVER or reply.flags & dns.flags.AD):
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"{server} does not answer {owner} TLSA {records}")
                time.sleep(0.2)

    def use_as_system_resolver(self) -> None:
        """/etc/resolv.conf (the lab's overlay) -> the validating Unbound, AD trusted."""
        self._resolv_taken = True
        if os.path.islink(RESOLV_CONF):
            self._resolv_link = os.readlink(RESOLV_CONF)
            os.unlink(RESOLV_CONF)
        elif os.path.exists(RESOLV_CONF):
            self._resolv_conf = Path(RESOLV_CONF).read_bytes()
        Path(RESOLV_CONF).write_text(f"nameserver {RESOLVER}\noptions trust-ad\n")

    def stop(self) -> None:
        for proc in self.procs.values():
            _end(proc)
        self.procs.clear()
        for log in self._logs:
            log.close()
        if not self._resolv_taken:
            return
        Path(RESOLV_CONF).unlink(missing_ok=True)
        if self._resolv_link is not None:
            os.symlink(self._resolv_link, RESOLV_CONF)
        elif self._resolv_conf is not None:
            Path(RESOLV_CONF).write_bytes(self._resolv_conf)
        self._resolv_taken = False
