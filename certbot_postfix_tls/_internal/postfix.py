"""Postfix: read its configuration with postconf, decide the TLS settings, apply them.

Deciding (``plan_tls``) is a pure function of what postconf reported, so it
is unit-tested on real configuration fixtures; applying goes through postconf
(``-e`` once for main.cf, ``-M``/``-P`` for master.cf) and never edits text.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import constants, process
from certbot_postfix_tls._internal.tls_client import Endpoint
from certbot_postfix_tls._internal.verify import (
    LOOPBACKS,
    WILDCARDS,
    choose_address,
    ip_version,
    is_loopback,
)

logger = logging.getLogger(__name__)

# Well-known service names, for machines whose /etc/services lacks them.
KNOWN_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465, "urd": 465}
SUBMISSION_PORT = 587
# Dovecot's auth socket for Postfix, relative to the queue directory (smtpd_sasl_path).
DOVECOT_SASL_PATH = "private/auth"
SMTPS_PORT = 465
# Ports mail clients and other servers use: never taken for internal listeners.
PUBLIC_PORTS = (25, SMTPS_PORT, SUBMISSION_PORT)
# Read once more with postconf -x: Postfix binds to the expanded values.
EXPANDED_PARAMS = ("inet_interfaces", "inet_protocols", "maillog_file")

# Parameters Postfix ignores (with a warning) once smtpd_tls_chain_files is set.
LEGACY_CERT_PARAMS = (
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_dcert_file",
    "smtpd_tls_dkey_file",
)

# Everything plan_tls reads from main.cf, asked from postconf in one call.
MAIN_PARAMS = (
    "mail_version",
    "config_directory",
    "queue_directory",
    "data_directory",
    "myhostname",
    "mydomain",
    "inet_interfaces",
    "inet_protocols",
    "maillog_file",
    "smtpd_upstream_proxy_protocol",
    "postscreen_upstream_proxy_protocol",
    "smtpd_tls_wrappermode",
    "smtpd_tls_security_level",
    "smtpd_enforce_tls",
    "smtpd_use_tls",
    "smtp_tls_security_level",
    "smtp_enforce_tls",
    "smtp_use_tls",
    "smtpd_tls_session_cache_database",
    "smtp_tls_session_cache_database",
    "smtpd_tls_loglevel",
    "smtpd_tls_chain_files",
    "smtpd_sasl_auth_enable",
    "smtpd_sasl_type",
    "smtpd_sasl_path",
    "virtual_mailbox_domains",
    "virtual_alias_domains",
    "relay_domains",
    "tls_server_sni_maps",
    "default_database_type",
    *LEGACY_CERT_PARAMS,
)

# Server-side levels, weakest first; client-side levels likewise.
SMTPD_LEVELS = {"none": 0, "may": 1, "encrypt": 2}
SMTP_LEVELS = {
    "none": 0,
    "may": 1,
    "encrypt": 2,
    "dane": 2,
    "dane-only": 3,
    "fingerprint": 3,
    "verify": 3,
    "secure": 4,
}

# master.cf overrides for the submission services: mandatory TLS, AUTH only after it.
SUBMISSION_OVERRIDES = (
    ("smtpd_tls_security_level", "encrypt"),
    ("smtpd_tls_auth_only", "yes"),
)
SUBMISSION_DEFAULTS = (("smtpd_relay_restrictions", "permit_sasl_authenticated,reject"),)


def is_yes(value: str) -> bool:
    """A Postfix boolean: yes, true or 1 (any case)."""
    return value.strip().lower() in ("yes", "true", "1")


parse_version = process.version_tuple


def resolve_port(port_name: str) -> Optional[int]:
    """The TCP port of a master.cf service name (``submission``, ``2525``)."""
    if port_name.isdigit():
        return int(port_name)
    try:
        return socket.getservbyname(port_name, "tcp")
    except OSError:
        return KNOWN_PORTS.get(port_name)


def split_master_args(text: str) -> list[str]:
    """Split a master.cf command line, keeping ``{ a = b c }`` groups whole."""
    args: list[str] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text[i] == "{":
            end = text.find("}", i)
            end = len(text) if end < 0 else end
            args.append(text[i : end + 1])
            i = end + 1
        else:
            j = i
            while j < len(text) and not text[j].isspace():
                j += 1
            args.append(text[i:j])
            i = j
    return args


def _parse_override(arg: str) -> Optional[tuple[str, str]]:
    if arg.startswith("{") and arg.endswith("}"):
        arg = arg[1:-1].strip()
    name, sep, value = arg.partition("=")
    if not sep:
        return None
    return name.strip(), value.strip()


@dataclass(frozen=True)
class MasterService:
    """One master.cf entry, as ``postconf -M`` prints it."""

    name: str
    type: str
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str
    args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, line: str) -> MasterService:
        fields = split_master_args(line)
        if len(fields) < 8:
            raise ValueError(f"not a master.cf entry: {line!r}")
        name, type_, private, unpriv, chroot, wakeup, maxproc, command = fields[:8]
        return cls(name, type_, private, unpriv, chroot, wakeup, maxproc, command,
                   tuple(fields[8:]))

    @property
    def key(self) -> str:
        """``name/type``, how postconf -M/-P address the entry."""
        return f"{self.name}/{self.type}"

    @property
    def host(self) -> Optional[str]:
        host, sep, _ = self.name.rpartition(":")
        return host.strip("[]") if sep else None

    @property
    def port(self) -> Optional[int]:
        if self.type != "inet":
            return None
        return resolve_port(self.name.rpartition(":")[2])

    @property
    def overrides(self) -> dict[str, str]:
        """The ``-o name=value`` settings of this entry (last one wins, as in Postfix)."""
        result: dict[str, str] = {}
        args = list(self.args)
        for i, arg in enumerate(args):
            value: Optional[str] = None
            if arg == "-o" and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith("-o") and len(arg) > 2:
                value = arg[2:]
            if value is not None:
                parsed = _parse_override(value)
                if parsed:
                    result[parsed[0]] = parsed[1]
        return result

    @property
    def runs_smtpd(self) -> bool:
        return self.command.split("/")[-1] in ("smtpd", "postscreen")

    def line(self) -> str:
        return " ".join([self.name, self.type, self.private, self.unpriv, self.chroot,
                         self.wakeup, self.maxproc, self.command, *self.args])


def parse_master(text: str) -> list[MasterService]:
    """Parse ``postconf -M`` output (one entry per line, continuation lines folded)."""
    entries: list[str] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace() and entries:
            entries[-1] += " " + raw.strip()
        else:
            entries.append(raw.strip())
    return [MasterService.parse(entry) for entry in entries]


def parse_postconf(text: str) -> dict[str, str]:
    """Parse ``name = value`` lines as postconf prints them."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


