"""Mail in and out: submission on 587 (TLS and AUTH), the SASL backend behind it,
plaintext on port 25, and outbound TLS with Postfix's client certificate."""

from __future__ import annotations

import os
import re
import shlex
import socket
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certbot_postfix_tls._internal import constants
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import policy as postfix_policy
from certbot_postfix_tls._internal.daemons.postfix import sasl
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.doctor.certificates import leaf_of
from certbot_postfix_tls._internal.doctor.context import (
    Context,
    Probe,
    is_root,
    ports_phrase,
)
from certbot_postfix_tls._internal.doctor.logs import log_phrase, log_says
from certbot_postfix_tls._internal.doctor.settings import install_fix
from certbot_postfix_tls._internal.findings import Finding

# Postfix's master stops a service for this long after its smtpd died at start.
THROTTLE_NOTE = "its master retries the service within service_throttle_time, 60 s"
_SASL_LOG = re.compile(r"SASL|sasl")
_MANDATORY = ("encrypt", "verify", "secure")


def _has_auth(keywords: Iterable[str]) -> bool:
    return any(k.upper().split()[:1] == ["AUTH"] for k in keywords)


def _set_service(service: postfix_config.MasterService, values: Sequence[tuple[str, str]]) -> str:
    return "postconf -P " + " ".join(shlex.quote(f"{service.key}/{name}={value}")
                                     for name, value in values)


def _probes_of(context: Context, service: postfix_config.MasterService) -> list[Probe]:
    return [p for p in context.probes if context.services.get(p.endpoint) is service]


# --- submission ----------------------------------------------------------------------------


def submission_checks(context: Context) -> list[Finding]:
    """A service on 587, TLS required there, and AUTH offered only after STARTTLS."""
    config = context.config
    if config is None:
        return []
    checks = []
    submission = config.services_on_port(constants.SUBMISSION_PORT)
    if not submission:
        template = "submission inet n - y - - smtpd"
        checks.append(Finding(
            "submission-service", "WARNING",
            f"master.cf ({context.mta.master_cf if context.mta else 'master.cf'}) has no service "
            "on port 587: mail clients cannot submit mail with STARTTLS; fix: "
            f"{install_fix(context)} (adds it with mandatory TLS), or postconf -M "
            f"{shlex.quote('submission/inet=' + template)} && postconf -P "
            "submission/inet/smtpd_tls_security_level=encrypt "
            "submission/inet/smtpd_tls_auth_only=yes, then postfix reload"))
    for service in submission:
        level = service.overrides.get("smtpd_tls_security_level") or (
            postfix_config.effective_smtpd_level(config.main))
        accepted = [p for p in _probes_of(context, service)
                    if p.plain is not None and p.plain.mail_code == 250]
        seen = (f"{ports_phrase(accepted)} accepted MAIL FROM before STARTTLS "
                f"({accepted[0].plain.mail_code} {accepted[0].plain.mail_reply})"
                if accepted and accepted[0].plain else "")
        mandatory = level.lower() in _MANDATORY
        if mandatory and accepted:
            checks.append(Finding(
                "submission-tls", "CRITICAL",
                f"{seen}, although master.cf service {service.key} has "
                f"smtpd_tls_security_level={level}: something else answers on 587 (a proxy in "
                "front of Postfix?); fix: make 587 reach this service, or require TLS there"))
        elif not mandatory:
            seen = f"; {seen}" if seen else ""
            checks.append(Finding(
                "submission-tls", "CRITICAL",
                f"master.cf service {service.key} (port 587) runs with "
                f"smtpd_tls_security_level={level}: mail clients may log in and submit "
                f"without TLS{seen}; fix: "
                f"{_set_service(service, [('smtpd_tls_security_level', 'encrypt')])}, "
                "then postfix reload"))
        else:
            checks.append(Finding("submission-tls", "OK",
                                  f"master.cf service {service.key} (port 587) requires TLS "
                                  "before MAIL and AUTH"))
    for item in context.probes:
        owner = context.services.get(item.endpoint)
        if owner is None or item.endpoint.tls != "starttls":
            continue
        before = item.plain.keywords if item.plain else (
            item.shake.capabilities_before_tls if item.shake else [])
        if _has_auth(before):
            source = ("-o smtpd_tls_auth_only" if "smtpd_tls_auth_only" in owner.overrides
                      else f"smtpd_tls_auth_only = {config.value('smtpd_tls_auth_only') or 'no'} "
                           f"in {context.main_cf}")
            # Hardening advice, not a failure: every client works. On 587 it goes with
            # TLS that is not mandatory, which submission-tls reports as CRITICAL.
            checks.append(Finding(
                "submission-auth", "WARNING",
                f"{item.where} offers AUTH before STARTTLS ({source}): a client configured "
                f"without TLS would send its password in clear; fix: "
                f"{_set_service(owner, [('smtpd_tls_auth_only', 'yes')])}, then postfix reload"))
        elif item.endpoint.port == constants.SUBMISSION_PORT and item.shake is not None:
            if _has_auth(item.shake.capabilities_after_tls):
                checks.append(Finding("submission-auth", "OK",
                                      f"{item.where} offers AUTH only after STARTTLS"))
            elif postfix_config.is_yes(config.in_force(owner, "smtpd_sasl_auth_enable")[0]):
                checks.append(Finding(
                    "submission-auth", "WARNING",
                    f"{item.where} offers no AUTH after STARTTLS although master.cf service "
                    f"{owner.key} enables SASL: its backend offers no mechanism, so nobody can "
                    "log in to send mail; fix: what sasl-backend says"))
            else:
                checks.append(Finding(
                    "submission-auth", "WARNING",
                    f"{item.where} offers no AUTH after STARTTLS, so nobody can log in to send "
                    f"mail: SASL is off for master.cf service {owner.key}; fix: "
                    f"{install_fix(context)} (wires Dovecot's auth socket when Dovecot runs), "
                    "or enable smtpd_sasl_auth_enable with a working smtpd_sasl_type"))
    return checks


