"""What doctor examines: the Postfix and Dovecot it found, what each TLS port did when
probed, and the verdict per port. Every check reads one ``Context``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from certbot_postfix_tls._internal import verify

# Every Postfix parameter the checks read beyond postfix_config.MAIN_PARAMS, read expanded
# (smtpd_tls_key_file defaults to $smtpd_tls_cert_file).
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dialogues import Handshake, PlaintextSmtp
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.state import State
from certbot_postfix_tls._internal.tls_client import Endpoint, VerifyError

POSTFIX_PARAMS = (
    "smtpd_tls_chain_files",
    *postfix_config.LEGACY_CERT_PARAMS,
    "smtpd_tls_protocols",
    "smtpd_tls_mandatory_protocols",
    "smtpd_tls_exclude_ciphers",
    "smtpd_tls_mandatory_exclude_ciphers",
    "smtpd_tls_auth_only",
    "smtpd_sasl_auth_enable",
    "smtpd_sasl_type",
    "smtpd_sasl_path",
    "cyrus_sasl_config_path",
    "smtp_tls_chain_files",
    "smtp_tls_cert_file",
    "smtp_tls_key_file",
    "smtp_tls_security_level",
    "smtp_enforce_tls",
    "smtp_use_tls",
    "queue_directory",
)


@dataclass
class Probe:
    """What one TLS port did: a handshake (no SNI), the same pinned to TLS 1.2 and 1.3,
    TLS 1.0-1.1, anonymous suites, and for SMTP with STARTTLS, what it answers before
    TLS."""

    endpoint: Endpoint
    shake: Optional[Handshake] = None
    error: Optional[VerifyError] = None
    versions: dict[str, bool] = field(default_factory=dict)
    plain: Optional[PlaintextSmtp] = None
    # Whether a handshake offering only anonymous (certificate-less) suites completed;
    # None when not tried (the port does not work, or only with TLS 1.3).
    anonymous: Optional[bool] = None

    @property
    def authenticates(self) -> bool:
        """Whether passwords travel here: IMAP and POP3 always, SMTP when the port
        offers AUTH after TLS."""
        if self.endpoint.protocol != "smtp":
            return True
        after = self.shake.capabilities_after_tls if self.shake else []
        return any(k.upper().split()[:1] == ["AUTH"] for k in after)

    @property
    def where(self) -> str:
        endpoint = self.endpoint
        return f"port {endpoint.port} ({endpoint.service} {endpoint.label or endpoint.protocol})"


@dataclass
class Context:
    """The Postfix and Dovecot configured on this machine, as doctor examines them."""

    config_dir: str  # certbot's
    state: State
    verify_address: str
    verify_ports: list[int]
    mta: Optional[Postfix] = None
    config: Optional[postfix_config.PostfixConfig] = None  # POSTFIX_PARAMS expanded
    sasl_types: set[str] = field(default_factory=set)  # postconf -a
    imap: Optional[Dovecot] = None
    imap_settings: dict[str, str] = field(default_factory=dict)
    postfix_running: Optional[bool] = None
    dovecot_running: Optional[bool] = None
    findings: list[Finding] = field(default_factory=list)  # what finding them showed
    # Postfix's probed endpoints and the master.cf service each belongs to.
    services: dict[Endpoint, postfix_config.MasterService] = field(default_factory=dict)
    endpoints: list[Endpoint] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    # The verdict per endpoint (verify's when deployed), or why there is none.
    results: list[verify.EndpointResult] = field(default_factory=list)
    results_error: str = ""
    # Recent log text and where it came from, per service (read once, see logs.py).
    logs: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def deployed(self) -> bool:
        return bool(self.state.lineages)

    @property
    def main_cf(self) -> str:
        return self.mta.main_cf if self.mta else "main.cf"


def is_root() -> bool:
    """Whether doctor runs as root (checks of root-only files say so otherwise)."""
    return os.geteuid() == 0


def ports_phrase(probes: Sequence[Probe]) -> str:
    """``port 25 (postfix smtp)`` or ``ports 143 (dovecot imap), 993 (dovecot imaps)``."""
    wheres = list(dict.fromkeys(p.where for p in probes))
    if len(wheres) == 1:
        return wheres[0]
    return "ports " + ", ".join(where[len("port "):] for where in wheres)
