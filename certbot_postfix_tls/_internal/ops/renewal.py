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

from certbot import errors

from certbot_postfix_tls._internal import daemons, hooks, pipeline
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.ops import dane_check
from certbot_postfix_tls._internal.ops.render import render
from certbot_postfix_tls._internal.state import State


@dataclass
class HookResult:
    """What a hook did: its exit code and one line for certbot's log."""

    code: int
    message: str


def run_deploy_hook(config_dir: str, renewed_lineage: Optional[str]) -> HookResult:
    """Rebuild a renewed lineage's files in every Postfix instance that serves it and
    mark the services pending."""
    if not renewed_lineage:
        return HookResult(0, "no RENEWED_LINEAGE: nothing to do")
    name = os.path.basename(os.path.normpath(renewed_lineage))
    if not State.instances(config_dir):  # never deployed: touch nothing
        return HookResult(0, f"{name} was not deployed by postfix-tls: nothing to do")
    with plugin_lock(config_dir):
        states = [s for s in State.load_all(config_dir) if name in s.lineages]
        if not states:
            return HookResult(0, f"{name} was not deployed by postfix-tls: nothing to do")
        done, failed, notes = [], [], []
        for state in states:
            _mark_pending(state, name)
            try:
                site = pipeline.Site.from_state(config_dir, state)
                desired = render(site, state, site.mta.read(), rebuild=[name])
                pipeline.write(site, desired)
            except (errors.Error, OSError) as exc:
                # The snapshot put the previous files back; keep the mark so that
                # verify and doctor say a renewal is waiting.
                marked = State.load(config_dir, state.instance)
                _mark_pending(marked, name)
                marked.save(config_dir)
                failed.append(f"{_where(state)}: {exc}")
                continue
            done.append(f"{_where(state)} pending reload: {', '.join(state.pending)}")
            notes += desired.warnings + [n for n in desired.notes if n.startswith("DANE:")]
    if failed:
        return HookResult(2, f"postfix-tls: renewed {name} could not be deployed to "
                             + "; ".join(failed))
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return HookResult(0, f"rebuilt {name}; {'; '.join(done)}{suffix}")


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
            except (errors.Error, OSError) as exc:
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
