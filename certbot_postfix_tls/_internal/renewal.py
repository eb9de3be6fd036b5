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

from certbot_postfix_tls._internal import hooks, pipeline
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.state import State


@dataclass
class HookResult:
    """What a hook did: its exit code and one line for certbot's log."""

    code: int
    message: str


def run_deploy_hook(config_dir: str, renewed_lineage: Optional[str]) -> HookResult:
    """Rebuild a renewed lineage's files and mark the services pending."""
    if not renewed_lineage:
        return HookResult(0, "no RENEWED_LINEAGE: nothing to do")
    name = os.path.basename(os.path.normpath(renewed_lineage))
    if not os.path.exists(State.path(config_dir)):  # never deployed: touch nothing
        return HookResult(0, f"{name} was not deployed by postfix-tls: nothing to do")
    with plugin_lock(config_dir):
        state = State.load(config_dir)
        if name not in state.lineages:
            return HookResult(0, f"{name} was not deployed by postfix-tls: nothing to do")
        _mark_pending(state, name)
        try:
            site = pipeline.Site.from_state(config_dir, state)
            desired = pipeline.render(site, state, site.mta.read(), rebuild=[name])
            pipeline.write(site, desired)
        except (errors.Error, OSError) as exc:
            # The snapshot put the previous files back; keep the mark so that verify
            # and doctor say a renewal is waiting.
            marked = State.load(config_dir)
            _mark_pending(marked, name)
            marked.save(config_dir)
            return HookResult(2, f"postfix-tls: renewed {name} could not be deployed: {exc}")
    notes = [w for w in desired.warnings]
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return HookResult(0, f"rebuilt {name}; pending reload: {', '.join(state.pending)}{suffix}")


def _mark_pending(state: State, name: str) -> None:
    for service in state.services():
        if service not in state.pending:
            state.pending.append(service)
    if name not in state.renewed:
        state.renewed.append(name)


def run_post_hook(config_dir: str, warn: Callable[[str], None]) -> HookResult:
    """Reload each pending service once and verify; clear marks only on success."""
    if not os.path.exists(State.path(config_dir)):  # never deployed: touch nothing
        return HookResult(0, "nothing pending: no reload")
    with plugin_lock(config_dir):
        state = State.load(config_dir)
        if not state.pending:
            return HookResult(0, "nothing pending: no reload")
        for problem in hooks.problems(config_dir):
            warn(problem)
        try:
            site = pipeline.Site.from_state(config_dir, state)
            if state.renewed:
                # Idempotent when the deploy hooks succeeded; finishes their work when
                # one failed (e.g. postfix check, since fixed by the operator).
                desired = pipeline.render(site, state, site.mta.read(), rebuild=state.renewed)
                pipeline.write(site, desired)
            problems = pipeline.activate(site, state, list(state.pending),
                                         state.renewed or None, warn)
        except (errors.Error, OSError) as exc:
            problems = [str(exc)]
        if problems:
            return HookResult(
                2, "postfix-tls: renewal deployed but not confirmed: " + "; ".join(problems)
            )
        reloaded = ", ".join(state.pending)
        state = State.load(config_dir)
        state.pending, state.renewed = [], []
        state.save(config_dir)
    return HookResult(0, f"reloaded {reloaded} and verified every endpoint")
