"""What ``doctor`` finds on the Postfix and Dovecot that are configured and running,
whoever configured them (this plugin, a how-to, a control panel).

Most servers that need help were set up by hand: ``smtpd_tls_cert_file`` pointing at
``live/NAME/cert.pem``, a submission entry copied into master.cf, a renewal hook that
restarts everything. Nothing here reads the plugin's state except to name its own
files; the checks look at what the daemons are told (postconf, doveconf, the files
they name, certbot's renewal hooks and configs) and at what they do (one probe per
TLS port: a handshake, the same pinned to TLS 1.2 and 1.3, and for SMTP what the port
accepts before STARTTLS). Every problem is one ``Finding``: what is wrong, where (file,
setting, port), and the exact fix.

Checks that need root (key files, Dovecot's full configuration check, SASL sockets in
Postfix's private queue directory) say they were skipped, and why, for other users.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shlex
import socket
import ssl
import stat
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Optional

from certbot import errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certbot_postfix_tls._internal import (
    certs,
    constants,
    hooks,
    process,
    services,
    verify,
)
from certbot_postfix_tls._internal.daemons import by_name as daemon_by_name
from certbot_postfix_tls._internal.daemons.dovecot import doveconf
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix import policy as postfix_policy
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.state import State

# Every Postfix parameter the checks read, asked from ``postconf -x`` in one call
# (expanded: smtpd_tls_key_file defaults to $smtpd_tls_cert_file).
TLS_PARAMS = (
    "smtpd_tls_chain_files",
    *postfix_config.LEGACY_CERT_PARAMS,
    "smtpd_tls_protocols",
    "smtpd_tls_mandatory_protocols",
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
# (certificate, key) parameter pairs of smtpd before smtpd_tls_chain_files (3.4).
_CERT_KEY_PARAMS = (
    ("smtpd_tls_cert_file", "smtpd_tls_key_file"),
    ("smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
    ("smtpd_tls_dcert_file", "smtpd_tls_dkey_file"),
)
# Where Cyrus SASL looks for smtpd.conf when cyrus_sasl_config_path is empty (Debian's
# Postfix adds /etc/postfix/sasl), and where saslauthd listens by default.
_CYRUS_DIRS = ("/etc/postfix/sasl", "/etc/sasl2", "/usr/lib/sasl2", "/usr/lib/*/sasl2")
_SASLAUTHD_MUX = "/var/run/saslauthd/mux"
# Where syslog puts mail logs when a daemon has no log file of its own.
_SYSLOG_MAIL = "/var/log/mail.log"
# How long to wait for a cause to reach the log (postlogd and syslog write it
# asynchronously, after the connection that caused it).
_LOG_WAIT = 2.0
# Handshakes with a port are sequential (a renewed-but-not-reloaded process answers
# the first one); ports are probed side by side.
_PARALLEL_PORTS = 8
_PROBE_TIMEOUT = 10.0
_PROTOCOL_ORDER = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_MODERN = ("TLSv1.2", "TLSv1.3")
# Postfix's master stops a service for this long after its smtpd died at start.
_THROTTLE_NOTE = "its master retries the service within service_throttle_time, 60 s"




# --- which servers ---------------------------------------------------------------------


@dataclass
class Servers:
    """The Postfix and Dovecot configured on this machine, as doctor examines them."""

    config_dir: str  # certbot's
    state: State
    verify_address: str
    verify_ports: list[int]
    mta: Optional[Postfix] = None
    config: Optional[postfix_config.PostfixConfig] = None
    params: dict[str, str] = field(default_factory=dict)  # TLS_PARAMS, expanded
    sasl_types: set[str] = field(default_factory=set)  # postconf -a
    imap: Optional[Dovecot] = None
    imap_settings: dict[str, str] = field(default_factory=dict)
    postfix_running: Optional[bool] = None
    dovecot_running: Optional[bool] = None
    findings: list[Finding] = field(default_factory=list)  # what finding them showed
    # Postfix's probed endpoints and the master.cf service each belongs to.
    services: dict[verify.Endpoint, postfix_config.MasterService] = field(default_factory=dict)
    endpoints: list[verify.Endpoint] = field(default_factory=list)
    _logs: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def deployed(self) -> bool:
        return bool(self.state.lineages)

    @property
    def main_cf(self) -> str:
        return self.mta.main_cf if self.mta else "main.cf"

    def main(self, name: str) -> str:
        """A main.cf value, expanded when postconf -x gave it."""
        if name in self.params:
            return self.params[name]
        return self.config.value(name) if self.config else ""


def _dovecot_cert_names(imap: Dovecot) -> tuple[str, str]:
    return (("ssl_server_cert_file", "ssl_server_key_file") if imap.uses_24_syntax
            else ("ssl_cert", "ssl_key"))


def find(config_dir: str, state: State, postfix_dir: Optional[str] = None,
         dovecot_config: Optional[str] = None) -> Servers:
    """The Postfix instance (``--postfix-dir``, the deployed one, else postconf's own)
    and Dovecot (``--dovecot-config``, the deployed one, else the one doveconf reads)
    with their TLS endpoints."""
    deployed = bool(state.lineages)
    servers = Servers(
        config_dir, state,
        state.verify_address if deployed else constants.CLI_DEFAULTS["verify_address"],
        list(state.verify_ports) if deployed else [],
    )
    try:
        mta = Postfix(postfix_dir or state.postfix_dir)
        servers.config = mta.read()
        servers.params = postfix_config.parse_postconf(mta.postconf("-x", *TLS_PARAMS))
        servers.sasl_types = set(mta.postconf("-a").split())
        servers.postfix_running = mta.running()
        servers.mta = mta
    except errors.Error as exc:
        servers.findings.append(Finding("postfix", "UNKNOWN", str(exc)))
    path = dovecot_config or state.dovecot_config
    explicit = path is not None
    if path is None:
        path = doveconf.find_config()
    if path is not None and (explicit or os.path.isfile(path)):
        try:
            imap = Dovecot(path)
            servers.imap_settings = imap.settings(
                "ssl", "ssl_min_protocol", "log_path", *_dovecot_cert_names(imap))
            servers.dovecot_running = imap.running()
            servers.imap = imap
        except errors.Error as exc:
            servers.findings.append(Finding("dovecot", "UNKNOWN", str(exc)))
    _find_endpoints(servers)
    return servers


def _find_endpoints(servers: Servers) -> None:
    ports = servers.verify_ports
    if servers.config is not None and servers.postfix_running is not False:
        for listener in postfix_listeners.listeners(servers.config, servers.verify_address):
            port = listener.endpoint.port
            if listener.skip is None and (listener.internal is None if not ports
                                          else port in ports):
                servers.services[listener.endpoint] = listener.service
                servers.endpoints.append(listener.endpoint)
    imap = servers.imap
    if imap is not None and servers.dovecot_running is not False:
        try:
            found = imap.effective_endpoints(servers.verify_address)
        except errors.Error as exc:
            servers.findings.append(Finding("dovecot", "UNKNOWN", str(exc)))
            return
        names = "/".join(_dovecot_cert_names(imap))
        log_path = servers.imap_settings.get("log_path", "")
        for endpoint in found:
            if not ports or endpoint.port in ports:
                servers.endpoints.append(replace(
                    endpoint, setting=f"{names} in {imap.config_file}",
                    log_file=log_path if log_path.startswith("/") else ""))


def unchecked(servers: Servers) -> list[tuple[str, str]]:
    """(label, why) of every Postfix listener not probed (TLS off, PROXY, internal)."""
    if servers.config is None:
        return []
    return postfix_listeners.unchecked_endpoints(servers.config, servers.verify_ports,
                                       servers.verify_address)


# --- logs ------------------------------------------------------------------------------


def _journal() -> str:
    """Mail-facility lines of the last 15 minutes from systemd's journal."""
    if not os.path.isdir("/run/systemd/system") or process.find_tool("journalctl") is None:
        return ""
    proc = process.run(
        ["journalctl", "--no-pager", "--quiet", "--output=short-iso", "--since=-15min",
         "SYSLOG_FACILITY=2"],
        what="journalctl", check=False, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""


def _log(servers: Servers, service: str, fresh: bool = False) -> tuple[str, str]:
    """(recent log text, where it came from) of ``postfix`` or ``dovecot``: its own log
    file (maillog_file, log_path), else syslog's /var/log/mail.log, else the journal."""
    if fresh or service not in servers._logs:
        own = (servers.main("maillog_file") if service == "postfix"
               else servers.imap_settings.get("log_path", ""))
        sources = [own] if own.startswith("/") and not own.startswith("/dev/") else []
        sources.append(_SYSLOG_MAIL)
        text, where = "", ""
        for source in sources:
            if os.path.isfile(source):
                text, where = verify.read_log_tail(source), source
                break
        else:
            text, where = _journal(), "the journal"
        servers._logs[service] = (text, where)
    return servers._logs[service]


def log_says(servers: Servers, service: str, pattern: Optional[re.Pattern[str]] = None
             ) -> str:
    """The service's own recent reason, waiting a moment for it to reach the log: the
    newest line matching ``pattern``, else verify.log_cause's TLS file/key cause.
    "" when none shows (or the log cannot be read)."""
    deadline = time.monotonic() + _LOG_WAIT
    fresh = False
    while True:
        text, _ = _log(servers, service, fresh)
        if pattern is None:
            found = verify.log_cause(text, daemon_by_name(service).advice.log_programs)
        else:
            lines = [line for line in text.splitlines()[-400:] if pattern.search(line)]
            found = ""
            if lines:
                last = lines[-1]
                for marker in ("fatal: ", "warning: ", "error: ", "Fatal: ", "Error: "):
                    if marker in last:
                        found = marker + last.split(marker, 1)[1].strip()
                        break
                found = verify._printable(found or last, 240)
        if found or time.monotonic() >= deadline:
            # Dovecot appends the session's details: not part of the reason.
            return re.sub(r":? user=<[^>]*>, rip=.*$", "", found)
        fresh = True
        time.sleep(0.25)


def _log_phrase(servers: Servers, service: str, cause: str) -> str:
    name = "Postfix" if service == "postfix" else "Dovecot"
    return f"; {name}'s log says: {cause}" if cause else ""


# --- probes ----------------------------------------------------------------------------


@dataclass
class Probe:
    """What one TLS port did: a handshake (no SNI), the same pinned to TLS 1.2 and 1.3
    (and TLS 1.0-1.1 when both fail), and for SMTP with STARTTLS, what it answers
    before TLS."""

    endpoint: verify.Endpoint
    shake: Optional[verify.Handshake] = None
    error: Optional[verify.VerifyError] = None
    versions: dict[str, bool] = field(default_factory=dict)
    plain: Optional[verify.PlaintextSmtp] = None

    @property
    def where(self) -> str:
        endpoint = self.endpoint
        return f"port {endpoint.port} ({endpoint.service} {endpoint.label or endpoint.protocol})"


def _works(endpoint: verify.Endpoint, version: str) -> bool:
    try:
        verify.handshake(endpoint, None, _PROBE_TIMEOUT, tls_version=version)
    except verify.VerifyError:
        return False
    return True


def probe(endpoint: verify.Endpoint) -> Probe:
    """Probe one port, connections one after the other (see _PARALLEL_PORTS)."""
    result = Probe(endpoint)
    try:
        result.shake = verify.handshake(endpoint, None, _PROBE_TIMEOUT)
    except verify.VerifyError as exc:
        result.error = exc
    # Nothing more to learn from a port that refuses, times out or closes: more
    # connections would only wait again (a throttled Postfix service does not answer).
    if result.shake is None and result.error is not None and result.error.kind != "tls":
        if result.error.kind not in ("starttls-refused", "no-starttls"):
            return result
    elif result.shake is not None:
        if result.shake.protocol in _MODERN:
            result.versions[result.shake.protocol] = True
        for version in _MODERN:
            if version not in result.versions:
                result.versions[version] = _works(endpoint, version)
    else:
        for version in _MODERN:
            result.versions[version] = _works(endpoint, version)
        result.versions["legacy"] = _works(endpoint, "legacy")
    if endpoint.protocol == "smtp" and endpoint.tls == "starttls":
        try:
            result.plain = verify.smtp_before_tls(endpoint, _PROBE_TIMEOUT)
        except verify.VerifyError:
            pass
    return result


def probe_all(servers: Servers) -> list[Probe]:
    """Every endpoint, ports side by side."""
    if not servers.endpoints:
        return []
    with ThreadPoolExecutor(max_workers=_PARALLEL_PORTS) as pool:
        return list(pool.map(probe, servers.endpoints))


# --- certificate files -----------------------------------------------------------------


@dataclass(frozen=True)
class CertSetting:
    """A setting that names a certificate (and its key) file, where it is set, and how
    to change it."""

    service: str  # "postfix" or "dovecot"
    name: str  # smtpd_tls_cert_file, smtpd_tls_chain_files, ssl_cert, ...
    path: str
    key_name: str  # "" when the file holds the key too (smtpd_tls_chain_files)
    key_path: str
    source: str  # main.cf, or "FILE line N" (Dovecot)
    service_key: str = ""  # master.cf NAME/TYPE when set with -o
    dovecot_23: bool = False  # 2.3 syntax: value is <path
    key_source: str = ""  # where the key is set, when elsewhere (Dovecot)

    def describe(self, which: str = "cert") -> str:
        """The certificate's setting, the key's, or both ("pair"), as configured."""
        if which == "pair" and self.key_name:
            return f"{self.describe('cert')} and {self.describe('key')}"
        key = which == "key" and bool(self.key_name)
        name, path = (self.key_name, self.key_path) if key else (self.name, self.path)
        if self.service_key:
            return f"-o {name}={path} on master.cf service {self.service_key}"
        prefix = "<" if self.dovecot_23 else ""
        source = (self.key_source or self.source) if key else self.source
        return f"{name} = {prefix}{path} in {source}"

    def assign(self, values: Sequence[tuple[str, str]]) -> str:
        """The exact command (Postfix) or line (Dovecot) that sets ``values``."""
        if self.service == "dovecot":
            prefix = "<" if self.dovecot_23 else ""
            lines = " and ".join(f"`{name} = {prefix}{value}`" for name, value in values)
            where = self.source.split(" line ")[0] if len(values) > 1 else self.source
            return f"set {lines} in {where}"
        if self.service_key:
            return "postconf -P " + " ".join(
                shlex.quote(f"{self.service_key}/{name}={value}") for name, value in values)
        return "postconf -e " + " ".join(shlex.quote(f"{name}={value}") for name, value in values)

    @property
    def reload(self) -> str:
        return "postfix reload" if self.service == "postfix" else "doveadm reload"


def _split(value: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", value.strip()) if item]


def _expand(servers: Servers, value: str) -> str:
    """A master.cf -o value with $name / ${name} taken from main.cf."""
    def lookup(match: re.Match[str]) -> str:
        return servers.main(match.group(1)) or match.group(0)

    return re.sub(r"\$\{?(\w+)\}?", lookup, value)


def _param(servers: Servers, service: Optional[postfix_config.MasterService], name: str
           ) -> tuple[str, bool]:
    """(value in force for a master.cf service, whether a -o override sets it)."""
    if service is not None and name in service.overrides:
        return _expand(servers, service.overrides[name]), True
    return servers.main(name), False


def postfix_cert_settings(servers: Servers, service: Optional[postfix_config.MasterService]
                          ) -> list[CertSetting]:
    """The server certificate settings in force for a master.cf service (main.cf's
    for ``None``): smtpd_tls_chain_files when set (3.4+), else the cert/key pairs."""
    config = servers.config
    if config is None:
        return []

    def setting(name: str, path: str, key_name: str, key_path: str, override: bool
                ) -> CertSetting:
        key = service.key if override and service is not None else ""
        return CertSetting("postfix", name, path, key_name, key_path, servers.main_cf, key)

    chain, override = _param(servers, service, "smtpd_tls_chain_files")
    if chain.strip() and config.version >= (3, 4):
        return [setting("smtpd_tls_chain_files", path, "", path, override)
                for path in _split(chain)]
    found = []
    for cert_name, key_name in _CERT_KEY_PARAMS:
        cert, cert_override = _param(servers, service, cert_name)
        if not cert.strip():
            continue
        key, key_override = _param(servers, service, key_name)
        if cert_override and not key_override and not config.explicit.get(key_name):
            key = cert  # the key default, $smtpd_tls_cert_file, is the overridden file
        found.append(setting(cert_name, cert.strip(), key_name, (key or cert).strip(),
                             cert_override or key_override))
    return found


def dovecot_cert_settings(servers: Servers) -> list[CertSetting]:
    """Dovecot's top-level certificate and key (local_name blocks are SNI extras)."""
    imap = servers.imap
    if imap is None:
        return []
    cert_name, key_name = _dovecot_cert_names(imap)
    cert = servers.imap_settings.get(cert_name, "").lstrip("<").strip()
    key = servers.imap_settings.get(key_name, "").lstrip("<").strip()
    if not cert:
        return []
    source = key_source = imap.config_file
    try:
        competing = dovecot_plan.competing_settings(imap.read(), imap.version, "")
    except errors.Error:
        competing = []
    for name, short in ((cert_name, "cert_file"), (key_name, "key_file")):
        placed = [s for s in competing if s.name in (name, short)]
        if placed and name == cert_name:
            source = f"{placed[-1].path} line {placed[-1].lineno}"
        elif placed:
            key_source = f"{placed[-1].path} line {placed[-1].lineno}"
    return [CertSetting("dovecot", cert_name, cert, key_name, key or cert, source,
                        dovecot_23=not imap.uses_24_syntax, key_source=key_source)]


def cert_settings(servers: Servers, endpoint: verify.Endpoint) -> list[CertSetting]:
    if endpoint.service == "postfix":
        return postfix_cert_settings(servers, servers.services.get(endpoint))
    return dovecot_cert_settings(servers)


_PEM_KEY = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----\r?\n.+?\r?\n-----END \1PRIVATE KEY-----", re.DOTALL)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _certificates(path: str) -> list[x509.Certificate]:
    """The certificates in a PEM file; [] when it cannot be read or holds none."""
    try:
        return certs.load_pem_chain(_read(path))
    except (OSError, ValueError):
        return []


def _public(key_or_cert: Any) -> bytes:
    public = key_or_cert.public_key()
    return bytes(public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


def _file_problem(setting: CertSetting) -> tuple[str, str]:
    """(which setting: cert, key or pair; what is wrong) with a certificate and its key,
    as the daemon would find it; ("", "") when nothing is."""
    def unreadable(path: str, exc: OSError) -> str:
        if isinstance(exc, FileNotFoundError):
            return f"{path} does not exist"
        return f"{path} cannot be read ({exc.strerror or exc})"

    try:
        data = _read(setting.path)
    except OSError as exc:
        return "cert", unreadable(setting.path, exc)
    try:
        chain = certs.load_pem_chain(data)
    except ValueError:
        return "cert", f"{setting.path} holds no PEM certificate"
    key_data = data
    if setting.key_path != setting.path:
        try:
            key_data = _read(setting.key_path)
        except OSError as exc:
            return "key", unreadable(setting.key_path, exc)
    blocks = [m.group(0) for m in _PEM_KEY.finditer(key_data)]
    if not blocks:
        return "key", f"{setting.key_path} holds no private key"
    try:
        key = serialization.load_pem_private_key(blocks[0], password=None)
    except (ValueError, TypeError):
        return "key", f"{setting.key_path} holds no unencrypted private key the daemon can load"
    if _public(key) != _public(chain[0]):
        if setting.key_path == setting.path:
            return "cert", f"the private key in {setting.path} does not match its certificate"
        return "pair", "the private key does not match the certificate"
    return "", ""


def lineage_of(servers: Servers, path: str) -> Optional[tuple[str, str]]:
    """(name, live directory) of the certbot lineage a configured file belongs to:
    ``.../live/NAME/*``, ``.../archive/NAME/*``, or this plugin's own key+chain file."""
    parts = os.path.abspath(path).split(os.sep)
    if len(parts) >= 4 and parts[-3] in ("live", "archive"):
        return parts[-2], os.path.join(os.sep.join(parts[:-3]) or os.sep, "live", parts[-2])
    if len(parts) >= 5 and parts[-3] == constants.LINEAGES_DIR \
            and parts[-4] == constants.PLUGIN_DIR:
        deployed = servers.state.lineages.get(parts[-2])
        if deployed is not None:
            return deployed.name, os.path.dirname(deployed.fullchain_path)
    return None


def cert_names(servers: Servers) -> list[str]:
    """The certbot lineages the configuration points at, else those certbot has."""
    names: list[str] = []
    settings = postfix_cert_settings(servers, None) + dovecot_cert_settings(servers)
    for service in {id(s): s for s in servers.services.values()}.values():
        settings += postfix_cert_settings(servers, service)
    for setting in settings:
        found = lineage_of(servers, setting.path)
        if found and found[0] not in names:
            names.append(found[0])
    if not names:
        try:
            names = sorted(os.listdir(os.path.join(servers.config_dir, "live")))
            names = [n for n in names if not n.startswith(".") and n != "README"]
        except OSError:
            pass
    return names


def install_fix(servers: Servers) -> str:
    names = cert_names(servers)
    name = names[0] if len(names) == 1 else "NAME"
    return f"certbot install --installer postfix-tls --cert-name {name}"


def _is_root() -> bool:
    return os.geteuid() == 0


def _ports(probes: Sequence[Probe]) -> str:
    """``port 25 (postfix smtp)`` or ``ports 143 (dovecot imap), 993 (dovecot imaps)``."""
    wheres = list(dict.fromkeys(p.where for p in probes))
    if len(wheres) == 1:
        return wheres[0]
    return "ports " + ", ".join(where[len("port "):] for where in wheres)


# --- 1. chain --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _trusted_subjects() -> frozenset[bytes]:
    """Subjects of the system's trust anchors (a leaf issued by one needs no chain)."""
    paths = ssl.get_default_verify_paths()
    for bundle in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if bundle and os.path.isfile(bundle):
            return frozenset(c.subject.public_bytes() for c in _certificates(bundle))
    return frozenset()


def _load_der(der: bytes) -> Optional[x509.Certificate]:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def chain_complete(shake: verify.Handshake) -> bool:
    """Whether the served chain lets a client reach a trust anchor: intermediates sent,
    or a self-issued leaf, or a leaf issued directly by a root the system trusts."""
    if any(der != shake.leaf_der for der in shake.chain_der[1:]):
        return True
    leaf = _load_der(shake.leaf_der)
    if leaf is None:
        return True
    return leaf.issuer == leaf.subject or leaf.issuer.public_bytes() in _trusted_subjects()


def _issuer(der: bytes) -> str:
    leaf = _load_der(der)
    if leaf is None:
        return "its issuer"
    names = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else leaf.issuer.rfc4514_string()


def serving_setting(servers: Servers, probe_: Probe) -> Optional[CertSetting]:
    """The setting whose file holds the certificate the port served (by fingerprint
    when readable; else the one pointing at a cert.pem; else the first)."""
    settings = cert_settings(servers, probe_.endpoint)
    if probe_.shake is not None:
        for setting in settings:
            found = _certificates(setting.path)
            if found and found[0].public_bytes(serialization.Encoding.DER) \
                    == probe_.shake.leaf_der:
                return setting
    for setting in settings:
        if os.path.basename(setting.path) == "cert.pem":
            return setting
    return settings[0] if settings else None


def _fullchain_fix(servers: Servers, setting: CertSetting) -> str:
    lineage = lineage_of(servers, setting.path)
    install = (f" (or let {install_fix(servers)} manage it)"
               if lineage and setting.service == "postfix" else "")
    if setting.name == "smtpd_tls_chain_files":
        return (f"put the intermediate certificates after the certificate in {setting.path} "
                f"(key, certificate, intermediates), then {setting.reload}{install}")
    sibling = os.path.join(os.path.dirname(setting.path), "fullchain.pem")
    if os.path.basename(setting.path) == "cert.pem" and (lineage or os.path.exists(sibling)):
        return f"{setting.assign([(setting.name, sibling)])}, then {setting.reload}{install}"
    return (f"append the intermediate certificates to {setting.path} (or point "
            f"{setting.name} at the CA's full-chain file), then {setting.reload}{install}")


def chain_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    groups: dict[Optional[CertSetting], list[Probe]] = {}
    for item in probes:
        if item.shake is not None and not chain_complete(item.shake):
            groups.setdefault(serving_setting(servers, item), []).append(item)
    checks = []
    for setting, members in groups.items():
        issuer = _issuer(members[0].shake.leaf_der) if members[0].shake else "its issuer"
        ports = _ports(members)
        if setting is None:
            checks.append(Finding(
                "chain", "CRITICAL",
                f"{ports} serve{'s' if len(members) == 1 else ''} the certificate without its "
                f"intermediate ({issuer}): clients that check certificates cannot verify it; "
                "fix: configure the full chain (fullchain.pem)"))
            continue
        checks.append(Finding(
            "chain", "CRITICAL",
            f"{setting.describe()} holds the certificate without its intermediate ({issuer}), "
            f"so clients that check certificates cannot verify what {ports} "
            f"serve{'s' if len(members) == 1 else ''}; fix: {_fullchain_fix(servers, setting)}"))
    if not checks and any(p.shake for p in probes):
        checks.append(Finding("chain", "OK", "every TLS port serves its intermediate certificates"))
    return checks


# --- 2. certificate and key files ------------------------------------------------------

_FAILED_KINDS = ("starttls-refused", "tls", "closed")


def _pair_fix(servers: Servers, setting: CertSetting) -> str:
    lineage = lineage_of(servers, setting.path) or lineage_of(servers, setting.key_path)
    if lineage is None:
        return (f"point {setting.name}{' and ' + setting.key_name if setting.key_name else ''} "
                f"at a certificate and its own key, then {setting.reload}")
    name, live = lineage
    if setting.name == "smtpd_tls_chain_files":
        return (f"{install_fix(servers).replace('NAME', name)} (it rebuilds the key+chain file "
                f"from live/{name} after checking that they match)")
    pair = [(setting.name, os.path.join(live, "fullchain.pem"))]
    if setting.key_name:
        pair.append((setting.key_name, os.path.join(live, "privkey.pem")))
    fix = f"{setting.assign(pair)}, then {setting.reload}"
    if setting.service == "postfix":
        fix += f" (or {install_fix(servers).replace('NAME', name)})"
    return fix


def _dovecot_start_problem(servers: Servers) -> str:
    """Dovecot's own full configuration check (doveconf -x), as root: "" when it passes."""
    if servers.imap is None or not _is_root():
        return ""
    try:
        servers.imap.check()
    except errors.Error as exc:
        return str(exc)
    return ""


def file_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    if not _is_root():
        return [Finding("certificate-files", "OK",
                      "skipped: the certificate and key files Postfix and Dovecot load are "
                      "readable by root only; run doctor as root to check them")]
    settings: list[CertSetting] = postfix_cert_settings(servers, None)
    for service in servers.services.values():
        settings += postfix_cert_settings(servers, service)
    settings += dovecot_cert_settings(servers)
    checks = []
    for setting in dict.fromkeys(settings):
        which, problem = _file_problem(setting)
        if not problem:
            continue
        failed = [p for p in probes if p.endpoint.service == setting.service
                  and p.error is not None and p.error.kind in _FAILED_KINDS
                  and setting in cert_settings(servers, p.endpoint)]
        seen = ""
        if failed:
            detail = str(failed[0].error).rstrip(".")
            where = verify._where(failed[0].endpoint)
            seen = f"; {_ports(failed)}: {detail.replace(where + ' ', '')}"
        cause = log_says(servers, setting.service) if failed else ""
        checks.append(Finding(
            "certificate-files", "CRITICAL",
            f"{setting.describe(which)}: {problem}{seen}"
            f"{_log_phrase(servers, setting.service, cause)}"
            f"; fix: {_pair_fix(servers, setting)}"))
    if not checks:
        checks.append(Finding("certificate-files", "OK",
                            "every certificate and key file Postfix and Dovecot name exists and "
                            "each key matches its certificate"))
    return checks


# --- running ---------------------------------------------------------------------------


def running_checks(servers: Servers) -> list[Finding]:
    checks = list(servers.findings)
    mta = servers.mta
    if mta is not None:
        if servers.postfix_running is False:
            checks.append(Finding("postfix-running", "CRITICAL",
                                f"Postfix ({mta.config_dir}) is not running: start it "
                                "(postfix start)"))
        elif servers.postfix_running is None:
            checks.append(Finding("postfix-running", "OK",
                                "skipped: this user cannot read Postfix's pid file; the "
                                "handshakes show whether it answers"))
    imap = servers.imap
    if imap is not None and not _is_root():
        checks.append(Finding("dovecot-config", "OK",
                            "skipped: Dovecot's full configuration check (doveconf -x) reads "
                            "its key files, which only root can; run doctor as root"))
    if imap is not None and servers.dovecot_running is False:
        problem = _dovecot_start_problem(servers)
        if problem:
            checks.append(Finding("dovecot-running", "CRITICAL",
                                f"Dovecot ({imap.config_file}) is not running and cannot start: "
                                f"{problem}"))
        else:
            status = "CRITICAL" if servers.state.dovecot_config else "WARNING"
            checks.append(Finding("dovecot-running", status,
                                f"Dovecot ({imap.config_file}) is not running: start it "
                                "(dovecot), or remove its configuration if it is not used"))
    elif imap is not None and servers.dovecot_running:
        problem = _dovecot_start_problem(servers)
        if problem:
            checks.append(Finding("dovecot-config", "CRITICAL",
                                f"{problem} (the running Dovecot keeps its old configuration "
                                "until then)"))
    return checks


# --- 4. stale certificates -------------------------------------------------------------


def _leaf_of(path: str) -> Optional[x509.Certificate]:
    found = _certificates(path)
    return found[0] if found else None


@dataclass(frozen=True)
class _Newest:
    """The newest certificate of a lineage: fingerprint, expiry, and its file."""

    sha256: str
    not_after: datetime
    path: str


def _newest(servers: Servers, setting: CertSetting) -> Optional[_Newest]:
    """The newest certificate of the lineage a setting points into; None when there is
    none, or this user cannot read it (and the plugin recorded nothing)."""
    lineage = lineage_of(servers, setting.path)
    if lineage is None:
        return None
    name, live = lineage
    deployed = servers.state.lineages.get(name)
    if deployed is not None:  # readable, or the fingerprints recorded at the last deploy
        try:
            expected = services.expected_cert(deployed)
        except verify.VerifyError:
            return None
        return _Newest(expected.leaf_sha256, expected.not_after, deployed.fullchain_path)
    path = os.path.join(live, "cert.pem")
    leaf = _leaf_of(path)
    return _Newest(certs.sha256_der(leaf), certs.not_after(leaf), path) if leaf else None


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def stale_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    checks = []
    skipped = False
    for item in probes:
        if item.shake is None:
            continue
        setting = serving_setting(servers, item)
        if setting is None or lineage_of(servers, setting.path) is None:
            continue
        newest = _newest(servers, setting)
        served = _load_der(item.shake.leaf_der)
        if newest is None or served is None:
            skipped = skipped or newest is None
            continue
        served_end = certs.not_after(served)
        if newest.sha256 == certs.sha256_der(served) or served_end >= newest.not_after:
            continue
        configured = _leaf_of(setting.path)
        if configured is not None and certs.sha256_der(configured) == certs.sha256_der(served):
            # The file itself is old (archive/NAME/certN.pem): point at live/.
            if setting.name == "smtpd_tls_chain_files":
                fix = install_fix(servers)
            else:
                live = os.path.join(os.path.dirname(newest.path), "fullchain.pem")
                fix = f"{setting.assign([(setting.name, live)])}, then {setting.reload}"
        elif configured is not None:
            fix = f"{setting.reload} (the configured file already holds the newest)"
        else:
            fix = setting.reload
        checks.append(Finding(
            "stale-certificate", "CRITICAL",
            f"{item.where} serves a certificate that expires {_day(served_end)}, older than "
            f"the newest of its lineage ({newest.path}, expires {_day(newest.not_after)}): "
            f"renewed but never loaded; fix: {fix}"))
    if skipped and not checks:
        checks.append(Finding("stale-certificate", "OK",
                            "skipped: the lineages' newest certificates are readable by root "
                            "only; run doctor as root to compare them with what is served"))
    elif not checks and any(p.shake for p in probes):
        checks.append(Finding("stale-certificate", "OK",
                            "no port serves an older certificate than its lineage's newest"))
    return checks


# --- 8. expiry -------------------------------------------------------------------------


def expiry_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    groups: dict[bytes, list[Probe]] = {}
    for item in probes:
        if item.shake is not None:
            groups.setdefault(item.shake.leaf_der, []).append(item)
    now = datetime.now(timezone.utc)
    checks = []
    for der, members in groups.items():
        leaf = _load_der(der)
        if leaf is None:
            continue
        end = certs.not_after(leaf)
        days = int((end - now).total_seconds() // 86400)
        if days >= verify.WARN_DAYS:
            continue
        setting = serving_setting(servers, members[0])
        lineage = lineage_of(servers, setting.path) if setting else None
        if lineage is not None:
            fix = (f"certbot renew --cert-name {lineage[0]}, then "
                   f"{setting.reload if setting else 'reload'} (or let the renewal hooks of "
                   f"{install_fix(servers).replace('NAME', lineage[0])} reload)")
        elif setting is not None:
            fix = f"put a current certificate in {setting.path}, then {setting.reload}"
        else:
            fix = "install a current certificate"
        what = verify.describe_der(der)
        if days < 0:
            checks.append(Finding("expiry", "CRITICAL",
                                f"{_ports(members)} serve{'s' if len(members) == 1 else ''} "
                                f"{what}, which expired {_day(end)} "
                                f"({(now - end).days} day(s) ago); "
                                f"fix: {fix}"))
        else:
            checks.append(Finding("expiry", "WARNING",
                                f"{_ports(members)} serve{'s' if len(members) == 1 else ''} "
                                f"{what}, which expires {_day(end)} (in {days} day(s)); "
                                f"fix: {fix}"))
    if not checks and groups:
        checks.append(Finding("expiry", "OK",
                            f"every served certificate is valid for {verify.WARN_DAYS} days "
                            "or more"))
    return checks


# --- 6. protocols ----------------------------------------------------------------------


def postfix_protocols(value: str) -> set[str]:
    """The protocols a Postfix ``*_tls_protocols`` value leaves enabled: a list of names
    to include, ``!name`` to exclude, ``>=name``/``<=name`` bounds (3.6+)."""
    included: set[str] = set()
    excluded: set[str] = set()
    low, high = 0, len(_PROTOCOL_ORDER) - 1
    for token in re.split(r"[\s,:]+", value.strip()):
        bare = token.lstrip("!<>=")
        if bare not in _PROTOCOL_ORDER:
            continue
        if token.startswith("!"):
            excluded.add(bare)
        elif token.startswith(">="):
            low = _PROTOCOL_ORDER.index(bare)
        elif token.startswith("<="):
            high = _PROTOCOL_ORDER.index(bare)
        else:
            included.add(bare)
    enabled = included or set(_PROTOCOL_ORDER)
    return {p for i, p in enumerate(_PROTOCOL_ORDER)
            if p in enabled and p not in excluded and low <= i <= high}


def _protocol_setting(servers: Servers, item: Probe) -> tuple[str, str, str]:
    """(the setting that decides the protocols, its value's verdict, the fix)."""
    endpoint = item.endpoint
    if endpoint.service == "dovecot":
        value = servers.imap_settings.get("ssl_min_protocol", "")
        file = servers.imap.config_file if servers.imap else "dovecot.conf"
        return (f"ssl_min_protocol = {value} (and ssl_cipher_list) in Dovecot's configuration",
                "", f"set `ssl_min_protocol = TLSv1.2` in {file}, then doveadm reload")
    service = servers.services.get(endpoint)
    level = (service.overrides.get("smtpd_tls_security_level") if service else None) \
        or postfix_config.effective_smtpd_level(servers.config.main if servers.config else {})
    name = ("smtpd_tls_mandatory_protocols" if level in ("encrypt", "secure", "verify")
            else "smtpd_tls_protocols")
    value, override = _param(servers, service, name)
    modern = ">=TLSv1.2" if servers.config and servers.config.version >= (3, 6) \
        else "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1"
    if override and service is not None:
        where = f"-o {name}={value} on master.cf service {service.key}"
        fix = f"postconf -P {shlex.quote(f'{service.key}/{name}={modern}')}, then postfix reload"
    else:
        where = f"{name} = {value} in {servers.main_cf}"
        fix = f"postconf -e {shlex.quote(f'{name}={modern}')}, then postfix reload"
    enabled = postfix_protocols(value)
    verdict = "" if enabled & set(_MODERN) else (
        f"it enables {', '.join(p for p in _PROTOCOL_ORDER if p in enabled) or 'nothing'}")
    return where, verdict, fix


def protocol_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    """Ports that fail TLS 1.2 and 1.3 but speak an older version, or whose settings
    exclude both: CRITICAL; TLS 1.3 only: WARNING. One line per deciding setting."""
    groups: dict[tuple[str, str, str], list[Probe]] = {}
    for item in probes:
        where, verdict, fix = _protocol_setting(servers, item)
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
    checks = [Finding("tls-protocols", status, f"{_ports(members)}: {what}; fix: {fix}")
              for (status, what, fix), members in groups.items()]
    if not checks and any(p.versions for p in probes):
        checks.append(Finding("tls-protocols", "OK",
                            "every TLS port completes a TLS 1.2 and a TLS 1.3 handshake"))
    return checks


# --- 3. submission and SASL ------------------------------------------------------------


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1")


def _has_auth(keywords: Iterable[str]) -> bool:
    return any(k.upper().split()[:1] == ["AUTH"] for k in keywords)


def _set_service(service: postfix_config.MasterService, values: Sequence[tuple[str, str]]) -> str:
    return "postconf -P " + " ".join(shlex.quote(f"{service.key}/{name}={value}")
                                     for name, value in values)


def _probes_of(probes: Sequence[Probe], servers: Servers, service: postfix_config.MasterService
               ) -> list[Probe]:
    return [p for p in probes if servers.services.get(p.endpoint) is service]


def submission_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    config = servers.config
    if config is None:
        return []
    checks = []
    submission = config.services_on_port(constants.SUBMISSION_PORT)
    if not submission:
        template = "submission inet n - y - - smtpd"
        checks.append(Finding(
            "submission-service", "WARNING",
            f"master.cf ({servers.mta.master_cf if servers.mta else 'master.cf'}) has no service "
            "on port 587: mail clients cannot submit mail with STARTTLS; fix: "
            f"{install_fix(servers)} (adds it with mandatory TLS), or postconf -M "
            f"{shlex.quote('submission/inet=' + template)} && postconf -P "
            "submission/inet/smtpd_tls_security_level=encrypt "
            "submission/inet/smtpd_tls_auth_only=yes, then postfix reload"))
    for service in submission:
        level = service.overrides.get("smtpd_tls_security_level") or (
            postfix_config.effective_smtpd_level(config.main))
        accepted = [p for p in _probes_of(probes, servers, service)
                    if p.plain is not None and p.plain.mail_code == 250]
        seen = (f"{_ports(accepted)} accepted MAIL FROM before STARTTLS "
                f"({accepted[0].plain.mail_code} {accepted[0].plain.mail_reply})"
                if accepted and accepted[0].plain else "")
        mandatory = level.lower() in ("encrypt", "verify", "secure")
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
                                f"master.cf service {service.key} (port 587) requires TLS before "
                                "MAIL and AUTH"))
    for item in probes:
        owner = servers.services.get(item.endpoint)
        if owner is None or item.endpoint.tls != "starttls":
            continue
        before = item.plain.keywords if item.plain else (
            item.shake.capabilities_before_tls if item.shake else [])
        if _has_auth(before):
            source = ("-o smtpd_tls_auth_only" if "smtpd_tls_auth_only" in owner.overrides
                      else f"smtpd_tls_auth_only = {servers.main('smtpd_tls_auth_only') or 'no'} "
                           f"in {servers.main_cf}")
            checks.append(Finding(
                "submission-auth", "CRITICAL",
                f"{item.where} offers AUTH before STARTTLS ({source}): passwords can cross the "
                f"network in clear; fix: {_set_service(owner, [('smtpd_tls_auth_only', 'yes')])}"
                ", then postfix reload"))
        elif item.endpoint.port == constants.SUBMISSION_PORT and item.shake is not None:
            if _has_auth(item.shake.capabilities_after_tls):
                checks.append(Finding("submission-auth", "OK",
                                    f"{item.where} offers AUTH only after STARTTLS"))
            elif _yes(_param(servers, owner, "smtpd_sasl_auth_enable")[0]):
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
                    f"{install_fix(servers)} (wires Dovecot's auth socket when Dovecot runs), "
                    "or enable smtpd_sasl_auth_enable with a working smtpd_sasl_type"))
    return checks


_SASL_LOG = re.compile(r"SASL|sasl")


def _socket_problem(path: str) -> tuple[str, bool]:
    """(what is wrong with a unix socket, whether it could be checked at all); the
    reason starts with the path, so that callers can write "... socket {reason}"."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{path} does not exist", True
    except PermissionError:
        return "", False
    if not stat.S_ISSOCK(info.st_mode):
        return f"{path} is not a socket", True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except PermissionError:
            return "", False
        except OSError as exc:
            return f"{path} has nothing listening on it ({exc.strerror or exc})", True
    return "", True


def _cyrus_problem(servers: Servers, app: str, chroot: bool) -> tuple[str, str]:
    """(what is missing for Cyrus SASL, the fix); ("", "") when it has a password source."""
    configured = servers.main("cyrus_sasl_config_path")
    dirs = [d for d in configured.split(":") if d] if configured else list(_CYRUS_DIRS)
    files = [path for pattern in dirs for path in glob.glob(os.path.join(pattern, f"{app}.conf"))]
    dovecot_fix = ("postconf -e smtpd_sasl_type=dovecot smtpd_sasl_path=private/auth, then "
                   f"{install_fix(servers)} (it declares Dovecot's auth socket for Postfix)")
    if not files:
        return (f"Cyrus SASL has no {app}.conf in {', '.join(dirs)}, so it has no password "
                "source: the server advertises AUTH that nobody can use (or smtpd dies with "
                "'no SASL authentication mechanisms')",
                f"{dovecot_fix}; or write /etc/postfix/sasl/{app}.conf "
                "(pwcheck_method: saslauthd) and run saslauthd")
    try:
        text = _read(files[0]).decode("utf-8", "replace")
    except OSError:
        return "", ""
    options = dict(re.findall(r"^\s*(\w+)\s*:\s*(\S.*?)\s*$", text, re.MULTILINE))
    if options.get("pwcheck_method", "").split()[:1] == ["saslauthd"]:
        mux = options.get("saslauthd_path") or _SASLAUTHD_MUX
        candidates = [mux]
        if chroot:
            queue = servers.main("queue_directory") or "/var/spool/postfix"
            candidates.insert(0, queue + mux)
        problems = [_socket_problem(path) for path in candidates]
        if all(checked and problem for problem, checked in problems):
            return (f"{files[0]} uses saslauthd, but {problems[0][0]}",
                    f"start saslauthd (its socket must be {candidates[0]}), or {dovecot_fix}")
    return "", ""


def sasl_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    """SASL enabled on an smtpd service without a backend that works."""
    config = servers.config
    if config is None:
        return []
    groups: dict[tuple[str, str], list[postfix_config.MasterService]] = {}
    for service in config.services:
        if service.type != "inet" or not service.runs_smtpd or service.port is None:
            continue
        if not _yes(_param(servers, service, "smtpd_sasl_auth_enable")[0]):
            continue
        kind = _param(servers, service, "smtpd_sasl_type")[0] or "cyrus"
        path = _param(servers, service, "smtpd_sasl_path")[0] or "smtpd"
        groups.setdefault((kind, path), []).append(service)
    checks = []
    for (kind, path), members in groups.items():
        ports = ", ".join(f"{s.key} (port {s.port})" for s in members)
        enabled = (f"master.cf service{'s' if len(members) > 1 else ''} {ports} "
                   f"enable{'s' if len(members) == 1 else ''} SASL "
                   f"(smtpd_sasl_type={kind}, smtpd_sasl_path={path})")
        problem, fix, skipped = "", "", False
        if kind not in servers.sasl_types:
            problem = (f"this Postfix has no {kind} SASL support (postconf -a lists "
                       f"{', '.join(sorted(servers.sasl_types)) or 'none'})")
            fix = "postconf -e smtpd_sasl_type=dovecot smtpd_sasl_path=private/auth"
        elif kind == "dovecot" and path.startswith("inet:"):
            host, _, port = path[5:].rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
            except (OSError, ValueError) as exc:
                problem = f"nothing answers on {path[5:]} ({exc})"
                fix = "start Dovecot's auth service there (its inet_listener), then postfix reload"
        elif kind == "dovecot":
            queue = servers.main("queue_directory") or "/var/spool/postfix"
            socket_path = path if path.startswith("/") else os.path.join(queue, path)
            reason, checked = _socket_problem(socket_path)
            skipped = not checked
            if reason:
                problem = (f"Dovecot's auth socket {reason}: "
                           "smtpd dies with 'no SASL authentication mechanisms'")
                example = ("/etc/dovecot/conf.d/10-master.conf" if servers.imap is None else
                           os.path.join(os.path.dirname(servers.imap.config_file), "conf.d",
                                        "10-master.conf"))
                fix = (f"declare it in Dovecot (service auth {{ unix_listener {socket_path} {{ "
                       "mode = 0660, user = postfix, group = postfix } }, e.g. in "
                       f"{example}), then doveadm reload; or {install_fix(servers)} (it declares "
                       "it when Dovecot runs)")
        else:
            # "-" is chroot before Postfix 3.0, not since.
            old = config.version < (3, 0)
            chroot = any(s.chroot == "y" or (s.chroot == "-" and old) for s in members)
            problem, fix = _cyrus_problem(servers, path, chroot)
        if skipped:
            checks.append(Finding("sasl-backend", "OK",
                                f"skipped: {enabled}; this user cannot see Postfix's private "
                                "queue directory: run doctor as root to check the socket"))
            continue
        if not problem:
            checks.append(Finding("sasl-backend", "OK", f"{enabled}, and its backend answers"))
            continue
        cause = log_says(servers, "postfix", _SASL_LOG)
        checks.append(Finding(
            "sasl-backend", "CRITICAL",
            f"{enabled}, but {problem}{_log_phrase(servers, 'postfix', cause)}; fix: {fix}, then "
            f"postfix reload ({_THROTTLE_NOTE})"))
    return checks


# --- 9. port 25 ------------------------------------------------------------------------


def port25_checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    config = servers.config
    if config is None:
        return []
    checks = []
    for service in config.services_on_port(25):
        level = service.overrides.get("smtpd_tls_security_level") or (
            postfix_config.effective_smtpd_level(config.main))
        override = "smtpd_tls_security_level" in service.overrides
        wrapper = _yes(_param(servers, service, "smtpd_tls_wrappermode")[0] or "no")
        refused = [p for p in _probes_of(probes, servers, service)
                   if p.plain is not None and p.plain.mail_code != 250]
        if wrapper:
            checks.append(Finding(
                "port25-plaintext", "CRITICAL",
                f"master.cf service {service.key} (port 25) has smtpd_tls_wrappermode=yes: "
                "other mail servers connect in plaintext and use STARTTLS on 25, so none can "
                f"deliver; fix: {_set_service(service, [('smtpd_tls_wrappermode', 'no')])}, "
                "then postfix reload"))
        elif level.lower() in ("encrypt", "verify", "secure") or refused:
            source = (f"-o smtpd_tls_security_level={level} on master.cf service {service.key}"
                      if override else f"smtpd_tls_security_level = {level} in {servers.main_cf}")
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


# --- 7. outbound -----------------------------------------------------------------------


def outbound_checks(servers: Servers) -> list[Finding]:
    config = servers.config
    if config is None:
        return []
    checks = []
    level = postfix_config.effective_smtp_level({**config.main, **servers.params})
    explicit = config.explicit.get("smtp_tls_security_level")
    source = (f"smtp_tls_security_level = {explicit} in {servers.main_cf}" if explicit
              else f"smtp_tls_security_level unset in {servers.main_cf} (so: {level})")
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
    client = [("smtp_tls_chain_files", p) for p in _split(servers.main("smtp_tls_chain_files"))]
    if not client and servers.main("smtp_tls_cert_file").strip():
        client = [("smtp_tls_cert_file", servers.main("smtp_tls_cert_file").strip())]
    for name, path in client:
        leaf = _leaf_of(path)
        if leaf is None:
            if not os.access(path, os.R_OK) and not _is_root():
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
                                           "smtp_tls_key_file") if servers.main(n).strip())
        checks.append(Finding(
            "client-certificate", "WARNING",
            f"{name} = {path} in {servers.main_cf}: Postfix presents this certificate when it "
            "sends mail, but its extended key usage lacks clientAuth (Let's Encrypt's default "
            "profile dropped it in 2026), so servers that check client certificates reject "
            f"it; fix: postconf -e {clear} (Postfix needs no client certificate to send mail), "
            "then postfix reload"))
    return checks


# --- 5. renewal hooks ------------------------------------------------------------------

_STOPPING = ("restart", "stop", "try-restart", "kill", "force-reload")
_WRAPPERS = ("sudo", "env", "command", "exec", "nice", "nohup", "timeout")


def _stopping(command: str) -> set[str]:
    """The daemons (postfix, dovecot) one shell command restarts or stops."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    while words and (os.path.basename(words[0]) in _WRAPPERS or
                     ("=" in words[0] and not words[0].startswith("/"))):
        words = words[1:]
    if not words:
        return set()
    tool = os.path.basename(words[0])
    args = [w for w in words[1:] if not w.startswith("-")]

    def named(units: Iterable[str]) -> set[str]:
        return {d for d in ("postfix", "dovecot") for unit in units
                if os.path.basename(unit).startswith(d)}

    if tool == "systemctl" and args and args[0] in _STOPPING:
        return named(args[1:])
    if tool in ("service", "invoke-rc.d", "rc-service") and len(args) >= 2 \
            and args[1] in _STOPPING:
        return named(args[:1])
    if tool == "rcctl" and len(args) >= 2 and args[0] in _STOPPING:
        return named(args[1:])
    if ("/init.d/" in words[0] or "/rc.d/" in words[0]) and args and args[0] in _STOPPING:
        return named([tool])
    if tool == "postfix" and ("stop" in args or "abort" in args):
        return {"postfix"}
    if tool == "doveadm" and "stop" in args:
        return {"dovecot"}
    return set()


