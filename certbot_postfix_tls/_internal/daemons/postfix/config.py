"""Postfix's configuration as postconf reports it: main.cf values, master.cf entries,
and the facts read from them (TLS levels in force, SASL wiring).

Parsing only: nothing here runs postconf (``ctl``) or decides a change (``policy``).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from certbot_postfix_tls._internal import constants, process
from certbot_postfix_tls._internal.tls_client import Advice

# Well-known service names, for machines whose /etc/services lacks them.
KNOWN_PORTS = {
    "smtp": constants.SMTP_PORT,
    "submission": constants.SUBMISSION_PORT,
    "submissions": constants.SMTPS_PORT,
    "smtps": constants.SMTPS_PORT,
    "urd": constants.SMTPS_PORT,
}
NAME = "postfix"  # the daemon's name in the registry, the state and endpoints
ADVICE = Advice(
    display="Postfix",
    reload="postfix reload",
    start="postfix start",
    cert_setting="smtpd_tls_chain_files in main.cf",
    tls_setting="smtpd_tls_security_level (main.cf, or -o in master.cf)",
    tls_fix="turn TLS on for this port (may, or encrypt on 587)",
    listen_setting="inet_interfaces/inet_protocols and the master.cf entry",
    protocol_setting="smtpd_tls_protocols/smtpd_tls_ciphers",
    alt_cert_setting=("smtpd_tls_chain_files (a second key and chain) or the SNI table's "
                      "entry for the name, in main.cf or a -o override"),
    log_programs=("smtpd[", "tlsproxy[", "postscreen["),
    no_log_hint="the reason is in Postfix's log (set maillog_file to have it shown here)",
    units=("postfix",),
    stop_commands=("postfix stop", "postfix abort"),
)
# Dovecot's auth socket for Postfix, relative to the queue directory (smtpd_sasl_path),
# and the smtpd_sasl_type that talks to it.
DOVECOT_SASL_PATH = "private/auth"
DOVECOT_SASL_TYPE = "dovecot"

# Read once more with postconf -x: Postfix binds to the expanded values, and
# myhostname is often written ``mail.$mydomain`` (the default rule compares names).
EXPANDED_PARAMS = ("inet_interfaces", "inet_protocols", "maillog_file", "myhostname")

# Parameters Postfix ignores (with a warning) once smtpd_tls_chain_files is set.
LEGACY_CERT_PARAMS = (
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_dcert_file",
    "smtpd_tls_dkey_file",
)

# Everything the plan reads from main.cf, asked from postconf in one call (with the
# settings of policy.MAIN_POLICY).
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
    "tls_preempt_cipherlist",
    "default_database_type",
    *LEGACY_CERT_PARAMS,
)


PROTOCOL_ORDER = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def postfix_protocols(value: str) -> set[str]:
    """The protocols a Postfix ``*_tls_protocols`` value leaves enabled: a list of names
    to include, ``!name`` to exclude, ``>=name``/``<=name`` bounds (3.6+)."""
    included: set[str] = set()
    excluded: set[str] = set()
    low, high = 0, len(PROTOCOL_ORDER) - 1
    for token in re.split(r"[\s,:]+", value.strip()):
        bare = token.lstrip("!<>=")
        if bare not in PROTOCOL_ORDER:
            continue
        if token.startswith("!"):
            excluded.add(bare)
        elif token.startswith(">="):
            low = PROTOCOL_ORDER.index(bare)
        elif token.startswith("<="):
            high = PROTOCOL_ORDER.index(bare)
        else:
            included.add(bare)
    enabled = included or set(PROTOCOL_ORDER)
    return {p for i, p in enumerate(PROTOCOL_ORDER)
            if p in enabled and p not in excluded and low <= i <= high}


def is_yes(value: str) -> bool:
    """A Postfix boolean that is on."""
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
    """Split a master.cf command line as Postfix does (``mystrtokq``): whitespace
    separates, except inside braces, which nest (``{ a = inline:{ b=c }, d }`` and
    ``a=inline:{ b }`` are one argument each)."""
    args: list[str] = []
    current, depth = "", 0
    for char in text:
        if char.isspace() and depth == 0:
            if current:
                args.append(current)
            current = ""
            continue
        if char == "{":
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
        current += char
    if current:
        args.append(current)
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


def effective_level(main: Mapping[str, str], side: str) -> str:
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
    return effective_level(main, "smtpd")


def effective_smtp_level(main: Mapping[str, str]) -> str:
    """The client (outbound) TLS level in force."""
    return effective_level(main, "smtp")


def main_cf_path(config: PostfixConfig) -> str:
    """The main.cf these values were read from, for messages."""
    return os.path.join(config.main.get("config_directory", constants.POSTFIX_CONFIG_DIR),
                        "main.cf")


def sasl_backend(config: PostfixConfig, service: Optional[MasterService]) -> bool:
    """Is a SASL backend already enabled for this service (or globally)?"""
    overrides = service.overrides if service else {}
    enabled = overrides.get("smtpd_sasl_auth_enable", config.main.get("smtpd_sasl_auth_enable", ""))
    return is_yes(enabled)


def has_sasl_backend(config: PostfixConfig) -> bool:
    """Do the submission services (or main.cf) already enable SASL?"""
    services = config.services_on_port(constants.SUBMISSION_PORT)
    if services:
        return all(sasl_backend(config, service) for service in services)
    return sasl_backend(config, None)


def dovecot_socket(config: PostfixConfig) -> str:
    """Absolute path of Dovecot's auth socket for this instance (smtpd_sasl_path is
    relative to the queue directory)."""
    queue = config.main.get("queue_directory", constants.POSTFIX_QUEUE_DIR)
    return os.path.join(queue, DOVECOT_SASL_PATH)


def uses_dovecot_socket(config: PostfixConfig) -> bool:
    """Does a submission service authenticate through Dovecot's socket at our path?"""
    submission = config.services_on_port(constants.SUBMISSION_PORT)
    for service in submission + config.services_on_port(constants.SMTPS_PORT):
        settings = {**config.main, **service.overrides}
        if (
            is_yes(settings.get("smtpd_sasl_auth_enable", ""))
            and settings.get("smtpd_sasl_type") == DOVECOT_SASL_TYPE
            and settings.get("smtpd_sasl_path") == DOVECOT_SASL_PATH
        ):
            return True
    return False


def split_list(value: str) -> list[str]:
    """The items of a comma/space separated main.cf list."""
    return [item for item in re.split(r"[\s,]+", value.strip()) if item]


def service_setting(config: PostfixConfig, service: MasterService, name: str) -> str:
    """The value in force for ``service``: its ``-o`` override, else main.cf's."""
    overrides = service.overrides
    return overrides[name] if name in overrides else config.main.get(name, "")


def setting_source(config: PostfixConfig, service: MasterService, name: str) -> str:
    """Where a value in force for ``service`` comes from, for messages."""
    if name in service.overrides:
        return f"-o {name}={service.overrides[name]} (master.cf service {service.key})"
    main_cf = main_cf_path(config)
    return f"{name} = {config.main.get(name, '') or '(empty)'} in {main_cf}"

