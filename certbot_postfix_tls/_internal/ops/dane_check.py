"""``certbot-postfix-tls dane check`` (and every post hook): activate the lineages held
back for their TLSA records once DNS allows it, and remove (RFC 2136) the retired keys'
records whose time has come."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from certbot import errors

from certbot_postfix_tls._internal import findings, pipeline
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dane import flag, update
from certbot_postfix_tls._internal.dane.report import now, parse_time
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.ops.render import render
from certbot_postfix_tls._internal.state import State

Warn = Callable[[str], None]


@dataclass
class CheckResult:
    """The worst exit code (findings.EXIT_CODES) and one "STATUS: sentence" per line."""

    code: int
    lines: list[str] = field(default_factory=list)


def check(config_dir: str, warn: Warn, skip_renewed: bool = False) -> CheckResult:
    """Re-query every held lineage; activate those whose new certificate DNS now allows
    (rebuild, one Postfix reload per instance, verify). ``skip_renewed``: leave the
    lineages a pending reload is for to that reload (the post hook)."""
    result = CheckResult(findings.EXIT_CODES["OK"])
    if not State.instances(config_dir):
        return result
    with plugin_lock(config_dir):
        # Instances share a lineage's key+chain file and merge its hold: once one activates
        # it, the others that held it are checked again in a second pass.
        for attempt in range(2):
            before = len(result.lines)
            for state in State.load_all(config_dir):
                held = sorted(name for name, lineage in state.lineages.items() if lineage.held
                              and not (skip_renewed and name in state.renewed))
                if held:
                    _check_state(config_dir, state, held, warn, result)
                if attempt == 0:
                    _retire(config_dir, State.load(config_dir, state.instance), result)
            if not any(line.startswith("OK: activated") for line in result.lines[before:]):
                break
        flag.sync_flag(config_dir)
    result.lines = list(dict.fromkeys(result.lines))
    return result


def _retire(config_dir: str, state: State, result: CheckResult) -> None:
    """Remove (RFC 2136) the retired keys' records whose time has come."""
    current = now()
    changed = False
    for _, lineage in sorted(state.lineages.items()):
        due = [entry for entry in lineage.dane_retire if parse_time(entry["after"]) <= current]
        if not due or not lineage.dane_update:
            continue
        notes: list[str] = []
        warnings: list[str] = []
        if update.send_update(lineage, [], [str(entry["record"]) for entry in due], notes,
                              warnings):
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
        desired = render(site, state, site.mta.read(), rebuild=held)
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
        problems = pipeline.activate(site, state, [Postfix.name], activated, warn)
    except (errors.Error, OSError) as exc:
        problems = [str(exc)]
    if problems:
        # The post hook and verify take it from here, as after a failed renewal reload.
        marked = State.load(config_dir, state.instance)
        marked.pending = list(dict.fromkeys([*marked.pending, Postfix.name]))
        marked.renewed = list(dict.fromkeys([*marked.renewed, *activated]))
        marked.save(config_dir)
        result.lines.append(f"CRITICAL: activating {', '.join(activated)} failed: "
                            + "; ".join(problems))
        _worse(result, "CRITICAL")
        return
    for name in activated:
        result.lines.append(f"OK: activated {name}: Postfix ({state.postfix_dir}) serves its "
                            "renewed certificate, which the validated TLSA records match")
