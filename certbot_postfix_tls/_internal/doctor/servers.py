"""Which Postfix and Dovecot doctor examines, whether they run, and what each of their
TLS ports does when probed.

Most servers that need help were set up by hand: ``smtpd_tls_cert_file`` pointing at
``live/NAME/cert.pem``, a submission entry copied into master.cf, a renewal hook that
restarts everything. The checks look at what the daemons are told (postconf, doveconf,
the files they name, certbot's renewal hooks and configs) and at what they do (one
probe per TLS port: a handshake, the same pinned to TLS 1.2 and 1.3, TLS 1.0/1.1 and
anonymous suites as a scanner tries them, and for SMTP what
the port accepts before STARTTLS).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import constants, dialogues
from certbot_postfix_tls._internal.daemons.dovecot import doveconf
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.doctor.context import POSTFIX_PARAMS, Context, Probe, is_root
from certbot_postfix_tls._internal.doctor.settings import dovecot_cert_names
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.state import State
from certbot_postfix_tls._internal.tls_client import Endpoint, VerifyError

# Handshakes with a port are sequential (a renewed-but-not-reloaded process answers
# the first one); ports are probed side by side.
PARALLEL_PORTS = 8
PROBE_TIMEOUT = 10.0
MODERN = constants.MODERN_TLS


def find(config_dir: str, state: State, postfix_dir: Optional[str] = None,
         dovecot_config: Optional[str] = None) -> Context:
    """The Postfix instance (``--postfix-dir``, the deployed one, else postconf's own)
    and Dovecot (``--dovecot-config``, the deployed one, else the one doveconf reads)
    with their TLS endpoints."""
    deployed = bool(state.lineages)
    context = Context(
        config_dir, state,
        state.verify_address if deployed else constants.CLI_DEFAULTS["verify_address"],
        list(state.verify_ports) if deployed else [],
    )
    try:
        mta = Postfix(postfix_dir or state.postfix_dir)
        context.config = mta.read(expand=POSTFIX_PARAMS)
        context.sasl_types = set(mta.postconf("-a").split())
        context.postfix_running = mta.running()
        context.mta = mta
    except errors.Error as exc:
        context.findings.append(Finding(Postfix.name, "UNKNOWN", str(exc)))
    path = dovecot_config or state.dovecot_config
    explicit = path is not None
    if path is None:
        path = doveconf.find_config()
    if path is not None and (explicit or os.path.isfile(path)):
        try:
            imap = Dovecot(path)
            context.imap_settings = imap.settings(
                "ssl", "ssl_min_protocol", "ssl_cipher_list", "log_path", *dovecot_cert_names(imap))
            context.dovecot_running = imap.running()
            context.imap = imap
        except errors.Error as exc:
            context.findings.append(Finding(Dovecot.name, "UNKNOWN", str(exc)))
    _find_endpoints(context)
    return context


def _find_endpoints(context: Context) -> None:
    ports = context.verify_ports
    if context.config is not None and context.postfix_running is not False:
        for listener in postfix_listeners.listeners(context.config, context.verify_address):
            port = listener.endpoint.port
            if listener.skip is None and (listener.internal is None if not ports
                                          else port in ports):
                context.services[listener.endpoint] = listener.service
                context.endpoints.append(listener.endpoint)
    imap = context.imap
    if imap is not None and context.dovecot_running is not False:
        try:
            found = imap.effective_endpoints(context.verify_address)
        except errors.Error as exc:
            context.findings.append(Finding(Dovecot.name, "UNKNOWN", str(exc)))
            return
        names = "/".join(dovecot_cert_names(imap))
        log_path = context.imap_settings.get("log_path", "")
        for endpoint in found:
            if not ports or endpoint.port in ports:
                context.endpoints.append(replace(
                    endpoint, setting=f"{names} in {imap.config_file}",
                    log_file=log_path if log_path.startswith("/") else ""))


def unchecked(context: Context) -> list[tuple[str, str]]:
    """(label, why) of every Postfix listener not probed (TLS off, PROXY, internal)."""
    if context.config is None:
        return []
    return postfix_listeners.unchecked_endpoints(context.config, context.verify_ports,
                                       context.verify_address)


def _works(endpoint: Endpoint, version: str) -> bool:
    try:
        dialogues.handshake(endpoint, None, PROBE_TIMEOUT, tls_version=version)
    except VerifyError:
        return False
    return True


def probe(endpoint: Endpoint) -> Probe:
    """Probe one port, connections one after the other (see PARALLEL_PORTS)."""
    result = Probe(endpoint)
    try:
        result.shake = dialogues.handshake(endpoint, None, PROBE_TIMEOUT)
    except VerifyError as exc:
        result.error = exc
    # Nothing more to learn from a port that refuses, times out or closes: more
    # connections would only wait again (a throttled Postfix service does not answer).
    if result.shake is None and result.error is not None and result.error.kind != "tls":
        if result.error.kind not in ("starttls-refused", "no-starttls"):
            return result
    elif result.shake is not None:
        if result.shake.protocol in MODERN:
            result.versions[result.shake.protocol] = True
        for version in MODERN:
            if version not in result.versions:
                result.versions[version] = _works(endpoint, version)
        # What a scanner reports: TLS 1.0/1.1 and anonymous suites accepted.
        result.versions["legacy"] = _works(endpoint, "legacy")
        if result.versions.get("TLSv1.2") or result.versions["legacy"]:
            result.anonymous = _works(endpoint, "anonymous")
    else:
        for version in MODERN:
            result.versions[version] = _works(endpoint, version)
        result.versions["legacy"] = _works(endpoint, "legacy")
    if endpoint.protocol == "smtp" and endpoint.tls == "starttls":
        try:
            result.plain = dialogues.smtp_before_tls(endpoint, PROBE_TIMEOUT)
        except VerifyError:
            pass
    return result


def probe_all(context: Context) -> list[Probe]:
    """Every endpoint, ports side by side."""
    if not context.endpoints:
        return []
    with ThreadPoolExecutor(max_workers=PARALLEL_PORTS) as pool:
        return list(pool.map(probe, context.endpoints))


def _dovecot_start_problem(context: Context) -> str:
    """Dovecot's own full configuration check (doveconf -x), as root: "" when it passes."""
    if context.imap is None or not is_root():
        return ""
    try:
        context.imap.check()
    except errors.Error as exc:
        return str(exc)
    return ""


def running_checks(context: Context) -> list[Finding]:
    """What finding the servers showed, and whether each runs (or could start)."""
    checks = list(context.findings)
    mta = context.mta
    if mta is not None:
        if context.postfix_running is False:
            checks.append(Finding("postfix-running", "CRITICAL",
                                  f"Postfix ({mta.config_dir}) is not running: start it "
                                  "(postfix start)"))
        elif context.postfix_running is None:
            checks.append(Finding("postfix-running", "OK",
                                  "skipped: this user cannot read Postfix's pid file; the "
                                  "handshakes show whether it answers"))
    imap = context.imap
    if imap is not None and not is_root():
        checks.append(Finding("dovecot-config", "OK",
                              "skipped: Dovecot's full configuration check (doveconf -x) reads "
                              "its key files, which only root can; run doctor as root"))
    if imap is not None and context.dovecot_running is False:
        problem = _dovecot_start_problem(context)
        if problem:
            checks.append(Finding("dovecot-running", "CRITICAL",
                                  f"Dovecot ({imap.config_file}) is not running and cannot "
                                  f"start: {problem}"))
        else:
            status = "CRITICAL" if context.state.dovecot_config else "WARNING"
            checks.append(Finding("dovecot-running", status,
                                  f"Dovecot ({imap.config_file}) is not running: start it "
                                  "(dovecot), or remove its configuration if it is not used"))
    elif imap is not None and context.dovecot_running:
        problem = _dovecot_start_problem(context)
        if problem:
            checks.append(Finding("dovecot-config", "CRITICAL",
                                  f"{problem} (the running Dovecot keeps its old configuration "
                                  "until then)"))
    return checks


def not_checked(context: Context) -> list[Finding]:
    """One OK line per Postfix listener that was not probed, and why."""
    return [Finding("not-checked", "OK", f"not checked: {label}: {why}")
            for label, why in unchecked(context)]