def wrappermode_checks(context: Context) -> list[Finding]:
    """Submission services on 587 that expect TLS from the first byte."""
    if context.config is None:
        return []
    return [Finding("submission-wrappermode", "CRITICAL", problem)
            for problem in postfix_policy.submission_wrappermode(context.config)]


# --- SASL ----------------------------------------------------------------------------------


def _cyrus_problem(context: Context, config: postfix_config.PostfixConfig, app: str, chroot: bool
                   ) -> tuple[str, str]:
    """(what is missing for Cyrus SASL, the fix); ("", "") when it has a password source."""
    problem, mux = sasl.cyrus_problem(config, app, chroot)
    if not problem:
        return "", ""
    dovecot_fix = ("postconf -e smtpd_sasl_type=dovecot smtpd_sasl_path=private/auth, then "
                   f"{install_fix(context)} (it declares Dovecot's auth socket for Postfix)")
    if mux is None:
        return (problem, f"{dovecot_fix}; or write /etc/postfix/sasl/{app}.conf "
                         "(pwcheck_method: saslauthd) and run saslauthd")
    return problem, f"start saslauthd (its socket must be {mux}), or {dovecot_fix}"


def sasl_checks(context: Context) -> list[Finding]:
    """SASL enabled on an smtpd service without a backend that works."""
    config = context.config
    if config is None:
        return []
    groups: dict[tuple[str, str], list[postfix_config.MasterService]] = {}
    for service in config.services:
        if service.type != "inet" or not service.runs_smtpd or service.port is None:
            continue
        if not postfix_config.is_yes(config.in_force(service, "smtpd_sasl_auth_enable")[0]):
            continue
        kind = config.in_force(service, "smtpd_sasl_type")[0] or "cyrus"
        path = config.in_force(service, "smtpd_sasl_path")[0] or "smtpd"
        groups.setdefault((kind, path), []).append(service)
    checks = []
    for (kind, path), members in groups.items():
        ports = ", ".join(f"{s.key} (port {s.port})" for s in members)
        enabled = (f"master.cf service{'s' if len(members) > 1 else ''} {ports} "
                   f"enable{'s' if len(members) == 1 else ''} SASL "
                   f"(smtpd_sasl_type={kind}, smtpd_sasl_path={path})")
        problem, fix, skipped = "", "", False
        if kind not in context.sasl_types:
            problem = (f"this Postfix has no {kind} SASL support (postconf -a lists "
                       f"{', '.join(sorted(context.sasl_types)) or 'none'})")
            fix = "postconf -e smtpd_sasl_type=dovecot smtpd_sasl_path=private/auth"
        elif kind == postfix_config.DOVECOT_SASL_TYPE and path.startswith("inet:"):
            host, _, port = path[5:].rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
            except (OSError, ValueError) as exc:
                problem = f"nothing answers on {path[5:]} ({exc})"
                fix = "start Dovecot's auth service there (its inet_listener), then postfix reload"
        elif kind == postfix_config.DOVECOT_SASL_TYPE:
            queue = config.value("queue_directory") or "/var/spool/postfix"
            socket_path = path if path.startswith("/") else os.path.join(queue, path)
            reason, checked = sasl.socket_problem(socket_path)
            skipped = not checked
            if reason:
                problem = (f"Dovecot's auth socket {reason}: "
                           "smtpd dies with 'no SASL authentication mechanisms'")
                example = ("/etc/dovecot/conf.d/10-master.conf" if context.imap is None else
                           os.path.join(os.path.dirname(context.imap.config_file), "conf.d",
                                        "10-master.conf"))
                fix = (f"declare it in Dovecot (service auth {{ unix_listener {socket_path} {{ "
                       "mode = 0660, user = postfix, group = postfix } }, e.g. in "
                       f"{example}), then doveadm reload; or {install_fix(context)} (it "
                       "declares it when Dovecot runs)")
        else:
            problem, fix = _cyrus_problem(context, config, path, sasl.chrooted(config, members))
        if skipped:
            checks.append(Finding("sasl-backend", "OK",
                                  f"skipped: {enabled}; this user cannot see Postfix's private "
                                  "queue directory: run doctor as root to check the socket"))
            continue
        if not problem:
            checks.append(Finding("sasl-backend", "OK", f"{enabled}, and its backend answers"))
            continue
        cause = log_says(context, Postfix.name, _SASL_LOG)
        # Mail clients log in on 25, 465 and 587: there nobody can. Another port is an
        # internal listener (Mailu's 10025 behind its front, mailcow's 588) whose
        # clients may not use AUTH at all: advice.
        public = any(s.port in constants.PUBLIC_SMTP_PORTS for s in members)
        internal = "" if public else (
            " (not a port mail clients use unless you point one at it)")
        checks.append(Finding(
            "sasl-backend", "CRITICAL" if public else "WARNING",
            f"{enabled}, but {problem}{internal}{log_phrase(Postfix.name, cause)}; fix: {fix}, "
            f"then postfix reload ({THROTTLE_NOTE})"))
    return checks


