"""TLS versions: ports that cannot do TLS 1.2 and 1.3, and the setting that decides."""

from __future__ import annotations

import shlex

from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix.config import (
    PROTOCOL_ORDER,
    postfix_protocols,
)
from certbot_postfix_tls._internal.doctor.context import Context, Probe, ports_phrase
from certbot_postfix_tls._internal.doctor.servers import MODERN
from certbot_postfix_tls._internal.findings import Finding


def protocol_setting(context: Context, item: Probe) -> tuple[str, str, str]:
    """(the setting that decides the protocols, its value's verdict, the fix)."""
    endpoint = item.endpoint
    config = context.config  # never None for a Postfix endpoint: they come from it
    if endpoint.service == Dovecot.name or config is None:
        value = context.imap_settings.get("ssl_min_protocol", "")
        file = context.imap.config_file if context.imap else "dovecot.conf"
        return (f"ssl_min_protocol = {value} (and ssl_cipher_list) in Dovecot's configuration",
                "", f"set `ssl_min_protocol = TLSv1.2` in {file}, then doveadm reload")
    service = context.services.get(endpoint)
    level = (service.overrides.get("smtpd_tls_security_level") if service else None) \
        or postfix_config.effective_smtpd_level(config.main)
    name = ("smtpd_tls_mandatory_protocols" if level in ("encrypt", "secure", "verify")
            else "smtpd_tls_protocols")
    value, override = config.in_force(service, name)
    modern = ">=TLSv1.2" if config.version >= (3, 6) else "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1"
    if override and service is not None:
        where = f"-o {name}={value} on master.cf service {service.key}"
        fix = f"postconf -P {shlex.quote(f'{service.key}/{name}={modern}')}, then postfix reload"
    else:
        where = f"{name} = {value} in {context.main_cf}"
        fix = f"postconf -e {shlex.quote(f'{name}={modern}')}, then postfix reload"
    enabled = postfix_protocols(value)
    verdict = "" if enabled & set(MODERN) else (
        f"it enables {', '.join(p for p in PROTOCOL_ORDER if p in enabled) or 'nothing'}")
    return where, verdict, fix


def protocol_checks(context: Context) -> list[Finding]:
    """Ports that fail TLS 1.2 and 1.3 but speak an older version, or whose settings
    exclude both: CRITICAL; TLS 1.3 only: WARNING. One line per deciding setting."""
    probes = context.probes
    groups: dict[tuple[str, str, str], list[Probe]] = {}
    for item in probes:
        where, verdict, fix = protocol_setting(context, item)
        tls12, tls13 = item.versions.get("TLSv1.2"), item.versions.get("TLSv1.3")
        # When nothing works at all, the protocols are not the reason (a key or
        # certificate file is, which certificate-files and the port's own line name).
        if verdict or (tls12 is False and tls13 is False and item.versions.get("legacy")):
            legacy = ("; only TLS 1.0/1.1 works, which current clients refuse"
                      if item.versions.get("legacy") else "")
            observed = (f"TLS 1.2 and TLS 1.3 handshakes fail{legacy}"
                        if tls12 is False and tls13 is False else "TLS 1.2 and 1.3 are off")
            because = f" ({verdict})" if verdict else ""
            groups.setdefault(("CRITICAL", f"{observed}: decided by {where}{because}", fix),
                              []).append(item)
        elif tls12 is False and tls13:
            groups.setdefault(("WARNING", "only TLS 1.3 works: servers and clients limited "
                                          f"to TLS 1.2 cannot use TLS here; decided by "
                                          f"{where}", fix), []).append(item)
    checks = [Finding("tls-protocols", status, f"{ports_phrase(members)}: {what}; fix: {fix}")
              for (status, what, fix), members in groups.items()]
    if not checks and any(p.versions for p in probes):
        checks.append(Finding("tls-protocols", "OK",
                              "every TLS port completes a TLS 1.2 and a TLS 1.3 handshake"))
    return checks
