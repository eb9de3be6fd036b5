"""What a TLS scanner reports where passwords travel: TLS 1.0/1.1 and anonymous
(certificate-less) suites accepted on a port that offers authentication, and port 25's
opportunistic policy by contrast."""

from __future__ import annotations

import shlex

from certbot_postfix_tls._internal import constants
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.dovecot.doveconf import (
    MIN_PROTOCOL,
    legacy_min_protocol,
    legacy_protocol_warning,
)
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.doctor.context import Context, Probe, ports_phrase
from certbot_postfix_tls._internal.doctor.protocols import protocol_setting
from certbot_postfix_tls._internal.findings import Finding

_MANDATORY = ("encrypt", "verify", "secure")
# Port 25 with AUTH: moving AUTH to submission is the better fix than hardening 25.
_PORT25_NOTE = (" (or offer AUTH on 587/465 only: -o smtpd_sasl_auth_enable=no on the "
                "port-25 service)")


def _port25(item: Probe) -> str:
    return _PORT25_NOTE if item.endpoint.port == constants.SMTP_PORT else ""


def legacy_checks(context: Context) -> list[Finding]:
    """TLS 1.0 or 1.1 completed on a port that offers authentication (RFC 8996 forbids
    both; RFC 8314 asks TLS 1.2+ for mail access and submission): WARNING per setting."""
    groups: dict[tuple[str, str], list[Probe]] = {}
    for item in context.probes:
        if not item.versions.get("legacy") or not item.authenticates:
            continue
        if not (item.versions.get("TLSv1.2") or item.versions.get("TLSv1.3")):
            continue  # only old versions work: tls-protocols reports it CRITICAL
        where, _verdict, fix = protocol_setting(context, item)
        groups.setdefault((where, fix + _port25(item)), []).append(item)
    checks = [Finding(
        "legacy-tls", "WARNING",
        f"{ports_phrase(members)} offer{'s' if len(members) == 1 else ''} authentication and "
        f"accept{'s' if len(members) == 1 else ''} TLS 1.0/1.1, which RFC 8996 forbids "
        f"(passwords may travel over them): decided by {where}; fix: {fix}")
        for (where, fix), members in groups.items()]
    if not checks and any(p.authenticates and "legacy" in p.versions for p in context.probes):
        checks.append(Finding("legacy-tls", "OK",
                              "no port that offers authentication accepts TLS 1.0/1.1"))
    return checks


def _cipher_setting(context: Context, item: Probe) -> tuple[str, str]:
    """(the setting that decides which suites a port accepts, the fix excluding aNULL)."""
    config = context.config
    if item.endpoint.service == Dovecot.name or config is None:
        value = context.imap_settings.get("ssl_cipher_list", "")
        file = context.imap.config_file if context.imap else "dovecot.conf"
        return (f"ssl_cipher_list = {value or '(unset)'} in Dovecot's configuration",
                f"add `:!aNULL` to ssl_cipher_list in {file}, then doveadm reload")
    service = context.services.get(item.endpoint)
    level = (service.overrides.get("smtpd_tls_security_level") if service else None) \
        or postfix_config.effective_smtpd_level(config.main)
    name = ("smtpd_tls_mandatory_exclude_ciphers" if level in _MANDATORY
            else "smtpd_tls_exclude_ciphers")
    value, override = config.in_force(service, name)
    wanted = ",".join([*value.replace(",", " ").split(), "aNULL"])
    if override and service is not None:
        return (f"-o {name}={value} on master.cf service {service.key}",
                f"postconf -P {shlex.quote(f'{service.key}/{name}={wanted}')}, then postfix "
                "reload")
    if service is not None and item.endpoint.port != constants.SMTP_PORT:
        # Only this service: port 25 may keep anonymous suites for opportunistic TLS.
        return (f"{name} = {value or '(empty)'} in {context.main_cf}",
                f"postconf -P {shlex.quote(f'{service.key}/{name}={wanted}')}, then postfix "
                "reload")
    return (f"{name} = {value or '(empty)'} in {context.main_cf}",
            f"postconf -e {shlex.quote(f'{name}={wanted}')}, then postfix reload")


def anonymous_checks(context: Context) -> list[Finding]:
    """Anonymous suites accepted on a port that offers authentication: a client that
    takes one authenticates nobody, so a man in the middle reads its password."""
    groups: dict[tuple[str, str], list[Probe]] = {}
    for item in context.probes:
        if item.anonymous and item.authenticates:
            where, fix = _cipher_setting(context, item)
            groups.setdefault((where, fix + _port25(item)), []).append(item)
    checks = [Finding(
        "anonymous-tls", "WARNING",
        f"{ports_phrase(members)} offer{'s' if len(members) == 1 else ''} authentication and "
        f"complete{'s' if len(members) == 1 else ''} a handshake with an anonymous "
        "(certificate-less) suite, which proves no server identity to a client that accepts "
        f"it: decided by {where}; fix: {fix}")
        for (where, fix), members in groups.items()]
    if not checks and any(p.authenticates and p.anonymous is not None for p in context.probes):
        checks.append(Finding("anonymous-tls", "OK",
                              "no port that offers authentication accepts anonymous suites"))
    return checks


def port25_policy_checks(context: Context) -> list[Finding]:
    """What port 25 accepts, for information: opportunistic TLS between mail servers
    (RFC 7435) is better than plaintext even with TLS 1.0 or an anonymous suite."""
    config = context.config
    if config is None:
        return []
    checks = []
    for service in config.services_on_port(constants.SMTP_PORT):
        level = service.overrides.get("smtpd_tls_security_level") or (
            postfix_config.effective_smtpd_level(config.main))
        name = ("smtpd_tls_mandatory_protocols" if level in _MANDATORY
                else "smtpd_tls_protocols")
        protocols = config.in_force(service, name)[0] or "(empty)"
        probes = [p for p in context.probes if context.services.get(p.endpoint) is service]
        seen = []
        for item in probes[:1]:
            if "legacy" in item.versions:
                seen.append(f"TLS 1.0/1.1 {'accepted' if item.versions['legacy'] else 'refused'}")
            if item.anonymous is not None:
                seen.append(f"anonymous suites {'accepted' if item.anonymous else 'refused'}")
        observed = f" ({', '.join(seen)})" if seen else ""
        checks.append(Finding(
            "port25-policy", "OK",
            f"port 25 (master.cf service {service.key}) is opportunistic TLS between mail "
            f"servers: smtpd_tls_security_level={level}, {name} = {protocols}{observed}; "
            "kept so that a sending server with only old TLS still encrypts rather than "
            "falling back to plaintext (RFC 7435); passwords belong on 587/465"))
    return checks


def dovecot_protocol_checks(context: Context) -> list[Finding]:
    """Dovecot's ssl_min_protocol allowing TLS 1.0/1.1, from its configuration (the
    ports' handshakes say whether OpenSSL lets it through: legacy-tls)."""
    value = context.imap_settings.get(MIN_PROTOCOL, "")
    if context.imap is None or not legacy_min_protocol(value):
        return []
    if any(p.endpoint.service == Dovecot.name and p.versions.get("legacy")
           for p in context.probes):
        return []  # legacy-tls already names ssl_min_protocol with the ports
    return [Finding(MIN_PROTOCOL, "WARNING",
                    legacy_protocol_warning(context.imap.config_file, value))]