# --- port 25 -------------------------------------------------------------------------------


def port25_checks(context: Context) -> list[Finding]:
    """Port 25 must accept plaintext and offer STARTTLS (RFC 3207 on a public MX)."""
    config = context.config
    if config is None:
        return []
    checks = []
    for service in config.services_on_port(25):
        level = service.overrides.get("smtpd_tls_security_level") or (
            postfix_config.effective_smtpd_level(config.main))
        override = "smtpd_tls_security_level" in service.overrides
        wrapper = postfix_config.is_yes(
            config.in_force(service, "smtpd_tls_wrappermode")[0] or "no")
        refused = [p for p in _probes_of(context, service)
                   if p.plain is not None and p.plain.mail_code != 250]
        if wrapper:
            checks.append(Finding(
                "port25-plaintext", "CRITICAL",
                f"master.cf service {service.key} (port 25) has smtpd_tls_wrappermode=yes: "
                "other mail servers connect in plaintext and use STARTTLS on 25, so none can "
                f"deliver; fix: {_set_service(service, [('smtpd_tls_wrappermode', 'no')])}, "
                "then postfix reload"))
        elif level.lower() in _MANDATORY or refused:
            source = (f"-o smtpd_tls_security_level={level} on master.cf service {service.key}"
                      if override else
                      f"smtpd_tls_security_level = {level} in {context.main_cf}")
            fix = (_set_service(service, [("smtpd_tls_security_level", "may")]) if override
                   else "postconf -e smtpd_tls_security_level=may (587 keeps its own -o "
                        "smtpd_tls_security_level=encrypt)")
            seen = (f"; MAIL FROM before STARTTLS was answered "
                    f"{refused[0].plain.mail_code} {refused[0].plain.mail_reply}"
                    if refused and refused[0].plain else "")
            checks.append(Finding(
                "port25-plaintext", "WARNING",
                f"port 25 (master.cf service {service.key}) requires TLS ({source}){seen}: "
                "servers that cannot do TLS cannot deliver to you (RFC 3207 forbids this on a "
                f"public MX); fix: {fix}, then postfix reload"))
        else:
            checks.append(Finding("port25-plaintext", "OK",
                                  f"port 25 (master.cf service {service.key}) accepts plaintext "
                                  "and offers STARTTLS"))
    return checks