@dataclass
class PostfixConfig:
    """What the plan needs to know about one Postfix instance."""

    main: dict[str, str]  # effective values (defaults included)
    explicit: dict[str, str]  # only what main.cf sets (postconf -n)
    services: list[MasterService]
    map_types: set[str]
    # EXPANDED_PARAMS and those read(expand=...) names, $names expanded (postconf -x).
    expanded: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> tuple[int, ...]:
        return parse_version(self.main.get("mail_version", "0"))

    def services_on_port(self, port: int) -> list[MasterService]:
        return [s for s in self.services if s.runs_smtpd and s.port == port]

    def value(self, name: str) -> str:
        """A main.cf value, expanded when postconf -x gave it."""
        return self.expanded.get(name, self.main.get(name, ""))

    def in_force(self, service: Optional[MasterService], name: str) -> tuple[str, bool]:
        """(the value in force for a master.cf service, main.cf's for ``None``, with
        $name / ${name} taken from main.cf; whether a -o override sets it)."""
        if service is None or name not in service.overrides:
            return self.value(name), False

        def lookup(match: re.Match[str]) -> str:
            return self.value(match.group(1)) or match.group(0)

        return re.sub(r"\$\{?(\w+)\}?", lookup, service.overrides[name]), True


@dataclass(frozen=True)
class ServiceParam:
    """One ``postconf -P name/type/param=value`` to apply."""

    service: str  # name/type
    param: str
    value: str

    def arg(self) -> str:
        return f"{self.service}/{self.param}={self.value}"


