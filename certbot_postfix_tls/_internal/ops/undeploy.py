"""``certbot-postfix-tls undeploy --cert-name NAME``: take one lineage out of service.

Through the deployment pipeline, under the plugin's lock and a reverter
checkpoint (``certbot rollback`` undoes an undeploy like a deploy). The other
lineages stay served; when the removed one was the default, the default rule
picks the next. Removing the last lineage gives Postfix and Dovecot back the
TLS settings they had before the plugin's first deploy (recorded then),
including the SASL wiring it added, or refuses naming the setting the
operator changed since. A verification failure of what stays puts every file
back and reloads again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional, cast

from certbot import configuration, errors, reverter, util

from certbot_postfix_tls._internal import permissions, pipeline
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.ops.render import render
from certbot_postfix_tls._internal.state import State

Say = Callable[[str], None]


def _reverter(work_dir: str) -> reverter.Reverter:
    """certbot's reverter on its work directory, as certbot itself lays it out."""
    config = SimpleNamespace(
        backup_dir=os.path.join(work_dir, "backups"),
        in_progress_dir=os.path.join(work_dir, "IN_PROGRESS"),
        temp_checkpoint_dir=os.path.join(work_dir, "temp_checkpoint"),
        strict_permissions=False,
    )
    return reverter.Reverter(cast(configuration.NamespaceConfig, config))


def _certbot_lock(work_dir: str) -> None:
    """certbot's own lock on its work directory, until this process exits: undeploy
    recovers and writes reverter checkpoints there, as a certbot run does. Taken
    before the plugin's lock, in certbot's order (its hooks take the plugin's)."""
    os.makedirs(work_dir, mode=0o700, exist_ok=True)
    try:
        util.lock_dir_until_exit(work_dir)
    except errors.LockError as exc:
        raise errors.Error(
            f"certbot is running (it holds the lock on {work_dir}: {exc}); nothing changed: "
            "run undeploy again once it has finished."
        ) from None


def undeploy(config_dir: str, work_dir: str, name: str, say: Say, warn: Say,
             postfix_dir: Optional[str] = None) -> list[str]:
    """Remove ``name`` from every Postfix instance that serves it (or from the one in
    ``postfix_dir``); reload and verify what stays. Returns the verification problems."""
    _certbot_lock(work_dir)
    with plugin_lock(config_dir):
        revert = _reverter(work_dir)
        if os.path.isdir(os.path.join(work_dir, "IN_PROGRESS")):
            # An earlier operation was killed before it finished: undo it first, as
            # certbot does, so that this one starts from a consistent state.
            revert.recovery_routine()
            pipeline.regenerate(config_dir, warn)
            warn(f"an unfinished earlier operation was undone from {work_dir}/IN_PROGRESS")
        states = _serving(config_dir, name, postfix_dir)
        key_group = states[0].lineages[name].key_group

        def checkpoint(existing: set[str], created: list[str]) -> None:
            revert.add_to_checkpoint(existing, f"postfix-tls: undeploy {name}")
            if created:
                revert.register_file_creation(False, *created)

        done: list[tuple[pipeline.Site, State, pipeline.Desired]] = []
        problems: list[str] = []
        try:
            for state in states:
                site, desired, found = _undeploy_one(config_dir, state, name, checkpoint, warn)
                done.append((site, state, desired))
                problems += found
                if problems:
                    break
        except BaseException:
            _undo(config_dir, revert, done, warn)
            raise
        if problems:
            _undo(config_dir, revert, done, warn)
            raise errors.Error(
                f"Undeploying {name} was undone, because what stays failed verification: "
                + "; ".join(problems)
            )
        revert.finalize_checkpoint(f"postfix-tls: undeploy {name}")
        # The key group no longer needs to reach this lineage's keys.
        still = {n for s in State.load_all(config_dir) for n in s.lineages}
        notes = [f"key permissions: {change}" for change in
                 permissions.confine_lineages(config_dir, key_group, still)]
    for site, state, desired in done:
        for note in desired.notes + notes:
            say(f"  {note}")
        for warning in desired.warnings:
            warn(warning)
        where = f"Postfix ({site.mta.config_dir})"
        if state.lineages:
            say(f"undeployed {name} from {where}; default certificate: {state.default}; "
                f"still served: {', '.join(sorted(state.lineages))}")
        else:
            say(f"undeployed {name}, the last lineage of {where}: it (and Dovecot, if the "
                "plugin configured it) has the TLS settings it had before "
                "certbot-postfix-tls")
    return problems