# --- outbound ------------------------------------------------------------------------------


def outbound_checks(context: Context) -> list[Finding]:
    """Outbound TLS level, and a client certificate servers would reject."""
    config = context.config
    if config is None:
        return []
    checks = []
    level = postfix_config.effective_smtp_level({**config.main, **config.expanded})
    explicit = config.explicit.get("smtp_tls_security_level")
    source = (f"smtp_tls_security_level = {explicit} in {context.main_cf}" if explicit
              else f"smtp_tls_security_level unset in {context.main_cf} (so: {level})")
    if level == "none":
        checks.append(Finding(
            "outbound-tls", "WARNING",
            f"{source}: Postfix sends outgoing mail in clear even to servers that offer "
            "STARTTLS; fix: postconf -e smtp_tls_security_level=may, then postfix reload"))
    elif level == "encrypt":
        checks.append(Finding(
            "outbound-tls", "WARNING",
            f"{source}: mail to domains whose servers do not offer TLS is deferred, then "
            "bounced; fix: postconf -e smtp_tls_security_level=may (require TLS per domain "
            "with smtp_tls_policy_maps), then postfix reload"))
    else:
        checks.append(Finding("outbound-tls", "OK",
                              f"{source}: outgoing mail uses TLS when the other side offers it"))
    client = [("smtp_tls_chain_files", p)
              for p in postfix_config.split_list(config.value("smtp_tls_chain_files"))]
    if not client and config.value("smtp_tls_cert_file").strip():
        client = [("smtp_tls_cert_file", config.value("smtp_tls_cert_file").strip())]
    for name, path in client:
        leaf = leaf_of(path)
        if leaf is None:
            if not os.access(path, os.R_OK) and not is_root():
                checks.append(Finding("client-certificate", "OK",
                                      f"skipped: {name} = {path} is readable by root only"))
            continue
        try:
            usages = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.CLIENT_AUTH in usages or \
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
            continue
        clear = " ".join(f"{n}=" for n in ("smtp_tls_chain_files", "smtp_tls_cert_file",
                                           "smtp_tls_key_file") if config.value(n).strip())
        checks.append(Finding(
            "client-certificate", "WARNING",
            f"{name} = {path} in {context.main_cf}: Postfix presents this certificate when it "
            "sends mail, but its extended key usage lacks clientAuth (Let's Encrypt's default "
            "profile dropped it in 2026), so servers that check client certificates reject "
            f"it; fix: postconf -e {clear} (Postfix needs no client certificate to send mail), "
            "then postfix reload"))
    return checks