def restart_commands(script: str) -> list[tuple[str, set[str]]]:
    """(command, daemons) of every command in a hook that restarts or stops a daemon."""
    found = []
    for line in script.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for part in re.split(r";|&&|\|\|?|\n", line):
            command = part.strip()
            daemons = _stopping(command) if command else set()
            if daemons:
                found.append((command, daemons))
    return found


_RELOADS = {"postfix": "postfix reload", "dovecot": "doveadm reload"}
_COST = ("every renewal then refuses connections while the daemon restarts (the README's "
         "benchmark: failed handshakes on 25, 587 and 993 at each renewal, and 587 down for "
         "60 s when Postfix starts before Dovecot's auth socket is back)")


def _reload_for(daemons: set[str]) -> str:
    return "; ".join(_RELOADS[d] for d in ("postfix", "dovecot") if d in daemons)


def hook_file_checks(servers: Servers) -> list[Finding]:
    """Scripts under renewal-hooks/ and hooks in renewal/*.conf that restart or stop
    Postfix or Dovecot (WARNING), and hook scripts certbot skips (CRITICAL)."""
    config_dir = servers.config_dir
    ours = {hooks.hook_path(config_dir, kind) for kind in ("deploy", "post")}
    replacement = (f"or delete it and run {install_fix(servers)}, whose hooks reload once "
                   "and verify")
    checks = []
    for kind in ("pre", "deploy", "post"):
        directory = os.path.join(config_dir, "renewal-hooks", kind)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if path in ours or name.endswith("~") or not os.path.isfile(path):
                continue
            if not os.stat(path).st_mode & 0o111:
                checks.append(Finding(
                    "renewal-hook-skipped", "CRITICAL",
                    f"{path} is not executable, so certbot skips it at every renewal; fix: "
                    f"chmod 755 {path} (or delete it if it is not needed)"))
            try:
                text = _read(path).decode("utf-8", "replace")
            except OSError:
                continue
            commands = restart_commands(text)
            if not commands:
                continue
            runs = " and ".join(f"`{command}`" for command, _ in commands)
            if servers.deployed:
                fix = f"rm {path} (the postfix-tls hooks already reload and verify)"
            else:
                fix = ", ".join(f"replace `{command}` by `{_reload_for(daemons)}`"
                                for command, daemons in commands)
                fix += f" in {path} ({replacement})"
            checks.append(Finding("restart-hook", "WARNING", f"{path} runs {runs}: {_COST}; "
                                                           f"fix: {fix}"))
    for conf in sorted(glob.glob(os.path.join(config_dir, "renewal", "*.conf"))):
        try:
            text = _read(conf).decode("utf-8", "replace")
        except OSError:
            continue
        for key, value in re.findall(r"^\s*(pre_hook|post_hook|renew_hook|deploy_hook)\s*=\s*"
                                     r"(.*?)\s*$", text, re.MULTILINE):
            new = value
            commands = restart_commands(value)
            for command, daemons in commands:
                new = new.replace(command, _reload_for(daemons))
            if commands:
                checks.append(Finding(
                    "restart-hook", "WARNING",
                    f"{conf} has `{key} = {value}`: {_COST}; fix: set `{key} = {new}` in {conf}"
                    + ("" if not servers.deployed else
                       " (or remove the line: the postfix-tls hooks already reload)")))
    if not checks:
        checks.append(Finding("restart-hook", "OK",
                            "no renewal hook restarts or stops Postfix or Dovecot, and certbot "
                            "can run every hook script"))
    return checks


