"""The plugin's own checks: whether it deployed anything (recorded state), reloads
left pending, the hooks it installed, key permissions for its key group, private keys
others can read, and the Dovecot sessions the next renewal's reload cuts."""

from __future__ import annotations

from certbot import errors

from certbot_postfix_tls._internal import hooks, permissions, services
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.doctor.context import Context, is_root
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.ops import renewal
from certbot_postfix_tls._internal.state import State


def deployed_checks(context: Context) -> list[Finding]:
    """Whether the plugin deployed something: its own checks run, or are skipped."""
    state, config_dir = context.state, context.config_dir
    if context.deployed:
        return [Finding("deployed", "OK",
                        f"deployed by postfix-tls ({State.path(config_dir)}): "
                        f"{', '.join(sorted(state.lineages))}")]
    return [Finding(
        "deployed", "OK",
        f"not deployed by postfix-tls (no lineage in {State.path(config_dir)}): its own "
        "checks (state, the hooks it installs, key group, pending reloads) are skipped; "
        "the configured Postfix and Dovecot are checked as they are")]


def pending_checks(context: Context) -> list[Finding]:
    """A renewal deployed but its reload never succeeded, or recorded by the deploy hook
    but never deployed (CRITICAL)."""
    unfinished = renewal.unfinished_findings(context.config_dir)
    if not context.deployed or not context.state.pending:
        return unfinished
    return unfinished + [Finding("pending-reload", "CRITICAL",
                                 services.pending_message(context.state))]


def renewal_hook_checks(context: Context) -> list[Finding]:
    """The plugin's deploy and post hooks: installed, intact, running this plugin."""
    if not context.deployed:
        return []
    problems = hooks.problems(context.config_dir)
    if not problems:
        return [Finding("renewal-hooks", "OK",
                        "deploy and post hooks installed, root-owned, isolated, and their "
                        "interpreter runs this plugin")]
    return [Finding("renewal-hooks", "WARNING", problem) for problem in problems]


def key_checks(context: Context) -> list[Finding]:
    """Each deployed lineage's private key: root and its key group only (root only)."""
    lineages = sorted(context.state.lineages.items())
    if not is_root():
        return [Finding(f"key-permissions {name}", "OK",
                        f"skipped: {lineage.key_path} is examined by root only (certbot's "
                        "live/ is closed to others); run doctor as root to check it")
                for name, lineage in lineages]
    result = []
    for name, lineage in lineages:
        problems = permissions.key_problems(lineage.key_path, lineage.key_group)
        other_readable = any("every user on the machine" in p for p in problems)
        status = "CRITICAL" if other_readable else ("WARNING" if problems else "OK")
        message = "; ".join(problems) or (
            f"{lineage.key_path}: root and group {lineage.key_group} only"
        )
        result.append(Finding(f"key-permissions {name}", status, message))
    return result


def configuration_checks(context: Context) -> list[Finding]:
    """Why the deployed lineages' handshakes could not run, when they could not."""
    if not context.results_error:
        return []
    return [Finding("configuration", "UNKNOWN", context.results_error)]


def exposure_checks(context: Context) -> list[Finding]:
    """Every private key under archive/ that others, or a key group it was not
    deployed for, can read: one check each, with the chmod that fixes it."""
    config_dir = context.config_dir
    deployed = {name: lineage.key_group for name, lineage in context.state.lineages.items()}
    exposures = permissions.exposed_keys(config_dir, deployed)
    checks = [
        Finding("key-exposure", "CRITICAL" if exposure.world else "WARNING", exposure.sentence())
        for exposure in exposures
    ]
    if not checks:
        checks.append(Finding(
            "key-exposure", "OK",
            f"no private key under {config_dir}/archive is readable beyond root and the key "
            "group of the lineages deployed with it"))
    return checks


def session_checks(context: Context) -> list[Finding]:
    """How many established IMAP/POP3 sessions Dovecot's next reload (the next renewal)
    cuts, and which --postfix-tls-dovecot-sessions mode is in effect."""
    imap, state = context.imap, context.state
    if imap is None or not context.dovecot_running:
        return []
    try:
        mode = imap.session_mode()
    except errors.Error as exc:
        return [Finding("dovecot-sessions", "UNKNOWN", str(exc))]
    keep = mode == dovecot_plan.SESSIONS_KEEP
    where = f"shutdown_clients = {'no' if keep else 'yes'} in {imap.config_file}"
    if state.dovecot_config and state.dovecot_sessions != mode:
        where += (f", your own setting: --postfix-tls-dovecot-sessions "
                  f"{state.dovecot_sessions} adds nothing")
    if not is_root():
        counted = ("the established sessions (skipped counting them: doveadm who needs "
                   "root; run doctor as root)")
    else:
        try:
            found = imap.sessions()
        except errors.Error as exc:
            counted = f"the established sessions (not counted: {exc})"
        else:
            detail = ", ".join(f"{proto} {n}" for proto, n in sorted(found.items()))
            counted = f"{sum(found.values())} established sessions ({detail or 'none'})"
    if keep:
        message = (f"mode keep ({where}): the next reload (renewal) keeps {counted}; "
                   "`dovecot stop` leaves them running too")
    else:
        message = (f"mode cut ({where}): the next reload (renewal) cuts {counted}, and "
                   "their clients reconnect; --postfix-tls-dovecot-sessions keep keeps them")
    return [Finding("dovecot-sessions", "OK", message)]
