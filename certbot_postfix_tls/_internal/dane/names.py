"""The names DANE senders use to reach this server, and which lineage answers each.

Senders look up ``_25._tcp.<MX host>`` and send the MX host name as SNI (some send
none). So the names whose TLSA records bind a lineage are not only its certificate's:
Postfix's ``myhostname``, the MX hosts of its domains that point to this machine, and
names the operator gives (``--postfix-tls-dane-names``), each kept when the lineage
answers it: its certificate lists it (a wildcard covers one label), or no lineage
lists it and the lineage is the default certificate."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence

from certbot_postfix_tls._internal import sni
from certbot_postfix_tls._internal.state import State


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def covers(pattern: str, host: str) -> bool:
    """Does a certificate name (possibly ``*.domain``) cover ``host``?"""
    pattern, host = _norm(pattern), _norm(host)
    if pattern.startswith("*."):
        return "." in host and host.split(".", 1)[1] == pattern[2:]
    return bool(host) and pattern == host


def listed(names: Iterable[str], host: str) -> bool:
    return any(covers(name, host) for name in names)


def answers(state: State, name: str, names: Sequence[str], host: str,
            myhostname: str) -> bool:
    """Does lineage ``name`` (certificate names ``names``) answer ``host`` in ``state``:
    by SNI, or as the default certificate when no other lineage lists the host?"""
    if listed(names, host):
        return True
    if any(listed(other.names, host) for key, other in state.lineages.items() if key != name):
        return False
    default = state.default if state.default in state.lineages else None
    return (default or sni.choose_default(state, myhostname) or name) == name


def is_local(address: str) -> bool:
    """Is ``address`` one of this machine's (binding to it works only then)?"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def domains_of(names: Iterable[str]) -> list[str]:
    """The domains whose MX records may point here: each name, a wildcard's parent."""
    return sorted({_norm(n[2:] if n.startswith("*.") else n) for n in names if n})


def local_mail_hosts(found: dict[str, list[str]]) -> list[str]:
    """MX hosts (``lookup.mail_hosts``) with an address of this machine."""
    return sorted(host for host, addresses in found.items()
                  if any(is_local(address) for address in addresses))


def sender_names(serving: Sequence[tuple[State, str]], name: str, cert_names: Sequence[str],
                 mail_hosts: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The concrete host names to look TLSA up for: the certificate's own (not its
    wildcards); each ``myhostname`` and each MX host pointing here that the lineage
    answers in one of the instances serving it (``serving``: each one's state and
    ``myhostname``); the operator's ``extra`` names (always)."""
    hosts = {_norm(n) for n in cert_names if n and not n.startswith("*.")}
    candidates = [_norm(h) for _, h in serving if h] + [_norm(h) for h in mail_hosts]
    for host in candidates:
        if any(answers(state, name, cert_names, host, myhostname)
               for state, myhostname in serving):
            hosts.add(host)
    hosts |= {_norm(h) for h in extra if h and not h.startswith("*.")}
    return sorted(hosts)
