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

from certbot_postfix_tls._internal import certs
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
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


def held_material(lineage: certs.Lineage, deployed: DeployedLineage,
                  newest: Optional[int] = None) -> certs.Material:
    """What Postfix serves for a lineage without asking DNS again (after a rollback): the
    held archive version while held, else the live files. ``newest``: the newest version
    already in service (``dane.history``): a rollback to a state held at an older one
    serves that one instead (or the live files, and no hold, when it is live's), since
    the older key's records may be gone from DNS."""
    if not deployed.held or deployed.dane == IGNORE:
        return certs.load_material(lineage)
    version = int(deployed.held["version"])
    if newest is None or newest <= version:
        return archive.load_version(lineage, version)
    live = archive.live_version(lineage)
    if live is None or newest >= live:
        deployed.held = {}
        return certs.load_material(lineage)
    material = archive.load_version(lineage, newest)
    deployed.held = {**deployed.held, "version": newest,
                     "not_before": _not_before(material.leaf).isoformat(),
                     "not_after": material.not_after.isoformat()}
    return material


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


def _not_before(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(
        tzinfo=datetime.timezone.utc)


def _chain(material: certs.Material) -> list[x509.Certificate]:
    return [material.leaf, *material.chain]


def _merge_holds(mine: dict[str, Any], others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One hold per lineage across instances (they share its key+chain file): the
    earliest start, the earliest first sighting and largest TTL of each record."""
    merged = dict(mine)
    for other in others:
        if not other:
            continue
        if not merged:
            merged = {key: other[key] for key in ("since", "seen", "ttl") if key in other}
            continue
        if other.get("since") and (not merged.get("since") or report.parse_time(
                other["since"]) < report.parse_time(merged["since"])):
            merged["since"] = other["since"]
        seen = dict(merged.get("seen", {}))
        for line, entry in other.get("seen", {}).items():
            if line not in seen or report.parse_time(entry["first"]) < report.parse_time(
                    seen[line]["first"]):
                seen[line] = {**entry, "ttl": max(int(entry.get("ttl", 0)),
                                                  int(seen.get(line, {}).get("ttl", 0)))}
        merged["seen"] = seen
        ttls = dict(merged.get("ttl", {}))
        for owner, ttl in other.get("ttl", {}).items():
            ttls[owner] = max(int(ttl), int(ttls.get(owner, 0)))
        merged["ttl"] = ttls
    return merged


def choose_material(lineage: certs.Lineage, deployed: DeployedLineage,
                    material: certs.Material, config: Optional[postfix_config.PostfixConfig],
                    lookups: Optional[Lookups] = None,
                    now: Optional[datetime.datetime] = None,
                    others_held: Sequence[dict[str, Any]] = ()) -> Choice:
    """The material to put into service for ``lineage`` (its live files: ``material``).

    The new material when no signed TLSA record (validated here or not) binds the names
    senders use, or when it matches every such record set and the matching records have
    been seen long enough (twice the largest TTL of the set since the hold began, unless
    they match what is served now too); otherwise the archive version served now, with
    ``deployed.held`` recording the hold. A failed lookup holds too. A first deploy that
    the records reject is refused. Updates ``deployed.held``; ``lookups``: the TLSA
    lookups, made before (required when ``needs_lookup``); ``others_held``: the holds
    of this lineage in the other Postfix instances.
    """
    now = now or report.now()
    if not needs_lookup(deployed, material):
        deployed.held = {}
        choice = Choice(material)
        if deployed.dane == IGNORE:
            choice.notes.append(f"DANE: --postfix-tls-dane ignore: the TLSA records of "
                                f"{lineage.name} are not checked")
        return choice
    if lookups is None:
        raise ValueError(f"the TLSA lookups of {lineage.name} were not made before render")
    notes = report.lookup_notes(lookups, deployed.dane_resolver)
    warnings: list[str] = []
    failed = report.failed_text(lookups, deployed.dane_resolver)
    binding = [found for found in lookups if found.binding]
    own_hold = bool(deployed.held)
    was_held = _merge_holds(dict(deployed.held), others_held)
    new_chain = _chain(material)
    served = _served(lineage, deployed, material)
    cannot_hold = config is not None and config.version < (3, 4)
    # The largest TTL of each record set since the hold began: remote caches keep the
    # old set (without the new record) that long, however low the TTL is now.
    ttls = {owner: int(ttl) for owner, ttl in was_held.get("ttl", {}).items()}
    for found in lookups:
        if found.status != ERROR:
            ttls[found.owner] = max(ttls.get(found.owner, 0), found.ttl)

    def hold(version: int, held: certs.Material, **why: Any) -> Choice:
        deployed.held = {
            "version": version,
            "new_version": archive.live_version(lineage),
            "since": str(was_held.get("since") or now.isoformat()),
            "not_before": _not_before(held.leaf).isoformat(),
            "not_after": held.not_after.isoformat(),
            "new": material.fingerprints(),
            "publish": list(was_held.get("publish", [])),
            "seen": was_held.get("seen", {}),
            "ttl": ttls,
            "ready_at": "",
            "failed": "",
            **why,
        }
        warnings.append(report.held_message(lineage.name, deployed.held, now))
        return Choice(held, notes, warnings, flag=True)

    if failed:
        if served is not None and not cannot_hold:
            # Keeping what is in service costs nothing (it is valid for weeks); serving a
            # key nobody checked may cut every DANE sender off.
            return hold(*served, failed=failed)
        if not binding:
            what = ("nothing of it is in service yet to keep" if not deployed.expected
                    else "what is served cannot be kept")
            warnings.append(f"DANE: {failed}, and {what}, so {lineage.name} is deployed "
                            "unchecked; certbot-postfix-tls doctor checks it against the "
                            "records once they can be looked up")
            deployed.held = {}
            return Choice(material, notes, warnings)
    if not binding:
        deployed.held = {}
        if own_hold:
            notes.append(f"DANE: no signed TLSA record binds {lineage.name} any more: "
                         "its renewed certificate is served")
        return Choice(material, notes, warnings)
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
            ttl = max(int(before.get("ttl", 0)), ttls.get(found.owner, 0), found.ttl)
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
        if was_held and served is not None:
            notes.append(f"DANE: activated the renewed certificate of {lineage.name}: the TLSA "
                         "records match it and have been published for twice their TTL")
            if deployed.dane_update and served_chain:
                # The retired key's records go once no cache can hold a set without the
                # new one any more: twice their TTL after the activation.
                deployed.dane_retire += [
                    {"record": found.line(r),
                     "after": (now + datetime.timedelta(
                         seconds=2 * ttls.get(found.owner, found.ttl))).isoformat()}
                    for found in binding for r in found.usable
                    if r.matches(served_chain) and not r.matches(new_chain)]
                choice.flag = bool(deployed.dane_retire)
        return choice
    publish = report.publish_lines(binding, new_chain)
    if served is None:  # (then ready is False only when some record set rejects it)
        if not deployed.expected:
            raise errors.PluginError(
                f"TLSA records of {lineage.name} do not match its certificate: DANE "
                f"senders would refuse mail. Nothing was changed: publish {'; '.join(publish)} "
                "and deploy again, or deploy with --postfix-tls-dane ignore."
            )
        # What is served cannot be found in the archive any more: nothing to hold on to.
        warnings.append(
            f"DANE: the renewed certificate of {lineage.name} matches no TLSA record "
            f"and the one served before is no longer in the archive, so it is deployed: "
            f"publish {'; '.join(publish)}")
        deployed.held = {}
        return Choice(material, notes, warnings)
    if cannot_hold and config is not None:
        # Without smtpd_tls_chain_files Postfix reads live/ itself: nothing can be held.
        warnings.append(
            f"DANE: Postfix {'.'.join(map(str, config.version))} reads live/ directly (no "
            f"smtpd_tls_chain_files before 3.4), so the renewed certificate of {lineage.name} "
            f"is served though TLSA records do not match it: publish "
            f"{'; '.join(publish)}")
        deployed.held = {}
        return Choice(material, notes, warnings)
    choice = hold(*served, publish=publish, seen=seen,
                  ready_at=max(waiting_until).isoformat() if waiting_until and not publish
                  else "")
    if deployed.dane_update and publish:
        choice.publish = [(line, ttls.get(line.split()[0], 0)) for line in publish]
    return choice
