"""What the renewal hooks do, through the deployment pipeline.

- deploy hook, once per renewed lineage (RENEWED_LINEAGE): if the plugin
  deployed that lineage, re-render everything from the state with that
  lineage rebuilt from its new archive files (key permissions, key+chain file,
  SNI table, Dovecot's ``local_name`` blocks, the default certificate: a
  ``certonly --expand`` may have added a name), check it, and mark the
  services pending. No reload: N lineages renewed in one run reload once.
- post hook, once per run: when something is pending, re-render the renewed
  lineages (a no-op when the deploy hooks succeeded), reload each pending
  service once, verify, and clear the marks only on success.

certbot's directory hooks also run on certonly/run (5.3+) and post hooks
under --dry-run, so both do nothing unless the state says there is work.
Renewal never re-applies main.cf/master.cf policy and makes no reverter
checkpoint. A failure is one line on stderr and a non-zero exit, which
certbot only logs: the pending mark stays, and ``verify``/``doctor`` report
it CRITICAL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from certbot_postfix_tls._internal import daemons, hooks, pipeline
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.ops import dane_check
from certbot_postfix_tls._internal.ops.render import render
from certbot_postfix_tls._internal.state import (
    State,
    clear_renewal,
    mark_path,
    mark_renewal,
    unfinished_renewals,
)


@dataclass
class HookResult:
    """What a hook did: its exit code and one line for certbot's log."""

    code: int
    message: str


def run_deploy_hook(config_dir: str, renewed_lineage: Optional[str]) -> HookResult:
    """Rebuild a renewed lineage's files in every Postfix instance that serves it and
    mark the services pending.

    The renewal is recorded (``state.mark_renewal``) before anything that can fail or
    wait: certbot calls this hook once per renewal, so a lock that times out, an
    unexpected error or a kill must not lose it. The post hook, or this hook's next
    run, finishes it; ``verify`` and ``doctor`` report it until then."""
    if not renewed_lineage:
        return HookResult(0, "no RENEWED_LINEAGE: nothing to do")
    name = os.path.basename(os.path.normpath(renewed_lineage))
    if not State.instances(config_dir):  # never deployed: touch nothing
        return HookResult(0, f"{name} was not deployed by postfix-tls: nothing to do")
    mark = mark_renewal(config_dir, name)
    try:
        with plugin_lock(config_dir):
            return _deploy(config_dir, name)
    except Exception as exc:  # noqa: BLE001 - the mark stays: one line for certbot's log
        return HookResult(2, f"postfix-tls: renewed {name} is not deployed yet ({exc}); it is "
                             f"recorded in {mark}, and the post hook (certbot-postfix-tls hook "
                             "post) finishes it")


def _deploy(config_dir: str, name: str) -> HookResult:
    """The deploy hook's work, under the lock; the renewal mark is cleared once every
    state serving ``name`` records it as pending."""
    _record_renewals(config_dir)
    states = [s for s in State.load_all(config_dir) if name in s.lineages]
    if not states:
        return HookResult(0, f"{name} was not deployed by postfix-tls: nothing to do")
    done, failed, notes = [], [], []
    for state in states:
        try:
            site = pipeline.Site.from_state(config_dir, state)
            desired = render(site, state, site.mta.read(), rebuild=[name])
            pipeline.write(site, desired)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the renewal recorded
            # The snapshot put the previous files back; keep the mark so that verify,
            # doctor and the post hook know a renewal is waiting.
            failed.append(f"{_where(state)}: {exc}")
            continue
        done.append(f"{_where(state)} pending reload: {', '.join(state.pending)}")
        notes += desired.warnings + [n for n in desired.notes if n.startswith("DANE:")]
    if failed:
        return HookResult(2, f"postfix-tls: renewed {name} could not be deployed to "
                             + "; ".join(failed) + " (it stays pending: the post hook tries "
                             "again)")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return HookResult(0, f"rebuilt {name}; {'; '.join(done)}{suffix}")


def _record_renewals(config_dir: str) -> list[str]:
    """Move every renewal mark into the pending marks of the states serving it (saved
    before any render), then clear the mark. Returns the lineages recorded."""
    marked = unfinished_renewals(config_dir)
    if not marked:
        return []
    for state in State.load_all(config_dir):
        serving = [name for name in marked if name in state.lineages]
        if not serving:
            continue
        for name in serving:
            _mark_pending(state, name)
        state.save(config_dir)
    for name in marked:
        clear_renewal(config_dir, name)
    return marked


def _where(state: State) -> str:
    return f"Postfix {state.postfix_dir}"


def _mark_pending(state: State, name: str) -> None:
    for service in daemons.configured_names(state):
        if service not in state.pending:
            state.pending.append(service)
    if name not in state.renewed:
        state.renewed.append(name)


def run_post_hook(config_dir: str, warn: Callable[[str], None]) -> HookResult:
    """Reload each pending service once per instance and verify; clear marks only on
    success."""
    if not State.instances(config_dir):  # never deployed: touch nothing
        return HookResult(0, "nothing pending: no reload")
    with plugin_lock(config_dir):
        # Renewals whose deploy hook did not finish (lock timeout, error, kill) become
        # pending here, and the re-render below finishes them.
        _record_renewals(config_dir)
        # DANE: lineages held back for their TLSA records are looked up again on every run
        # (one this run renewed is decided by the pending reload's own render below).
        held = dane_check.check(config_dir, warn, skip_renewed=True)
        activated = dane_check.report(held, warn)
        states = [s for s in State.load_all(config_dir) if s.pending]
        if not states:
            return HookResult(2 if held.code >= 2 else 0,
                              activated or "nothing pending: no reload")
        for problem in hooks.problems(config_dir):
            warn(problem)
        problems, reloaded = [], []
        for state in states:
            try:
                site = pipeline.Site.from_state(config_dir, state)
                if state.renewed:
                    # Idempotent when the deploy hooks succeeded; finishes their work when
                    # one failed (e.g. postfix check, since fixed by the operator).
                    desired = render(site, state, site.mta.read(), rebuild=state.renewed)
                    pipeline.write(site, desired)
                found = pipeline.activate(site, state, list(state.pending),
                                          state.renewed or None, warn)
            except Exception as exc:  # noqa: BLE001 - the marks stay; one line says why
                found = [str(exc)]
            if found:
                problems += found
                continue
            reloaded.append(f"{', '.join(state.pending)} ({_where(state)})")
            state = State.load(config_dir, state.instance)
            state.pending, state.renewed = [], []
            state.save(config_dir)
    if problems:
        return HookResult(
            2, "postfix-tls: renewal deployed but not confirmed: " + "; ".join(problems)
        )
    return HookResult(0, f"reloaded {'; '.join(reloaded)} and verified every endpoint")


def unfinished_findings(config_dir: str) -> list[Finding]:
    """``verify``'s and ``doctor``'s CRITICAL for each renewal its deploy hook recorded
    but did not finish: the new certificate is not deployed, and certbot will not call
    the hook again for it."""
    return [Finding(
        "renewal-unfinished", "CRITICAL",
        f"{name} was renewed but its deploy hook did not finish (a lock wait that timed "
        f"out, an error or a kill; recorded in {mark_path(config_dir, name)}): run "
        "certbot-postfix-tls hook post, which deploys it, and read its error")
        for name in unfinished_renewals(config_dir)]