@dataclass
class TLSPlan:
    """Every change to make, and what to tell the administrator about it."""

    main: dict[str, str] = field(default_factory=dict)
    new_services: list[MasterService] = field(default_factory=list)
    service_params: list[ServiceParam] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.main or self.new_services or self.service_params)


@dataclass(frozen=True)
class CertificateFiles:
    """Where Postfix should read the server certificate from."""

    chain_file: str  # key followed by the full chain (smtpd_tls_chain_files, 3.4+)
    fullchain: str  # for Postfix < 3.4
    key: str
    sni_map: Optional[str] = None  # "type:path" of the SNI table (3.4+)


@dataclass(frozen=True)
class Options:
    submission: bool = True
    smtps: bool = False
    sasl: str = "auto"  # auto, dovecot, none
    dovecot_sasl_path: Optional[str] = None  # set when Dovecot's auth socket is wired


def _level(levels: Mapping[str, int], value: str) -> int:
    return levels.get(value.strip().lower(), 0)


def _effective_level(main: Mapping[str, str], side: str) -> str:
    """The TLS level in force for ``side`` (smtpd or smtp), including the obsolete
    ``*_enforce_tls``/``*_use_tls`` that ``*_tls_security_level`` replaced."""
    if main.get(f"{side}_tls_security_level", "").strip():
        return main[f"{side}_tls_security_level"].strip().lower()
    if is_yes(main.get(f"{side}_enforce_tls", "")):
        return "encrypt"
    if is_yes(main.get(f"{side}_use_tls", "")):
        return "may"
    return "none"


def effective_smtpd_level(main: Mapping[str, str]) -> str:
    """The server (inbound) TLS level in force."""
    return _effective_level(main, "smtpd")


def effective_smtp_level(main: Mapping[str, str]) -> str:
    """The client (outbound) TLS level in force."""
    return _effective_level(main, "smtp")


def _cache_type(map_types: set[str]) -> str:
    for kind in ("btree", "lmdb"):
        if kind in map_types:
            return kind
    raise errors.MisconfigurationError(
        "Postfix supports neither btree nor lmdb maps (postconf -m), so no TLS session "
        "cache can be set: install the postfix-lmdb package."
    )


def _changed(config: PostfixConfig, wanted: Mapping[str, str]) -> dict[str, str]:
    """The settings of ``wanted`` that main.cf does not have yet ("" clears one)."""
    changed = {}
    for name, value in wanted.items():
        current = config.explicit.get(name, config.main.get(name, "") if value else "")
        if current.strip() != value:
            changed[name] = value
    return changed


def cert_settings(config: PostfixConfig, files: CertificateFiles) -> dict[str, str]:
    """The main.cf certificate settings alone (what renewal and undeploy may change):
    the default certificate and the SNI table, only those that differ."""
    return _changed(config, _cert_wanted(config, files, []))


def _cert_wanted(
    config: PostfixConfig, files: CertificateFiles, notes: list[str]
) -> dict[str, str]:
    explicit = config.explicit
    wanted: dict[str, str] = {}
    if config.version >= (3, 4):
        wanted["smtpd_tls_chain_files"] = files.chain_file
        if files.sni_map:
            wanted["tls_server_sni_maps"] = files.sni_map
        stale = [p for p in LEGACY_CERT_PARAMS if explicit.get(p, "").strip()]
        for param in stale:
            wanted[param] = ""
        if stale:
            notes.append(
                f"cleared {', '.join(stale)} in main.cf: Postfix ignores them once "
                "smtpd_tls_chain_files is set"
            )
    else:
        wanted["smtpd_tls_cert_file"] = files.fullchain
        wanted["smtpd_tls_key_file"] = files.key
    return wanted


