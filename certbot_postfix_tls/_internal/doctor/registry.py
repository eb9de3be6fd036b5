"""Every doctor check, in the order ``run`` reports them: the plugin's own first, then
the configured servers in the order an administrator fixes them. A check is one
function of the ``Context`` returning its findings ([] when it does not apply)."""

from __future__ import annotations

from collections.abc import Callable

from certbot_postfix_tls._internal.doctor import (
    auth_tls,
    certificates,
    dane,
    deployments,
    profiles,
    protocols,
    restart_hooks,
    servers,
    submission,
)
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.findings import Finding

Check = Callable[[Context], list[Finding]]

CHECKS: tuple[Check, ...] = (
    deployments.deployed_checks,
    deployments.pending_checks,
    deployments.renewal_hook_checks,
    deployments.key_checks,
    dane.tlsa_checks,
    deployments.configuration_checks,
    deployments.exposure_checks,
    servers.running_checks,
    certificates.file_checks,
    certificates.chain_checks,
    certificates.stale_checks,
    certificates.expiry_checks,
    certificates.rfc5280_checks,
    profiles.profile_checks,
    protocols.protocol_checks,
    auth_tls.legacy_checks,
    auth_tls.dovecot_protocol_checks,
    auth_tls.anonymous_checks,
    submission.submission_checks,
    submission.wrappermode_checks,
    submission.sasl_checks,
    submission.port25_checks,
    auth_tls.port25_policy_checks,
    submission.outbound_checks,
    restart_hooks.hook_file_checks,
    servers.not_checked,
    deployments.session_checks,
)