# --- everything ------------------------------------------------------------------------


def checks(servers: Servers, probes: Sequence[Probe]) -> list[Finding]:
    """Every check of the configured servers, in the order an administrator fixes them."""
    found = running_checks(servers)
    found += file_checks(servers, probes)
    found += chain_checks(servers, probes)
    found += stale_checks(servers, probes)
    found += expiry_checks(servers, probes)
    found += protocol_checks(servers, probes)
    found += submission_checks(servers, probes)
    if servers.config is not None:
        found += [Finding("submission-wrappermode", "CRITICAL", problem)
                  for problem in postfix_policy.submission_wrappermode(servers.config)]
    found += sasl_checks(servers, probes)
    found += port25_checks(servers, probes)
    found += outbound_checks(servers)
    found += hook_file_checks(servers)
    found += [Finding("not-checked", "OK", f"not checked: {label}: {why}")
              for label, why in unchecked(servers)]
    return found


def endpoint_results(servers: Servers, probes: Sequence[Probe]) -> list[verify.EndpointResult]:
    """One verdict per probed port, for ``verify`` and ``doctor`` without a deployment:
    what it served (or why it failed), chain, expiry, and whether it is its lineage's
    newest certificate."""
    results = []
    now = datetime.now(timezone.utc)
    for item in probes:
        endpoint = item.endpoint
        base: dict[str, Any] = dict(
            service=endpoint.service, address=endpoint.address, port=endpoint.port,
            tls=endpoint.tls, sni=None, endpoint=endpoint)
        if item.shake is None:
            error = item.error or verify.VerifyError("no handshake")
            result = verify.EndpointResult(
                **base, status="CRITICAL", served_sha256=None, expected_sha256="",
                chain_complete=None, name_matches=None, days_left=None, message=str(error),
                kind=error.kind)
            lines = verify.summarize([result])
            result.message = lines[0] if lines else str(error)
            results.append(result)
            continue
        leaf = _load_der(item.shake.leaf_der)
        served = certs.sha256_hex(item.shake.leaf_der)
        setting = serving_setting(servers, item)
        newest = _newest(servers, setting) if setting else None
        expected = newest.sha256 if newest is not None else served
        end = certs.not_after(leaf) if leaf is not None else None
        days = int((end - now).total_seconds() // 86400) if end else None
        complete = chain_complete(item.shake)
        problems = []
        if not complete:
            problems.append("serves the certificate without its intermediate")
        if expected != served and newest is not None and end and end < newest.not_after:
            problems.append("serves an older certificate than its lineage's newest "
                            f"(renewed, not loaded: {reload_of(endpoint)})")
        if days is not None and days < 0:
            problems.append(f"serves a certificate that expired {-days} day(s) ago")
        where = verify._where(endpoint)
        if problems:
            status, message = "CRITICAL", f"{where} {'; '.join(problems)}."
        elif days is not None and days < verify.WARN_DAYS:
            status = "WARNING"
            message = f"{where} serves a certificate that expires in {days} day(s)."
        else:
            status = "OK"
            message = (f"{where} serves {verify.describe_der(item.shake.leaf_der)} with its chain "
                       f"over {item.shake.protocol or 'TLS'}, valid for {days} more days.")
        results.append(verify.EndpointResult(
            **base, status=status, served_sha256=served, expected_sha256=expected,
            chain_complete=complete, name_matches=None, days_left=days, message=message,
            kind="ok" if status == "OK" else "diagnosed", served_not_after=end,
            served_algorithm=verify.key_algorithm(leaf) if leaf is not None else ""))
    return results


def reload_of(endpoint: verify.Endpoint) -> str:
    return "postfix reload" if endpoint.service == "postfix" else "doveadm reload"