def _plan_main(config: PostfixConfig, files: CertificateFiles, plan: TLSPlan) -> None:
    main = config.main
    wanted = _cert_wanted(config, files, plan.notes)

    if _level(SMTPD_LEVELS, effective_smtpd_level(main)) < SMTPD_LEVELS["may"] or (
        not main.get("smtpd_tls_security_level", "").strip()
        and effective_smtpd_level(main) == "may"
    ):
        wanted["smtpd_tls_security_level"] = "may"
    if _level(SMTP_LEVELS, effective_smtp_level(main)) < SMTP_LEVELS["may"] or (
        not main.get("smtp_tls_security_level", "").strip() and effective_smtp_level(main) == "may"
    ):
        wanted["smtp_tls_security_level"] = "may"

    for side in ("smtpd", "smtp"):
        param = f"{side}_tls_session_cache_database"
        if not main.get(param, "").strip():
            wanted[param] = f"{_cache_type(config.map_types)}:${{data_directory}}/{side}_scache"
    try:
        loglevel = int(main.get("smtpd_tls_loglevel", "0") or "0")
    except ValueError:
        loglevel = 0
    if loglevel < 1:
        wanted["smtpd_tls_loglevel"] = "1"

    plan.main.update(_changed(config, wanted))


def _sasl_backend(config: PostfixConfig, service: Optional[MasterService]) -> bool:
    """Is a SASL backend already enabled for this service (or globally)?"""
    overrides = service.overrides if service else {}
    enabled = overrides.get("smtpd_sasl_auth_enable", config.main.get("smtpd_sasl_auth_enable", ""))
    return is_yes(enabled)


def has_sasl_backend(config: PostfixConfig) -> bool:
    """Do the submission services (or main.cf) already enable SASL?"""
    services = config.services_on_port(SUBMISSION_PORT)
    if services:
        return all(_sasl_backend(config, service) for service in services)
    return _sasl_backend(config, None)


def dovecot_socket(config: PostfixConfig) -> str:
    """Absolute path of Dovecot's auth socket for this instance (smtpd_sasl_path is
    relative to the queue directory)."""
    queue = config.main.get("queue_directory", "/var/spool/postfix")
    return os.path.join(queue, DOVECOT_SASL_PATH)


def uses_dovecot_socket(config: PostfixConfig) -> bool:
    """Does a submission service authenticate through Dovecot's socket at our path?"""
    for service in config.services_on_port(SUBMISSION_PORT) + config.services_on_port(SMTPS_PORT):
        settings = {**config.main, **service.overrides}
        if (
            is_yes(settings.get("smtpd_sasl_auth_enable", ""))
            and settings.get("smtpd_sasl_type") == "dovecot"
            and settings.get("smtpd_sasl_path") == DOVECOT_SASL_PATH
        ):
            return True
    return False


def _plan_submission_service(
    config: PostfixConfig,
    plan: TLSPlan,
    port: int,
    default_name: str,
    wrappermode: bool,
    options: Options,
) -> None:
    existing = config.services_on_port(port)
    if existing:
        services = existing
    else:
        # Copy the chroot setting of the port-25 service, as Debian's master.cf does.
        smtp = config.services_on_port(25)
        chroot = smtp[0].chroot if smtp else "-"
        service = MasterService(default_name, "inet", "n", "-", chroot, "-", "-", "smtpd")
        plan.new_services.append(service)
        plan.notes.append(f"added the {default_name} service (port {port}) to master.cf")
        services = [service]

    for service in services:
        current = service.overrides
        wanted: list[tuple[str, str]] = []
        if "syslog_name" not in current:
            wanted.append(("syslog_name", f"postfix/{default_name}"))
        if wrappermode:
            wanted.append(("smtpd_tls_wrappermode", "yes"))
        wanted.extend(SUBMISSION_OVERRIDES)
        wanted.extend((k, v) for k, v in SUBMISSION_DEFAULTS if k not in current)
        has_backend = _sasl_backend(config, service)
        if options.sasl != "none" and not has_backend and options.dovecot_sasl_path:
            wanted.extend(
                [
                    ("smtpd_sasl_auth_enable", "yes"),
                    ("smtpd_sasl_type", "dovecot"),
                    ("smtpd_sasl_path", options.dovecot_sasl_path),
                ]
            )
            has_backend = True
        if not has_backend:
            plan.warnings.append(
                f"master.cf service {service.name} (port {port}) has no SASL backend, so nobody "
                "can log in to submit mail: install Dovecot and rerun with "
                "--postfix-tls-sasl dovecot, or configure smtpd_sasl_type yourself"
            )
        for param, value in wanted:
            if current.get(param, "").strip() != value:
                plan.service_params.append(ServiceParam(service.key, param, value))


