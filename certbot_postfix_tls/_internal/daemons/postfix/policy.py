"""Postfix's TLS policy as data, and the one function that plans it.

``MAIN_POLICY`` is every main.cf setting the plugin enforces on install, each with the
value it writes and the test for what is already acceptable; ``SUBMISSION_OVERRIDES``
and ``SUBMISSION_DEFAULTS`` are the master.cf overrides of the submission services,
``SUBMISSION_HARDENING`` those written only where the value in force is weaker.
``plan_tls`` applies them (and the certificate settings) to what postconf reported: a
pure function, unit-tested on real configuration fixtures. Adding a main.cf setting is
one ``MainSetting`` in ``MAIN_POLICY`` (postconf is asked for it automatically).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import constants
from certbot_postfix_tls._internal.daemons.base import DaemonPlan
from certbot_postfix_tls._internal.daemons.postfix.config import (
    DOVECOT_SASL_TYPE,
    LEGACY_CERT_PARAMS,
    MasterService,
    PostfixConfig,
    effective_level,
    is_yes,
    postfix_protocols,
    sasl_backend,
    service_setting,
    setting_source,
    split_list,
    uses_dovecot_socket,
)
from certbot_postfix_tls._internal.state import State

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

# main.cf settings naming certificate and key files, checked before the last undeploy
# gives them back their earlier values.
RESTORED_FILE_PARAMS = ("smtpd_tls_chain_files", *LEGACY_CERT_PARAMS)


def _modern_only(value: str) -> bool:
    """A protocols value that enables TLS 1.2 or 1.3 and nothing older."""
    enabled = postfix_protocols(value)
    return bool(enabled) and enabled <= set(constants.MODERN_TLS)


def _modern_protocols(config: PostfixConfig, current: str) -> str:
    """TLS 1.2 and later, in the syntax this Postfix reads (``>=`` since 3.6)."""
    if config.version >= (3, 6):
        return ">=TLSv1.2"
    return "!SSLv2,!SSLv3,!TLSv1,!TLSv1.1"


def _cipher_types(value: str) -> list[str]:
    return [t for t in re.split(r"[\s,:]+", value.strip()) if t]


def _excludes_anonymous(value: str) -> bool:
    return "aNULL" in _cipher_types(value)


def _exclude_anonymous(config: PostfixConfig, current: str) -> str:
    """What is excluded already, plus anonymous suites (nothing excluded is let back in)."""
    return ",".join([*_cipher_types(current), "aNULL"])


@dataclass(frozen=True)
class ServiceSetting:
    """A submission override that hardens where passwords travel: written when the value
    in force for the service (its own ``-o``, else main.cf's) is not ``strict`` enough,
    as ``wanted(config, value in force)``; never over a stricter one."""

    name: str
    strict: Callable[[str], bool]
    wanted: Callable[[PostfixConfig, str], str]


# Port 25 keeps main.cf's opportunistic policy: a sending MTA that only has TLS 1.0 or
# anonymous suites still gets encryption rather than plaintext (RFC 7435); 587/465 carry
# passwords and require TLS, so they get TLS 1.2+ (RFC 8996, RFC 8314) with certificates.
SUBMISSION_HARDENING: tuple[ServiceSetting, ...] = (
    ServiceSetting("smtpd_tls_mandatory_protocols", _modern_only, _modern_protocols),
    ServiceSetting("smtpd_tls_mandatory_exclude_ciphers", _excludes_anonymous,
                   _exclude_anonymous),
)


@dataclass(frozen=True)
class ServiceParam:
    """One ``postconf -P name/type/param=value`` to apply."""

    service: str  # name/type
    param: str
    value: str

    def arg(self) -> str:
        """The ``postconf -P`` argument."""
        return f"{self.service}/{self.param}={self.value}"


@dataclass
class TLSPlan(DaemonPlan):
    """Every main.cf/master.cf change to make (Postfix's ``DaemonPlan``)."""

    main: dict[str, str] = field(default_factory=dict)  # value ("" clears): postconf -e
    new_services: list[MasterService] = field(default_factory=list)  # postconf -M
    service_params: list[ServiceParam] = field(default_factory=list)  # postconf -P
    main_remove: list[str] = field(default_factory=list)  # postconf -X (undeploy)
    params_remove: list[str] = field(default_factory=list)  # "name/type/param": -PX
    services_remove: list[str] = field(default_factory=list)  # "name/type": -MX

    @property
    def empty(self) -> bool:
        return not (self.main or self.new_services or self.service_params or self.main_remove
                    or self.params_remove or self.services_remove)

    def report(self) -> list[str]:
        return ([f"main.cf: {k} = {v}" for k, v in self.main.items()]
                + [f"master.cf: {p.service} -o {p.param}={p.value}"
                   for p in self.service_params])


@dataclass(frozen=True)
class CertificateFiles:
    """Where Postfix should read the server certificate from."""

    chain_file: str  # key followed by the full chain (smtpd_tls_chain_files, 3.4+)
    fullchain: str  # for Postfix < 3.4
    key: str
    sni_map: Optional[str] = None  # "type:path" of the SNI table (3.4+)


@dataclass(frozen=True)
class Options:
    """The install options that shape the policy (--postfix-tls-submission, -smtps, -sasl)."""

    submission: bool = True
    smtps: bool = False
    sasl: str = "auto"  # auto, dovecot, none
    dovecot_sasl_path: Optional[str] = None  # set when Dovecot's auth socket is wired
    # master.cf service key -> why the SASL backend it enables cannot work (sasl.py):
    # such a service counts as having none.
    broken_sasl: Mapping[str, str] = field(default_factory=dict)


def _level(levels: Mapping[str, int], value: str) -> int:
    return levels.get(value.strip().lower(), 0)


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


# (config, setting name) -> whether the value in force already meets the policy.
Acceptable = Callable[[PostfixConfig, str], bool]


def _at_least(levels: Mapping[str, int], weakest: str) -> Acceptable:
    """A TLS level at least ``weakest``, set with ``*_tls_security_level`` itself (the
    obsolete ``*_use_tls`` that gives the weakest level is replaced)."""

    def acceptable(config: PostfixConfig, name: str) -> bool:
        effective = effective_level(config.main, name.split("_", 1)[0])
        if _level(levels, effective) < levels[weakest]:
            return False
        return bool(config.main.get(name, "").strip()) or effective != weakest

    return acceptable


def _number_at_least(weakest: int) -> Acceptable:
    """A number at least ``weakest`` (unset or not a number counts as 0)."""

    def acceptable(config: PostfixConfig, name: str) -> bool:
        try:
            return int(config.main.get(name, "0") or "0") >= weakest
        except ValueError:
            return False

    return acceptable


def _is_set(config: PostfixConfig, name: str) -> bool:
    """Any value (the operator's own choice stays)."""
    return bool(config.main.get(name, "").strip())


@dataclass(frozen=True)
class MainSetting:
    """One main.cf setting of the policy: ``wanted`` is written when the value in force
    is not ``acceptable``; ``{cache}`` in it is the session cache's map type."""

    name: str
    wanted: str
    acceptable: Acceptable

    def value(self, config: PostfixConfig) -> str:
        """The value to write for ``config``."""
        if "{cache}" not in self.wanted:
            return self.wanted
        return self.wanted.replace("{cache}", _cache_type(config.map_types))


MAIN_POLICY: tuple[MainSetting, ...] = (
    MainSetting("smtpd_tls_security_level", "may", _at_least(SMTPD_LEVELS, "may")),
    MainSetting("smtp_tls_security_level", "may", _at_least(SMTP_LEVELS, "may")),
    MainSetting("smtpd_tls_session_cache_database", "{cache}:${data_directory}/smtpd_scache",
                _is_set),
    MainSetting("smtp_tls_session_cache_database", "{cache}:${data_directory}/smtp_scache",
                _is_set),
    MainSetting("smtpd_tls_loglevel", "1", _number_at_least(1)),
)


def _plan_main(config: PostfixConfig, files: CertificateFiles, plan: TLSPlan) -> None:
    wanted = _cert_wanted(config, files, plan.notes)
    for setting in MAIN_POLICY:
        if not setting.acceptable(config, setting.name):
            wanted[setting.name] = setting.value(config)
    plan.main.update(_changed(config, wanted))


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
        smtp = config.services_on_port(constants.SMTP_PORT)
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
        for setting in SUBMISSION_HARDENING:
            value, _ = config.in_force(service, setting.name)
            if not setting.strict(value):
                wanted.append((setting.name, setting.wanted(config, value)))
        wanted.extend((k, v) for k, v in SUBMISSION_DEFAULTS if k not in current)
        broken = options.broken_sasl.get(service.key, "")
        has_backend = sasl_backend(config, service) and not broken
        if options.sasl != "none" and not has_backend and options.dovecot_sasl_path:
            wanted.extend(
                [
                    ("smtpd_sasl_auth_enable", "yes"),
                    ("smtpd_sasl_type", DOVECOT_SASL_TYPE),
                    ("smtpd_sasl_path", options.dovecot_sasl_path),
                ]
            )
            has_backend = True
            if broken:
                before = config.in_force(service, "smtpd_sasl_type")[0] or "cyrus"
                plan.notes.append(
                    f"master.cf service {service.key} (port {port}): replaced its SASL backend "
                    f"(smtpd_sasl_type={before}), which cannot work ({broken}), with Dovecot's "
                    "auth socket; certbot rollback puts the previous setting back"
                )
        if not has_backend:
            why = f"a SASL backend that cannot work ({broken})" if broken else "no SASL backend"
            plan.warnings.append(
                f"master.cf service {service.name} (port {port}) has {why}, so nobody "
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
        _plan_submission_service(config, plan, constants.SUBMISSION_PORT, "submission", False,
                                 options)
    if options.smtps:
        _plan_submission_service(config, plan, constants.SMTPS_PORT, "submissions", True, options)
    # An operator's choice the plugin does not silently undo, but must not hide.
    plan.warnings += submission_wrappermode(config)
    return plan


def submission_wrappermode(config: PostfixConfig) -> list[str]:
    """One sentence per port-587 service that has implicit TLS (smtpd_tls_wrappermode=yes):
    mail clients speak STARTTLS on 587 (RFC 6409) and cannot connect to it."""
    problems = []
    for service in config.services_on_port(constants.SUBMISSION_PORT):
        if is_yes(service_setting(config, service, "smtpd_tls_wrappermode") or "no"):
            source = setting_source(config, service, "smtpd_tls_wrappermode")
            fix = (f"postconf -PX {service.key}/smtpd_tls_wrappermode"
                   if "smtpd_tls_wrappermode" in service.overrides
                   else f"-o smtpd_tls_wrappermode=no on {service.key}")
            problems.append(
                f"master.cf service {service.name} (port 587) has {source}: implicit TLS "
                "belongs on port 465 (submissions); mail clients speak STARTTLS on 587 "
                f"(RFC 6409) and fail against it; fix: {fix}, then postfix reload"
            )
    return problems


def record_applied(state: State, config: PostfixConfig, plan: TLSPlan) -> None:
    """Remember what Postfix had before the plugin first changed a setting, and what
    the plugin set, so that undeploying the last lineage can put it back."""
    for name, value in plan.main.items():
        state.baseline_main.setdefault(name, config.explicit.get(name))
        state.applied_main[name] = value
    services_by_key = {s.key: s for s in config.services}
    for service in plan.new_services:
        if service.key not in state.added_services:
            state.added_services.append(service.key)
    for param in plan.service_params:
        key = f"{param.service}/{param.param}"
        existing = services_by_key.get(param.service)
        state.baseline_params.setdefault(
            key, existing.overrides.get(param.param) if existing else None
        )
        state.applied_params[key] = param.value


def restore_plan(config: PostfixConfig, state: State) -> TLSPlan:
    """The last lineage goes: the TLS settings Postfix had before the plugin's first
    deploy, or a refusal naming the setting the operator changed since (or the
    submission service that would be left authenticating through a socket that goes)."""
    plan = TLSPlan()
    explicit = config.explicit
    for name, before in sorted(state.baseline_main.items()):
        current = explicit.get(name)
        applied = state.applied_main.get(name)
        if current == before or (current or "") == (before or ""):
            continue
        if applied is not None and (current or "") != applied:
            raise errors.PluginError(
                f"main.cf sets {name} = {current or '(unset)'}, which is neither what "
                f"certbot-postfix-tls set ({applied or '(empty)'}) nor what it was before "
                f"({before or '(unset)'}): nothing was changed; set it back, or keep the "
                "lineage deployed."
            )
        if before is None:
            plan.main_remove.append(name)
        else:
            plan.main[name] = before
    _refuse_missing_files(config, plan)
    services_by_key = {s.key: s for s in config.services}
    for key, before in sorted(state.baseline_params.items()):
        service_key, _, param = key.rpartition("/")
        if service_key in state.added_services or service_key not in services_by_key:
            continue
        current = services_by_key[service_key].overrides.get(param)
        applied = state.applied_params.get(key)
        if current == before:
            continue
        if applied is not None and current != applied:
            raise errors.PluginError(
                f"master.cf service {service_key} sets -o {param}={current or '(unset)'}, "
                f"which is neither what certbot-postfix-tls set ({applied}) nor what it was "
                f"before ({before or '(unset)'}): nothing was changed; set it back, or keep "
                "the lineage deployed."
            )
        if before is None:
            plan.params_remove.append(key)
        else:
            plan.service_params.append(ServiceParam(service_key, param, before))
    for key in state.added_services:
        if key in services_by_key:
            _remove_added_service(services_by_key[key], state, plan)
    _refuse_dangling_sasl(config, plan, state)
    plan.notes.append("restored the TLS settings Postfix had before certbot-postfix-tls")
    return plan


def _remove_added_service(service: MasterService, state: State, plan: TLSPlan) -> None:
    """A service the plugin added goes, unless the operator gave it -o lines of their
    own since (or changed one of the plugin's): then it stays with those, and only the
    plugin's own -o lines (still at the values it set) go."""
    overrides = service.overrides
    own = sorted(param for param, value in overrides.items()
                 if state.applied_params.get(f"{service.key}/{param}") == value)
    theirs = sorted(set(overrides) - set(own))
    if not theirs:
        plan.services_remove.append(service.key)
        return
    plan.params_remove += [f"{service.key}/{param}" for param in own]
    plan.notes.append(
        f"kept master.cf service {service.key}, which certbot-postfix-tls added, for your "
        f"-o lines ({', '.join(theirs)}); removed only its own ({', '.join(own) or 'none'}). "
        f"postconf -MX {service.key} removes the service"
    )


def _refuse_missing_files(config: PostfixConfig, plan: TLSPlan) -> None:
    """The certificate and key files the restored main.cf names must exist: Postfix
    would answer STARTTLS with "454 TLS not available" (and 465 not at all)."""
    for name in sorted(set(plan.main) & set(RESTORED_FILE_PARAMS)):
        for path in split_list(plan.main[name]):
            expanded = _expand(path, config)
            if expanded.startswith("/") and not os.path.exists(expanded):
                raise errors.PluginError(
                    f"Undeploying the last lineage would give Postfix back {name} = "
                    f"{plan.main[name]} (its value before certbot-postfix-tls), but "
                    f"{expanded} does not exist, so Postfix could not offer TLS: nothing was "
                    "changed; create that file (Debian's snakeoil pair: make-ssl-cert "
                    "generate-default-snakeoil), or keep the lineage deployed."
                )


def _expand(value: str, config: PostfixConfig) -> str:
    """``$name`` and ``${name}`` replaced by main.cf's values (what postconf would)."""
    return re.sub(r"\$\{?([A-Za-z0-9_]+)\}?",
                  lambda m: config.main.get(m.group(1), m.group(0)), value)


def _refuse_dangling_sasl(config: PostfixConfig, plan: TLSPlan, state: State) -> None:
    """Never leave smtpd pointing at the Dovecot socket the plugin's file declared
    once that file is gone: smtpd would die ("no SASL authentication mechanisms")."""
    if not state.sasl_listener or not uses_dovecot_socket(config):
        return
    removing = set(plan.params_remove) | {
        f"{p.service}/{p.param}" for p in plan.service_params
    }
    for service in config.services_on_port(constants.SUBMISSION_PORT) + config.services_on_port(
        constants.SMTPS_PORT
    ):
        if service.key in plan.services_remove:
            continue
        if service.overrides.get("smtpd_sasl_type") == DOVECOT_SASL_TYPE and (
            f"{service.key}/smtpd_sasl_type" not in removing
        ):
            raise errors.PluginError(
                f"master.cf service {service.name} authenticates through Dovecot's socket "
                f"{state.sasl_listener}, which only the plugin's Dovecot file declares: "
                "declare that unix_listener in Dovecot's own configuration (or remove "
                "smtpd_sasl_type=dovecot from the service), then undeploy again."
            )