def _serving(config_dir: str, name: str, postfix_dir: Optional[str]) -> list[State]:
    """The states of the instances ``name`` is removed from (refused when none serves it)."""
    if postfix_dir is not None:
        states = [State.load(config_dir, Postfix(postfix_dir).state_key(config_dir))]
    else:
        states = [s for s in State.load_all(config_dir) if name in s.lineages]
    states = [s for s in states if name in s.lineages]
    if not states:
        known = sorted({n for s in State.load_all(config_dir) for n in s.lineages})
        raise errors.Error(
            f"{name} was not deployed by postfix-tls (deployed: "
            f"{', '.join(known) or 'none'}); nothing changed."
        )
    return states


def _render_one(config_dir: str, state: State, name: str, dry: bool = False
                ) -> tuple[pipeline.Site, pipeline.Desired]:
    """``state`` without ``name``, and the configuration it calls for."""
    state.remove(name)
    state.renewed = [n for n in state.renewed if n != name]
    site = pipeline.Site.from_state(config_dir, state)
    # With no lineage left, Postfix's plan refuses to leave submission pointing at the
    # SASL socket that goes with the plugin's Dovecot file.
    return site, render(site, state, site.mta.read(), dry=dry)


@dataclass
class Planned:
    """What ``undeploy`` would do, nothing changed: each instance's preview, and the key
    group's access it would take away afterwards."""

    steps: list[tuple[pipeline.Site, pipeline.Desired, pipeline.Preview]]
    confine: list[permissions.Change]
    notes: list[str]


def plan(config_dir: str, work_dir: str, name: str,
         postfix_dir: Optional[str] = None) -> Planned:
    """``undeploy``'s changes, computed through the same render and a dry write."""
    notes = []
    if os.path.isdir(os.path.join(work_dir, "IN_PROGRESS")):
        notes.append(f"undeploy would first undo the unfinished earlier operation in "
                     f"{work_dir}/IN_PROGRESS; this plan shows the files as they are now")
    states = _serving(config_dir, name, postfix_dir)
    key_group = states[0].lineages[name].key_group
    steps = []
    for state in states:
        site, desired = _render_one(config_dir, state, name, dry=True)
        steps.append((site, desired, pipeline.preview(site, desired)))
    rendered = {s.instance: s for s in states}
    still = {n for s in State.load_all(config_dir)
             for n in rendered.get(s.instance, s).lineages}
    dry = permissions.DryRun()
    permissions.confine_lineages(config_dir, key_group, still, dry)
    return Planned(steps, dry.changes, notes)


def _undeploy_one(
    config_dir: str, state: State, name: str, checkpoint: pipeline.Checkpoint, warn: Say
) -> tuple[pipeline.Site, pipeline.Desired, list[str]]:
    old_default = state.default
    site, desired = _render_one(config_dir, state, name)
    pipeline.write(site, desired, checkpoint)
    judged = [state.default] if state.default and state.default != old_default else []
    problems = pipeline.activate(site, state, site.names(), judged, warn)
    if not state.lineages:  # checked like any change: the restored settings must serve TLS
        problems += pipeline.verify_removal(site, state, warn)
    return site, desired, problems


def _undo(config_dir: str, revert: reverter.Reverter,
          done: list[tuple[pipeline.Site, State, pipeline.Desired]], warn: Say) -> None:
    """Put every file back (checkpointed configuration, then the derived files from the
    restored states) and reload what was reloaded."""
    revert.recovery_routine()
    pipeline.regenerate(config_dir, warn)
    for _site, state, _desired in done:
        restored = State.load(config_dir, state.instance)
        restored.postfix_dir = restored.postfix_dir or state.postfix_dir
        restored.dovecot_config = restored.dovecot_config or state.dovecot_config
        site = pipeline.Site.from_state(config_dir, restored)
        pipeline.activate(site, restored, site.names(), [], warn)