def plan_tls(config: PostfixConfig, files: CertificateFiles, options: Options) -> TLSPlan:
    """Every main.cf/master.cf change that deploying ``files`` needs."""
    plan = TLSPlan()
    _plan_main(config, files, plan)
    if options.submission:
        _plan_submission_service(config, plan, SUBMISSION_PORT, "submission", False, options)
    if options.smtps:
        _plan_submission_service(config, plan, SMTPS_PORT, "submissions", True, options)
    # An operator's choice the plugin does not silently undo, but must not hide.
    plan.warnings += submission_wrappermode(config)
    return plan


# --- where the daemons listen, and what the deploy verifies ---------------------------


def split_list(value: str) -> list[str]:
    """A Postfix list value (separated by whitespace or commas) as its items."""
    return [item for item in re.split(r"[\s,]+", value.strip()) if item]


def inet_families(config: PostfixConfig) -> list[int]:
    """The IP versions Postfix listens with (inet_protocols: all, ipv4, ipv6, lists)."""
    value = config.value("inet_protocols").lower() or "all"
    families: list[int] = []
    for item in split_list(value):
        if item == "all":
            families += [4, 6] if socket.has_ipv6 else [4]
        elif item in ("ipv4", "ipv6"):
            families.append(int(item[-1]))
    return sorted(set(families)) or [4]


def _resolve(name: str, families: Sequence[int]) -> list[str]:
    """A host name's addresses of the given families (Postfix binds to each of them)."""
    found: list[str] = []
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return found
    for family, _, _, _, sockaddr in infos:
        version = 4 if family == socket.AF_INET else 6 if family == socket.AF_INET6 else 0
        address = str(sockaddr[0])
        if version in families and address not in found:
            found.append(address)
    return found


def bound_addresses(config: PostfixConfig, service: MasterService) -> list[str]:
    """What a master.cf inet service accepts connections on, as the master binds it:
    its own ``host:`` (``127.0.0.1:10025``, ``[::1]:25``) or every inet_interfaces value
    (``all``, ``loopback-only``, addresses, names, $names expanded), filtered by
    inet_protocols. Wildcards are ``0.0.0.0`` and ``::`` (Postfix binds IPv6 sockets
    IPv6-only, so ``::`` does not accept IPv4)."""
    families = inet_families(config)
    items = [service.host] if service.host else split_list(config.value("inet_interfaces") or "all")
    result: list[str] = []
    for item in items:
        item = item.strip("[]")
        lowered = item.lower()
        if lowered in ("all", "*", ""):
            addresses = [WILDCARDS[f] for f in families]
        elif lowered in ("loopback-only", "localhost"):
            addresses = [LOOPBACKS[f] for f in families]
        elif ip_version(item) is not None:
            addresses = [item] if ip_version(item) in families else []
        else:
            addresses = _resolve(item, families)
        result += [a for a in addresses if a not in result]
    return result


def _service_setting(config: PostfixConfig, service: MasterService, name: str) -> str:
    overrides = service.overrides
    return overrides[name] if name in overrides else config.main.get(name, "")


def _setting_source(config: PostfixConfig, service: MasterService, name: str) -> str:
    """Where a value in force for ``service`` comes from, for messages."""
    if name in service.overrides:
        return f"-o {name}={service.overrides[name]} (master.cf service {service.key})"
    main_cf = os.path.join(config.main.get("config_directory", "/etc/postfix"), "main.cf")
    return f"{name} = {config.main.get(name, '') or '(empty)'} in {main_cf}"


