"""What DANE tells the administrator: held lineages, the records to publish, lookups
that were not obeyed, and verify's and doctor's findings."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from certbot import errors
from cryptography import x509

from certbot_postfix_tls._internal import expiry, postfix
from certbot_postfix_tls._internal.dane import archive
from certbot_postfix_tls._internal.dane.lookup import (
    ERROR,
    INSECURE,
    Lookup,
    lookup,
    resolver_label,
)
from certbot_postfix_tls._internal.dane.records import (
    IGNORE,
    INTERMEDIATE_WARNING,
    Record,
    reuse_key,
    smtp_ports,
    texts,
)
from certbot_postfix_tls._internal.findings import CRITICAL, OK, UNKNOWN, WARNING, Finding
from certbot_postfix_tls._internal.state import DeployedLineage, State


def now() -> datetime.datetime:
    """The current time, UTC (what the held state's timestamps are in)."""
    return datetime.datetime.now(datetime.timezone.utc)


def parse_time(text: Any) -> datetime.datetime:
    """A timestamp of the held state (ISO 8601)."""
    return datetime.datetime.fromisoformat(str(text))


def publish_lines(binding: Sequence[Lookup], chain: Sequence[x509.Certificate]) -> list[str]:
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


def lookup_notes(lookups: Sequence[Lookup], resolver: Optional[str]
                 ) -> tuple[list[str], list[str]]:
    """(notes, warnings) about lookups not obeyed: unvalidated records, failed lookups."""
    notes = [f"DANE: {found.owner} has TLSA records ({texts(found.records)}) that "
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


def held_message(name: str, held: dict[str, Any], when: Optional[datetime.datetime] = None
                 ) -> str:
    """One sentence: what is held, why, and what to do."""
    when = when or now()
    expires = parse_time(held["not_after"])
    head = (f"DANE: lineage {name} is held: Postfix keeps serving archive version "
            f"{held['version']} (expires {expires:%Y-%m-%d %H:%M} UTC, in "
            f"{expiry.duration(expires - when)}) because ")
    if held.get("publish"):
        return (head + "validated TLSA records do not match its renewed certificate; publish "
                + "; ".join(held["publish"])
                + " (then certbot-postfix-tls dane check activates it twice their TTL later)")
    ready = str(held.get("ready_at") or "")
    at = f" at {parse_time(ready):%Y-%m-%d %H:%M:%S} UTC" if ready else ""
    return (head + "the TLSA records matching its renewed certificate are new: resolvers may "
            f"still cache the old set; certbot-postfix-tls dane check activates it{at}, "
            "twice their TTL after they were first seen")


def verify_checks(state: State, names: Iterable[str]) -> list[Finding]:
    """verify's findings for held lineages: WARNING; CRITICAL once the held certificate
    is past the point where it would be judged expiring (``expiry.judge``: 14 days
    left of 90, 25 hours of 160), so the alarm comes well before a hold lets it expire."""
    current = now()
    checks = []
    for name in sorted(names):
        lineage = state.lineages.get(name)
        if lineage is None or not lineage.held:
            continue
        checks.append(Finding(f"dane-held {name}", held_status(lineage.held, current),
                              held_message(name, lineage.held, current)))
    return checks


def held_status(held: dict[str, Any], when: Optional[datetime.datetime] = None) -> str:
    """WARNING while a hold lasts; CRITICAL once the held certificate would itself be
    judged overdue for renewal (``expiry.judge``), long before it expires."""
    start = held.get("not_before")
    judged = expiry.judge(parse_time(held["not_after"]), parse_time(start) if start else None,
                          when or now())
    return WARNING if judged.status == OK else CRITICAL


def doctor_checks(config_dir: str, state: State) -> list[Finding]:
    """DANE problems: validated records that match nothing served, usage-3 records on a
    lineage whose renewals change the key, records the next renewal would break."""
    checks: list[Finding] = []
    try:
        ports = smtp_ports(postfix.Postfix(state.postfix_dir).read())
    except errors.Error as exc:
        return [Finding("dane", UNKNOWN, str(exc))]
    for name, deployed in sorted(state.lineages.items()):
        if deployed.dane == IGNORE:
            checks.append(Finding(f"dane {name}", OK, "--postfix-tls-dane ignore: not checked"))
            continue
        try:
            chain = archive.served_chain(config_dir, deployed)
        except PermissionError:
            checks.append(Finding(f"dane {name}", OK,
                                  f"skipped: the certificates under {config_dir}/live are read "
                                  "by root only; run doctor as root to check them against TLSA"))
            continue
        except (OSError, ValueError, errors.Error) as exc:
            checks.append(Finding(f"dane {name}", UNKNOWN, f"cannot read what is served: {exc}"))
            continue
        found = lookup(list(deployed.names), ports, deployed.dane_resolver)
        checks += _doctor_lineage(config_dir, deployed, chain, found)
    return checks


def _doctor_lineage(config_dir: str, deployed: DeployedLineage,
                    chain: Sequence[x509.Certificate], found: Sequence[Lookup]) -> list[Finding]:
    name = deployed.name
    checks: list[Finding] = []
    notes, _ = lookup_notes(found, deployed.dane_resolver)
    # Lookups that failed leave those names unchecked: said, not counted as a problem (a
    # machine without DNS has its own findings; renewals are never blocked by it).
    failed = sorted({f.error for f in found if f.status == ERROR})
    if failed:
        checks.append(Finding(f"dane {name}", OK, "not checked: the TLSA lookups of "
                              f"{', '.join(f.owner for f in found if f.status == ERROR)} failed "
                              f"through {resolver_label(deployed.dane_resolver)} "
                              f"({'; '.join(failed)})"))
    checks += [Finding(f"dane {name}", OK, note) for note in notes]
    binding = [f for f in found if f.binding]
    for item in binding:
        if not item.matching(chain):
            fix = "; ".join(publish_lines([item], chain))
            checks.append(Finding(
                f"dane {name}", CRITICAL,
                f"{item.owner} has validated TLSA records ({texts(item.usable)}) that match "
                f"nothing Postfix serves: DANE senders refuse mail; publish {fix}"))
            continue
        kinds = {r.usage for r in item.matching(chain)}
        if kinds == {3} and not deployed.held and reuse_key(config_dir, name) is False:
            checks.append(Finding(
                f"dane {name}", WARNING,
                f"{item.owner} matches the current key only (usage 3) and reuse_key is off: "
                "the next renewal makes a new key, which is held until its record is "
                f"published (certbot reconfigure --cert-name {name} --reuse-key avoids it; "
                f"certbot-postfix-tls dane records --cert-name {name} lists the set)"))
        elif kinds == {2}:
            checks.append(Finding(f"dane {name}", WARNING,
                                  f"{item.owner}: only 2 x x records match: "
                                  f"{INTERMEDIATE_WARNING}"))
        else:
            checks.append(Finding(f"dane {name}", OK,
                                  f"{item.owner}: validated TLSA records match what is served"))
    if not binding and not failed:
        checks.append(Finding(f"dane {name}", OK,
                              "no validated TLSA records: DANE senders do not pin this "
                              "certificate"))
    if deployed.held:
        checks.append(Finding(f"dane {name}", held_status(deployed.held),
                              held_message(name, deployed.held)))
    return checks
