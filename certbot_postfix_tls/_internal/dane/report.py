"""What DANE tells the administrator: held lineages, the records to publish, lookups
that were not obeyed, and verify's and doctor's findings."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from certbot import errors
from cryptography import x509

from certbot_postfix_tls._internal import expiry
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dane import archive, names
from certbot_postfix_tls._internal.dane.lookup import (
    ERROR,
    INSECURE,
    UNSIGNED,
    Lookup,
    lookup,
    mail_hosts,
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


def lookup_notes(lookups: Sequence[Lookup], resolver: Optional[str]) -> list[str]:
    """Notes about records obeyed without validation here, and records not obeyed."""
    notes = []
    unvalidated = [found for found in lookups if found.status == INSECURE and found.records]
    if unvalidated:
        notes.append(
            f"DANE: {resolver_label(resolver)} does not validate DNSSEC (no AD bit), but the "
            f"TLSA records of {', '.join(f.owner for f in unvalidated)} are signed, so they are "
            "what validating senders see and they are obeyed; point the plugin at a "
            "validating resolver with --postfix-tls-dane-resolver ADDR")
    notes += [f"DANE: {found.owner} has TLSA records ({texts(found.records)}) in a zone that "
              "is not signed (no RRSIG): DANE senders ignore them, so they are reported, "
              "not obeyed" for found in lookups if found.status == UNSIGNED and found.records]
    return notes


def failed_text(lookups: Sequence[Lookup], resolver: Optional[str]) -> str:
    """Which lookups failed, through which resolver, why ("" when none did)."""
    failed = [found for found in lookups if found.status == ERROR]
    if not failed:
        return ""
    reasons = sorted({found.error for found in failed})
    return (f"the TLSA lookups of {', '.join(f.owner for f in failed)} failed through "
            f"{resolver_label(resolver)} ({'; '.join(reasons)})")


def held_message(name: str, held: dict[str, Any], when: Optional[datetime.datetime] = None
                 ) -> str:
    """One sentence: what is held, since when, why, and what to do."""
    when = when or now()
    expires = parse_time(held["not_after"])
    since = parse_time(held["since"]) if held.get("since") else when
    head = (f"DANE: lineage {name} is held (since {since:%Y-%m-%d %H:%M} UTC, "
            f"{(when - since).days} days): Postfix keeps serving archive version "
            f"{held['version']} (expires {expires:%Y-%m-%d %H:%M} UTC, in "
            f"{expiry.duration(expires - when)}) because ")
    if held.get("failed"):
        return (head + f"{held['failed']}, so the renewal cannot be checked against the "
                "published records; certbot-postfix-tls dane check looks again (hourly while "
                "held): fix the resolver, or give a working one with "
                "--postfix-tls-dane-resolver")
    if held.get("publish"):
        return (head + "TLSA records do not match its renewed certificate; publish "
                + "; ".join(held["publish"])
                + " (then certbot-postfix-tls dane check activates it twice their TTL later)")
    ready = str(held.get("ready_at") or "")
    at = f" at {parse_time(ready):%Y-%m-%d %H:%M:%S} UTC" if ready else ""
    return (head + "the TLSA records matching its renewed certificate are new: resolvers may "
            f"still cache the old set; certbot-postfix-tls dane check activates it{at}, "
            "twice the record set's TTL after they were first seen")


def held_finding(name: str, held: dict[str, Any], when: datetime.datetime) -> Finding:
    """WARNING while held; CRITICAL once the held certificate is itself past the point
    where it would be judged expiring (``held_status``)."""
    message = held_message(name, held, when)
    if held_status(held, when) == CRITICAL:
        return Finding(f"dane-held {name}", CRITICAL,
                       message + "; the hold has lasted too long: the served certificate "
                       "expires soon (publish the record, or deploy with "
                       f"certbot install --cert-name {name} --postfix-tls-dane ignore)")
    return Finding(f"dane-held {name}", WARNING, message)


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
        checks.append(held_finding(name, lineage.held, current))
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
        config = Postfix(state.postfix_dir).read()
        ports = smtp_ports(config)
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
        found = lookup(_doctor_names(state, deployed, config), ports, deployed.dane_resolver)
        checks += _doctor_lineage(config_dir, deployed, chain, found)
    return checks


def _doctor_names(state: State, deployed: DeployedLineage,
                  config: postfix_config.PostfixConfig) -> list[str]:
    """The names senders use for a lineage (``dane.names``), as seen from this instance."""
    hosts = mail_hosts(names.domains_of(deployed.names), deployed.dane_resolver)
    return names.sender_names([(state, config.main.get("myhostname", ""))], deployed.name,
                              deployed.names, names.local_mail_hosts(hosts),
                              deployed.dane_names)


def _doctor_lineage(config_dir: str, deployed: DeployedLineage,
                    chain: Sequence[x509.Certificate], found: Sequence[Lookup]) -> list[Finding]:
    name = deployed.name
    checks: list[Finding] = []
    failed = failed_text(found, deployed.dane_resolver)
    if failed:
        checks.append(Finding(f"dane {name}", WARNING,
                              f"{failed}: a renewal now would be held until they can be "
                              "checked; fix the resolver or give one with "
                              "--postfix-tls-dane-resolver"))
    # An unvalidating resolver and an unsigned zone: both advice, as WARNING.
    checks += [Finding(f"dane {name}", WARNING, note)
               for note in lookup_notes(found, deployed.dane_resolver)]
    binding = [f for f in found if f.binding]
    for item in binding:
        if not item.matching(chain):
            fix = "; ".join(publish_lines([item], chain))
            checks.append(Finding(
                f"dane {name}", CRITICAL,
                f"{item.owner} has signed TLSA records ({texts(item.usable)}) that match "
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
                                  f"{item.owner}: TLSA records match what is served"))
    if not binding and not failed:
        checks.append(Finding(f"dane {name}", OK,
                              "no signed TLSA records: DANE senders do not pin this "
                              "certificate"))
    if deployed.held:
        checks.append(held_finding(name, deployed.held, now()))
    return checks