def _cert_setting(config: PostfixConfig, service: MasterService) -> str:
    """The setting that decides which certificate ``service`` serves."""
    for name in ("smtpd_tls_chain_files", "smtpd_tls_cert_file"):
        if service.overrides.get(name, "").strip():
            return f"-o {name} of master.cf service {service.key}"
    main_cf = os.path.join(config.main.get("config_directory", "/etc/postfix"), "main.cf")
    if config.version >= (3, 4):
        sni = " and tls_server_sni_maps" if config.main.get("tls_server_sni_maps") else ""
        return f"smtpd_tls_chain_files{sni} in {main_cf}"
    return f"smtpd_tls_cert_file/smtpd_tls_key_file in {main_cf}"


@dataclass(frozen=True)
class Listener:
    """One inet smtpd/postscreen service: its endpoint and whether the deploy checks it.

    ``skip`` says why it is never checked (TLS off, PROXY protocol: nothing a TLS
    client can talk to); ``internal`` why it is not checked unless its port is named
    in --postfix-tls-verify-ports (a loopback-only content-filter or proxy port).
    """

    service: MasterService
    endpoint: Endpoint
    skip: Optional[str] = None
    internal: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.service.name}/inet (port {self.endpoint.port})"


def _internal_reason(service: MasterService, port: int) -> Optional[str]:
    host = service.host
    if host is None or port in PUBLIC_PORTS or not is_loopback(host):
        return None
    if "content_filter" in service.overrides:
        use = "a content filter's re-injection port (-o content_filter=)"
    else:
        use = "an internal port (content-filter re-injection or proxy)"
    return (f"bound to loopback {service.name}, {use}; name the port in "
            "--postfix-tls-verify-ports to check it")


def listeners(config: PostfixConfig, verify_address: str) -> list[Listener]:
    """Every inet smtpd/postscreen service, with its endpoint and why it is not checked."""
    result: list[Listener] = []
    log_file = config.value("maillog_file")
    for service in config.services:
        port = service.port
        if service.type != "inet" or not service.runs_smtpd or port is None:
            continue
        overrides = service.overrides
        level = overrides.get("smtpd_tls_security_level") or effective_smtpd_level(config.main)
        wrapper = is_yes(_service_setting(config, service, "smtpd_tls_wrappermode") or "no")
        address = choose_address(bound_addresses(config, service), verify_address)
        endpoint = Endpoint(
            service="postfix",
            protocol="smtp",
            address=address,
            port=port,
            tls="implicit" if wrapper else "starttls",
            label=service.name,
            setting=_cert_setting(config, service),
            log_file=log_file,
        )
        skip: Optional[str] = None
        proxy = ("postscreen_upstream_proxy_protocol"
                 if service.command.split("/")[-1] == "postscreen"
                 else "smtpd_upstream_proxy_protocol")
        if _service_setting(config, service, proxy).strip():
            skip = (f"expects a PROXY protocol header first "
                    f"({_setting_source(config, service, proxy)}), which the check cannot send")
        elif level.strip().lower() == "none" and not wrapper:
            skip = f"TLS is off ({_setting_source(config, service, 'smtpd_tls_security_level')})"
        internal = None if skip else _internal_reason(service, port)
        result.append(Listener(service, endpoint, skip, internal))
    return result


def endpoints(
    config: PostfixConfig, verify_address: str, ports: Optional[Sequence[int]] = None
) -> list[Endpoint]:
    """The TLS endpoints a deploy verifies: public-facing inet smtpd/postscreen services
    with TLS on; with ``ports`` (--postfix-tls-verify-ports), every one on those ports
    that a TLS client can talk to."""
    return [
        listener.endpoint
        for listener in listeners(config, verify_address)
        if listener.skip is None
        and (listener.internal is None if not ports else listener.endpoint.port in ports)
    ]


def unchecked_endpoints(
    config: PostfixConfig, ports: Optional[Sequence[int]] = None,
    verify_address: str = constants.CLI_DEFAULTS["verify_address"],
) -> list[tuple[str, str]]:
    """(label, why) of every inet smtpd/postscreen service a deploy does not verify."""
    result: list[tuple[str, str]] = []
    for listener in listeners(config, verify_address):
        port = listener.endpoint.port
        if listener.skip is not None:
            result.append((listener.label, listener.skip))
        elif ports and port not in ports:
            result.append((listener.label, "its port is not in --postfix-tls-verify-ports"))
        elif not ports and listener.internal is not None:
            result.append((listener.label, listener.internal))
    return result


