"""Publishing and removing TLSA records by RFC 2136 dynamic update with TSIG
(--postfix-tls-dane-update), configured like certbot-dns-rfc2136's credentials file."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
from certbot import errors

from certbot_postfix_tls._internal.dane.lookup import LOOKUP_TIMEOUT
from certbot_postfix_tls._internal.state import DeployedLineage

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


def send_update(deployed: DeployedLineage, add: Sequence[tuple[str, int]],
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
