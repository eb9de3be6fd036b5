"""The gate: which archive version of a lineage to serve, given the TLSA lookups the
operation already made (``ops/render.py``). A decision only: it reads the lineage's
archive certificates but asks no DNS and writes nothing; what it wants done (records
published by RFC 2136, the held flag raised) comes back in the ``Choice``."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from certbot import errors
from cryptography import x509

from certbot_postfix_tls._internal import certs, postfix
from certbot_postfix_tls._internal.dane import archive, report
from certbot_postfix_tls._internal.dane.lookup import ERROR, Lookup
from certbot_postfix_tls._internal.dane.records import IGNORE
from certbot_postfix_tls._internal.state import DeployedLineage

# The TLSA lookups of one lineage (what ``choose_material`` decides on).
Lookups = Sequence[Lookup]


@dataclass
class Choice:
    """What ``render`` serves for a lineage, what to tell the administrator, and what
    the operation does after rendering."""

    material: certs.Material
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # (record line, TTL) to publish through --postfix-tls-dane-update.
    publish: list[tuple[str, int]] = field(default_factory=list)
    flag: bool = False  # held, or records to retire: raise the held flag (dane check)


def needs_lookup(deployed: DeployedLineage, material: certs.Material) -> bool:
    """Does the gate decide on TLSA records for ``material``? Not when turned off, nor
    for what is already in service (the gate passed when it was put there)."""
    served_leaf = str(deployed.expected.get("leaf_sha256", ""))
    return deployed.dane != IGNORE and bool(deployed.held or served_leaf != material.leaf_sha256)


def held_material(lineage: certs.Lineage, deployed: DeployedLineage) -> certs.Material:
    """What Postfix serves for a lineage without asking DNS again (after a rollback): the
    held archive version while held, else the live files."""
    if deployed.held and deployed.dane != IGNORE:
        return archive.load_version(lineage, int(deployed.held["version"]))
    return certs.load_material(lineage)


def _served(lineage: certs.Lineage, deployed: DeployedLineage,
            new: certs.Material) -> Optional[tuple[int, certs.Material]]:
    """The archive version Postfix serves now (the held one, else the one whose leaf the
    state recorded at the last deploy), when it is not the new one."""
    wanted = str(deployed.expected.get("leaf_sha256", ""))
    if not wanted or wanted == new.leaf_sha256:
        return None
    held = deployed.held.get("version")
    candidates = ([int(held)] if held else []) + archive.versions(lineage)
    for version in dict.fromkeys(candidates):
        try:
            fullchain = archive.version_paths(lineage, version)[1]
            if certs.sha256_der(archive.chain_of(fullchain)[0]) != wanted:
                continue
            return version, archive.load_version(lineage, version)
        except (OSError, ValueError, errors.Error):
            continue
    return None


def _chain(material: certs.Material) -> list[x509.Certificate]:
    return [material.leaf, *material.chain]


def choose_material(lineage: certs.Lineage, deployed: DeployedLineage,
                    material: certs.Material, config: Optional[postfix.PostfixConfig],
                    lookups: Optional[Lookups] = None,
                    now: Optional[datetime.datetime] = None) -> Choice:
    """The material to put into service for ``lineage`` (its live files: ``material``).

    The new material when no validated TLSA record binds its names, or when it matches
    every validated record set and the matching records have been seen long enough
    (twice their TTL, unless they match what is served now too); otherwise the archive
    version served now, with ``deployed.held`` recording the hold. A first deploy that
    validated records reject is refused. Updates ``deployed.held``; ``lookups``: the TLSA
    lookups of the lineage's names, made before (required when ``needs_lookup``).
    """
    now = now or report.now()
    if not needs_lookup(deployed, material):
        deployed.held = {}
        return Choice(material)
    if lookups is None:
        raise ValueError(f"the TLSA lookups of {lineage.name} were not made before render")
    notes, warnings = report.lookup_notes(lookups, deployed.dane_resolver)
    binding = [found for found in lookups if found.binding]
    was_held = dict(deployed.held)
    new_chain = _chain(material)
    if was_held and any(found.status == ERROR for found in lookups):
        # A failed lookup never releases a hold either: only validated evidence does.
        served = _served(lineage, deployed, material)
        if served is not None:
            warnings.append(report.held_message(lineage.name, was_held, now))
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
            first = report.parse_time(before["first"]) if before else now
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
        choice = Choice(material, notes, warnings)
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
                choice.flag = bool(deployed.dane_retire)
        return choice
    publish = report.publish_lines(binding, new_chain)
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
        "new_version": archive.live_version(lineage),
        "since": str(was_held.get("since") or now.isoformat()),
        "not_after": held.not_after.isoformat(),
        "not_before": certs.not_before(held.leaf).isoformat(),
        "new": material.fingerprints(),
        "publish": publish,
        "seen": seen,
        "ready_at": max(waiting_until).isoformat() if waiting_until and not publish else "",
    }
    warnings.append(report.held_message(lineage.name, deployed.held, now))
    choice = Choice(held, notes, warnings, flag=True)
    if deployed.dane_update and publish:
        ttls = {found.owner: found.ttl for found in binding}
        choice.publish = [(line, ttls.get(line.split()[0], 0)) for line in publish]
    return choice