def parse_ports(value: str) -> list[int]:
    """--postfix-tls-verify-ports: ``auto`` (or empty) -> [], else a comma list of ports."""
    text = value.strip().lower()
    if text in ("", "auto"):
        return []
    ports: list[int] = []
    for item in split_list(text):
        port = resolve_port(item)
        if port is None or not 0 < port < 65536:
            raise errors.PluginError(
                f"--postfix-tls-verify-ports {value}: {item!r} is not a port; give a comma "
                "list such as 25,465,587 (or auto)."
            )
        if port not in ports:
            ports.append(port)
    return ports


def submission_wrappermode(config: PostfixConfig) -> list[str]:
    """One sentence per port-587 service that has implicit TLS (smtpd_tls_wrappermode=yes):
    mail clients speak STARTTLS on 587 (RFC 6409) and cannot connect to it."""
    problems = []
    for service in config.services_on_port(SUBMISSION_PORT):
        if is_yes(_service_setting(config, service, "smtpd_tls_wrappermode") or "no"):
            source = _setting_source(config, service, "smtpd_tls_wrappermode")
            fix = (f"postconf -PX {service.key}/smtpd_tls_wrappermode"
                   if "smtpd_tls_wrappermode" in service.overrides
                   else f"-o smtpd_tls_wrappermode=no on {service.key}")
            problems.append(
                f"master.cf service {service.name} (port 587) has {source}: implicit TLS "
                "belongs on port 465 (submissions); mail clients speak STARTTLS on 587 "
                f"(RFC 6409) and fail against it; fix: {fix}, then postfix reload"
            )
    return problems


