"""DANE: the TLSA records published for each deployed lineage against what is served."""

from __future__ import annotations

from certbot_postfix_tls._internal.dane import report as dane_report
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.findings import Finding


def tlsa_checks(context: Context) -> list[Finding]:
    """``dane.report.doctor_checks`` for a deployment; nothing without one."""
    if not context.deployed:
        return []
    return dane_report.doctor_checks(context.config_dir, context.state)
