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

from certbot_postfix_tls._internal import process
from certbot_postfix_tls._internal.verify import Endpoint

logger = logging.getLogger(__name__)

# Well-known service names, for machines whose /etc/services lacks them.
KNOWN_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465, "urd": 465}
SUBMISSION_PORT = 587
# Dovecot's auth socket for Postfix, relative to the queue directory (smtpd_sasl_path).
DOVECOT_SASL_PATH = "private/auth"
SMTPS_PORT = 465

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

# Server-side levels, weakest first; client-side levels likewise (SPEC section 3).
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

# master.cf overrides for the submission services (SPEC section 3).
SUBMISSION_OVERRIDES = (
    ("smtpd_tls_security_level", "encrypt"),
    ("smtpd_tls_auth_only", "yes"),
)
SUBMISSION_DEFAULTS = (("smtpd_relay_restrictions", "permit_sasl_authenticated,reject"),)


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1")


def parse_version(text: str) -> tuple[int, ...]:
    """``3.7.11`` -> (3, 7, 11); snapshot suffixes are ignored."""
    numbers = re.findall(r"\d+", text.split("-")[0])
    return tuple(int(n) for n in numbers[:3]) or (0,)


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

    @property
    def version(self) -> tuple[int, ...]:
        return parse_version(self.main.get("mail_version", "0"))

    def services_on_port(self, port: int) -> list[MasterService]:
        return [s for s in self.services if s.runs_smtpd and s.port == port]


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
    if _yes(main.get(f"{side}_enforce_tls", "")):
        return "encrypt"
    if _yes(main.get(f"{side}_use_tls", "")):
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


def _plan_main(config: PostfixConfig, files: CertificateFiles, plan: TLSPlan) -> None:
    main, explicit = config.main, config.explicit
    wanted: dict[str, str] = {}
    if config.version >= (3, 4):
        wanted["smtpd_tls_chain_files"] = files.chain_file
        if files.sni_map:
            wanted["tls_server_sni_maps"] = files.sni_map
        stale = [p for p in LEGACY_CERT_PARAMS if explicit.get(p, "").strip()]
        for param in stale:
            wanted[param] = ""
        if stale:
            plan.notes.append(
                f"cleared {', '.join(stale)} in main.cf: Postfix ignores them once "
                "smtpd_tls_chain_files is set"
            )
    else:
        wanted["smtpd_tls_cert_file"] = files.fullchain
        wanted["smtpd_tls_key_file"] = files.key

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

    for name, value in wanted.items():
        current = explicit.get(name, main.get(name, "") if value else "")
        if current.strip() != value:
            plan.main[name] = value


def _sasl_backend(config: PostfixConfig, service: Optional[MasterService]) -> bool:
    """Is a SASL backend already enabled for this service (or globally)?"""
    overrides = service.overrides if service else {}
    enabled = overrides.get("smtpd_sasl_auth_enable", config.main.get("smtpd_sasl_auth_enable", ""))
    return _yes(enabled)


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
            _yes(settings.get("smtpd_sasl_auth_enable", ""))
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
    """Every main.cf/master.cf change that deploying ``files`` needs (SPEC section 3)."""
    plan = TLSPlan()
    _plan_main(config, files, plan)
    if options.submission:
        _plan_submission_service(config, plan, SUBMISSION_PORT, "submission", False, options)
    if options.smtps:
        _plan_submission_service(config, plan, SMTPS_PORT, "submissions", True, options)
    return plan


def endpoints(config: PostfixConfig, verify_address: str) -> list[Endpoint]:
    """The TLS endpoints Postfix serves: inet smtpd/postscreen services with TLS on."""
    result: list[Endpoint] = []
    interfaces = [i.strip() for i in re.split(r"[\s,]+", config.main.get("inet_interfaces", ""))]
    for service in config.services:
        if service.type != "inet" or not service.runs_smtpd or service.port is None:
            continue
        overrides = service.overrides
        level = overrides.get("smtpd_tls_security_level") or effective_smtpd_level(config.main)
        wrapper = _yes(overrides.get("smtpd_tls_wrappermode", "no"))
        if level == "none" and not wrapper:
            continue
        address = service.host or _listen_address(interfaces, verify_address)
        result.append(
            Endpoint(
                service="postfix",
                protocol="smtp",
                address=address,
                port=service.port,
                tls="implicit" if wrapper else "starttls",
                label=service.name,
            )
        )
    return result


def _listen_address(interfaces: Sequence[str], verify_address: str) -> str:
    if not interfaces or "all" in interfaces or verify_address in interfaces:
        return verify_address
    if "loopback-only" in interfaces or "localhost" in interfaces:
        return "127.0.0.1"
    return interfaces[0]


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
        # postconf reports syntax errors as "fatal:" or "warning:" lines; both mean
        # main.cf/master.cf cannot be trusted to round-trip, so refuse to go on.
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

    def read(self) -> PostfixConfig:
        """Read main.cf values, explicit settings, master.cf and map types."""
        return PostfixConfig(
            main=parse_postconf(self.postconf(*MAIN_PARAMS)),
            explicit=parse_postconf(self.postconf("-n")),
            services=parse_master(self.postconf("-M")),
            map_types=set(self.postconf("-m").split()),
        )

    def syntax_warnings(self) -> list[str]:
        """Lines postconf warns about in main.cf (e.g. a line without '=')."""
        proc = process.run(
            ["postconf", "-c", self.config_dir, "-n"], what="postconf failed", check=False
        )
        return [line for line in proc.stderr.splitlines() if "warning:" in line or "fatal:" in line]

    def check(self) -> None:
        """``postfix check``; raises MisconfigurationError with Postfix's own message."""
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
        bad = self.syntax_warnings()
        if bad:
            raise errors.MisconfigurationError(
                f"postconf reports a problem in {self.main_cf}: {bad[0].split('warning: ')[-1]}; "
                "fix that line and run certbot again."
            )

    def running(self) -> bool:
        """Is this instance's master alive? Read from its pid file, not ``postfix
        status``, which fails on a broken main.cf even while the master runs."""
        queue = self.postconf("-h", "queue_directory").strip()
        pid = process.pid_alive(os.path.join(queue, "pid", "master.pid"))
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
