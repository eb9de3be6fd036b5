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
from types import SimpleNamespace
from typing import cast

from certbot import configuration, errors, reverter

from certbot_postfix_tls._internal import permissions, pipeline, postfix
from certbot_postfix_tls._internal.lock import plugin_lock
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


def undeploy(config_dir: str, work_dir: str, name: str, say: Say, warn: Say) -> list[str]:
    """Remove ``name``; reload and verify what stays. Returns the verification problems."""
    with plugin_lock(config_dir):
        revert = _reverter(work_dir)
        if os.path.isdir(os.path.join(work_dir, "IN_PROGRESS")):
            # An earlier operation was killed before it finished: undo it first, as
            # certbot does, so that this one starts from a consistent state.
            revert.recovery_routine()
            state = State.load(config_dir)
            if state.lineages:
                pipeline.regenerate(pipeline.Site.from_state(config_dir, state), warn)
            warn(f"an unfinished earlier operation was undone from {work_dir}/IN_PROGRESS")
        state = State.load(config_dir)
        if name not in state.lineages:
            known = ", ".join(sorted(state.lineages)) or "none"
            raise errors.Error(
                f"{name} was not deployed by postfix-tls (deployed: {known}); nothing changed."
            )
        old_default = state.default
        key_group = state.lineages[name].key_group
        state.remove(name)
        state.renewed = [n for n in state.renewed if n != name]
        site = pipeline.Site.from_state(config_dir, state)
        config = site.mta.read()
        desired = pipeline.render(site, state, config)
        if not state.lineages:
            _refuse_dangling_sasl(config, desired, state)

        def checkpoint(existing: set[str], created: list[str]) -> None:
            revert.add_to_checkpoint(existing, f"postfix-tls: undeploy {name}")
            if created:
                revert.register_file_creation(False, *created)

        try:
            snapshot = pipeline.write(site, desired, checkpoint)
        except BaseException:
            revert.recovery_routine()
            raise
        judged = [state.default] if state.default and state.default != old_default else []
        problems = pipeline.activate(site, state, state.services(), judged, warn)
        if problems:
            snapshot.restore()
            revert.recovery_routine()
            site = pipeline.Site.from_state(config_dir, State.load(config_dir))
            pipeline.activate(site, State.load(config_dir), state.services(), [], warn)
            raise errors.Error(
                f"Undeploying {name} was undone, because what stays failed verification: "
                + "; ".join(problems)
            )
        revert.finalize_checkpoint(f"postfix-tls: undeploy {name}")
        # The key group no longer needs to reach this lineage's keys.
        desired.notes += [f"key permissions: {change}" for change in
                          permissions.confine_lineages(config_dir, key_group, state.lineages)]
    for note in desired.notes:
        say(f"  {note}")
    for warning in desired.warnings:
        warn(warning)
    if state.lineages:
        say(f"undeployed {name}; default certificate: {state.default}; still served: "
            f"{', '.join(sorted(state.lineages))}")
    else:
        say(f"undeployed {name}, the last lineage: Postfix ({site.mta.config_dir}) and "
            "Dovecot have the TLS settings they had before certbot-postfix-tls; its hooks "
            "and state are removed")
    return problems


def _refuse_dangling_sasl(
    config: postfix.PostfixConfig, desired: pipeline.Desired, state: State
) -> None:
    """Never leave smtpd pointing at the Dovecot socket the plugin's file declared
    once that file is gone: smtpd would die ("no SASL authentication mechanisms")."""
    if not state.sasl_listener or not postfix.uses_dovecot_socket(config):
        return
    removing = set(desired.params_remove) | {
        f"{p.service}/{p.param}" for p in desired.service_params
    }
    for service in config.services_on_port(postfix.SUBMISSION_PORT) + config.services_on_port(
        postfix.SMTPS_PORT
    ):
        if service.key in desired.services_remove:
            continue
        if service.overrides.get("smtpd_sasl_type") == "dovecot" and (
            f"{service.key}/smtpd_sasl_type" not in removing
        ):
            raise errors.PluginError(
                f"master.cf service {service.name} authenticates through Dovecot's socket "
                f"{state.sasl_listener}, which only the plugin's Dovecot file declares: "
                "declare that unix_listener in Dovecot's own configuration (or remove "
                "smtpd_sasl_type=dovecot from the service), then undeploy again."
            )
