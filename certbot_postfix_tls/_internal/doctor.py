"""``certbot-postfix-tls doctor``: the usual mail-TLS failures, each as a check.

It examines the Postfix and Dovecot that are configured and running, whether or not
this plugin deployed anything (``diagnose``): certificate and key files, chains,
certificates renewed but never loaded, expiry, TLS versions, submission and SASL, port
25, outbound TLS, renewal hooks that restart the daemons or that certbot skips. When
the plugin did deploy, its own checks run too: recorded state, the hooks it installed,
key permissions for its key group, pending reloads, and a handshake per lineage name
(as ``verify``); otherwise one check says they were skipped because nothing was
deployed. Private keys under archive/ that others can read are always reported.
"""

from __future__ import annotations

import os
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import dane, diagnose, hooks, permissions, services, verify
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.state import State

__all__ = ["Finding", "run"]


def _key_checks(state: State) -> list[Finding]:
    if os.geteuid() != 0:
        return [Finding(f"key-permissions {name}", "OK",
                      f"skipped: {lineage.key_path} is examined by root only (certbot's live/ "
                      "is closed to others); run doctor as root to check it")
                for name, lineage in sorted(state.lineages.items())]
    result = []
    for name, lineage in sorted(state.lineages.items()):
        problems = permissions.key_problems(lineage.key_path, lineage.key_group)
        other_readable = any("every user on the machine" in p for p in problems)
        status = "CRITICAL" if other_readable else ("WARNING" if problems else "OK")
        message = "; ".join(problems) or (
            f"{lineage.key_path}: root and group {lineage.key_group} only"
        )
        result.append(Finding(f"key-permissions {name}", status, message))
    return result


def _exposure_checks(config_dir: str, state: State) -> list[Finding]:
    """Every private key under archive/ that others, or a key group it was not
    deployed for, can read: one check each, with the chmod that fixes it."""
    deployed = {name: lineage.key_group for name, lineage in state.lineages.items()}
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


def _hook_checks(config_dir: str) -> list[Finding]:
    problems = hooks.problems(config_dir)
    if not problems:
        return [Finding("renewal-hooks", "OK",
                      "deploy and post hooks installed, root-owned, isolated, and their "
                      "interpreter runs this plugin")]
    return [Finding("renewal-hooks", "WARNING", problem) for problem in problems]


def _plugin_checks(config_dir: str, state: State) -> list[Finding]:
    """What only a deployment by this plugin has: state, its hooks, its key group."""
    checks = [Finding("deployed", "OK",
                    f"deployed by postfix-tls ({State.path(config_dir)}): "
                    f"{', '.join(sorted(state.lineages))}")]
    if state.pending:
        checks.append(Finding(
            "pending-reload", "CRITICAL",
            f"a renewal was deployed but {', '.join(state.pending)} was not reloaded "
            "successfully: run certbot-postfix-tls hook post and read its error"))
    checks += _hook_checks(config_dir)
    checks += _key_checks(state)
    checks += dane.doctor_checks(config_dir, state)  # TLSA records against what is served
    return checks


def _session_checks(servers: diagnose.Servers) -> list[Finding]:
    """How many established IMAP/POP3 sessions Dovecot's next reload (the next renewal)
    cuts, and which --postfix-tls-dovecot-sessions mode is in effect."""
    imap, state = servers.imap, servers.state
    if imap is None or not servers.dovecot_running:
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
    if os.geteuid() != 0:
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


def run(config_dir: str, postfix_dir: Optional[str] = None,
        dovecot_config: Optional[str] = None
        ) -> tuple[list[verify.EndpointResult], list[Finding]]:
    """Every check. Endpoint results are ``verify``'s per lineage and name when the
    plugin deployed something, else one verdict per TLS port of what is configured."""
    state = State.load(config_dir)
    servers = diagnose.find(config_dir, state, postfix_dir, dovecot_config)
    # Probed first, one port at a time: a process still holding a renewed
    # certificate's predecessor answers the first connection, not later parallel ones.
    probes = diagnose.probe_all(servers)
    checks: list[Finding] = []
    results: list[verify.EndpointResult] = []
    if state.lineages:
        checks += _plugin_checks(config_dir, state)
        try:
            results = services.check_all(state, endpoints_to_check=servers.endpoints,
                                         retry_seconds=0)
        except (errors.Error, verify.VerifyError) as exc:
            checks.append(Finding("configuration", "UNKNOWN", str(exc)))
    else:
        checks.append(Finding(
            "deployed", "OK",
            f"not deployed by postfix-tls (no lineage in {State.path(config_dir)}): its own "
            "checks (state, the hooks it installs, key group, pending reloads) are skipped; "
            "the configured Postfix and Dovecot are checked as they are"))
        results = diagnose.endpoint_results(servers, probes)
    checks += _exposure_checks(config_dir, state)
    checks += diagnose.checks(servers, probes)
    checks += _session_checks(servers)
    return results, checks