class Postfix:
    """One Postfix instance, addressed through ``postconf -c DIR``."""

    def __init__(self, config_dir: Optional[str] = None) -> None:
        if process.find_tool("postconf") is None or process.find_tool("postfix") is None:
            raise errors.NoInstallationError(
                "Postfix is not installed (postconf and postfix were not found): "
                "install the postfix package first."
            )
        if config_dir is None:
            config_dir = self._postconf_raw(["-h", "config_directory"], None).strip()
        self.config_dir = os.path.abspath(config_dir)
        if not os.path.isfile(self.main_cf):
            raise errors.NoInstallationError(
                f"{self.main_cf} does not exist: pass the Postfix configuration directory "
                "with --postfix-tls-postfix-dir."
            )

    @property
    def instance_key(self) -> str:
        """"" for Postfix's default instance; else a file-name-safe key made from this
        instance's config directory (``etc-postfix-out``), naming its plugin state."""
        default = os.path.abspath(self._postconf_raw(["-h", "config_directory"], None).strip())
        if self.config_dir == default:
            return ""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.config_dir.strip("/"))

    @property
    def main_cf(self) -> str:
        return os.path.join(self.config_dir, "main.cf")

    @property
    def master_cf(self) -> str:
        return os.path.join(self.config_dir, "master.cf")

    @staticmethod
    def _postconf_raw(args: list[str], config_dir: Optional[str]) -> str:
        argv = ["postconf"] + (["-c", config_dir] if config_dir else []) + args
        proc = process.run(
            argv, what="postconf failed", check=False, error=errors.MisconfigurationError
        )
        # Only what Postfix itself refuses is an error: postconf exiting non-zero or
        # printing "fatal:" (e.g. a main.cf line without "="). Its "warning:" lines
        # (an unused parameter, an undefined $name in master.cf) are notes: Postfix
        # runs with them; warnings() returns them for the deploy's output.
        problems = [
            line for line in proc.stderr.splitlines() if "fatal:" in line or "warning:" in line
        ]
        if proc.returncode != 0 or any("fatal:" in p for p in problems):
            where = config_dir or "its default directory"
            raise errors.MisconfigurationError(
                f"postconf cannot read the Postfix configuration in {where}: "
                f"{process.last_line(proc.stderr) or 'exit ' + str(proc.returncode)}; fix it "
                "(postfix check) and run certbot again."
            )
        for problem in problems:
            logger.debug("postconf: %s", problem)
        return proc.stdout

    def postconf(self, *args: str) -> str:
        return self._postconf_raw(list(args), self.config_dir)

    def read(self, expand: Sequence[str] = ()) -> PostfixConfig:
        """Read main.cf values, explicit settings, master.cf and map types; ``expand``
        names more parameters to read expanded (``PostfixConfig.value``)."""
        return PostfixConfig(
            main=parse_postconf(self.postconf(*MAIN_PARAMS)),
            explicit=parse_postconf(self.postconf("-n")),
            services=parse_master(self.postconf("-M")),
            map_types=set(self.postconf("-m").split()),
            expanded=parse_postconf(self.postconf("-x", *EXPANDED_PARAMS, *expand)),
        )

    def warnings(self) -> list[str]:
        """What postconf warns about in main.cf/master.cf, one line each, without the
        ``postconf: warning:`` prefix (e.g. ``/etc/postfix/main.cf: unused parameter:
        policyd-spf_time_limit=3600``). Postfix runs with these: they are notes, not
        errors (what it refuses makes postconf or ``postfix check`` fail instead)."""
        proc = process.run(
            ["postconf", "-c", self.config_dir, "-n"], what="postconf failed", check=False
        )
        found: list[str] = []
        for line in proc.stderr.splitlines():
            if "warning:" in line:
                text = line.split("warning:", 1)[1].strip()
                if text not in found:
                    found.append(text)
        return found

    def check(self) -> None:
        """``postfix check``, and postconf's own verdict; raises MisconfigurationError
        with Postfix's message when either refuses the configuration. postconf
        warnings are not refusals (see warnings())."""
        proc = process.run(
            ["postfix", "-c", self.config_dir, "check"], what="postfix check", check=False,
            stderr_tty=True,
        )
        fatal = [line for line in (proc.stderr + proc.stdout).splitlines() if "fatal:" in line]
        if proc.returncode != 0 or fatal:
            reason = fatal[-1] if fatal else process.last_line(proc.stderr or proc.stdout)
            raise errors.MisconfigurationError(
                f"postfix check failed for {self.config_dir}: "
                f"{reason or 'exit ' + str(proc.returncode) + ', see the mail log'}"
            )
        self.postconf("-n")  # raises on a fatal main.cf/master.cf problem

    def running(self) -> Optional[bool]:
        """Is this instance's master alive? Read from its pid file, not ``postfix
        status``, which fails on a broken main.cf even while the master runs.
        None when this user cannot tell (the pid file is root's alone)."""
        queue = self.postconf("-h", "queue_directory").strip()
        try:
            pid = process.daemon_pid(os.path.join(queue, "pid", "master.pid"), "master")
        except PermissionError:
            return None
        return pid is not None

    def reload(self) -> None:
        process.run(
            ["postfix", "-c", self.config_dir, "reload"],
            what=f"postfix reload failed for {self.config_dir}",
            error=errors.MisconfigurationError,
            stderr_tty=True,
        )

    def apply(self, plan: TLSPlan) -> None:
        """Write the plan: one ``postconf -e``, then ``-M`` for new services, one ``-P``."""
        if plan.main:
            self.postconf("-e", *(f"{k}={v}" for k, v in plan.main.items()))
        for service in plan.new_services:
            self.postconf("-M", f"{service.key}={service.line()}")
        if plan.service_params:
            self.postconf("-P", *(p.arg() for p in plan.service_params))

    def all_names(self, config: PostfixConfig) -> set[str]:
        """Names this server answers for, from main.cf (for certbot's domain prompt)."""
        names: set[str] = set()
        for param in ("myhostname", "mydomain", "virtual_mailbox_domains",
                      "virtual_alias_domains", "relay_domains"):
            names.update(_literal_domains(config.main.get(param, "")))
        return names


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _literal_domains(value: str) -> Iterable[str]:
    """Domain names written out literally (not $variables, maps or files)."""
    for item in re.split(r"[\s,]+", value.strip()):
        item = item.lower().rstrip(".")
        if item and _DOMAIN.match(item):
            yield item
