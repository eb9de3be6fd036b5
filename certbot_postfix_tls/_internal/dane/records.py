"""TLSA records: matching a chain, owner names, zone file lines, and the set a key
rollover needs (``certbot-postfix-tls dane records``)."""

from __future__ import annotations

import configparser
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from certbot import errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certbot_postfix_tls._internal import certs
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dane import archive
from certbot_postfix_tls._internal.state import DeployedLineage, State

SMTP_PORTS = (25, 465, 587)  # where Postfix's certificate meets DANE senders
IGNORE = "ignore"  # --postfix-tls-dane ignore
MODES = ("auto", IGNORE)

_DIGEST_SIZES = {1: 32, 2: 64}

INTERMEDIATE_WARNING = (
    "a 2 1 1 record pins one intermediate: Let's Encrypt rotates them (R10-R14, E5-E9), "
    "so the next renewal may be issued by another and match nothing; publish 3 1 1 too, "
    "or 2 1 1 for every intermediate that may issue")


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


def texts(records: Iterable[Record]) -> str:
    """Records' data, comma-separated."""
    return ", ".join(record.text() for record in records)


def query_names(names: Iterable[str]) -> list[str]:
    """The names to look up: concrete host names (a wildcard is nobody's MX)."""
    return sorted({n.rstrip(".").lower() for n in names if n and not n.startswith("*.")})


def smtp_ports(config: postfix_config.PostfixConfig) -> list[int]:
    """The ports among 25, 465 and 587 where Postfix serves TLS (25 when none is found)."""
    found = {endpoint.port for endpoint in postfix_listeners.endpoints(config, "127.0.0.1",
                                                             list(SMTP_PORTS))}
    return sorted(found & set(SMTP_PORTS)) or [25]


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


# --- the rollover set (certbot-postfix-tls dane records) -----------------------------------


def rollover_set(config_dir: str, cert_name: Optional[str] = None) -> list[str]:
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
    lineage = archive.lineage_of(config_dir, deployed)
    current = archive.served_chain(config_dir, deployed)
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
        upcoming = archive.chain_of(os.path.realpath(lineage.fullchain_path))
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
