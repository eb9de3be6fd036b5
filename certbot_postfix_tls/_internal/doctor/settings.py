"""Which setting names which certificate and key file, where it is set, how to change
it, and which certbot lineage the file belongs to: what every fix sentence is made of."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import constants, daemons

# (certificate, key) parameter pairs of smtpd before smtpd_tls_chain_files (3.4).
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.tls_client import Endpoint

CERT_KEY_PARAMS = (
    ("smtpd_tls_cert_file", "smtpd_tls_key_file"),
    ("smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
    ("smtpd_tls_dcert_file", "smtpd_tls_dkey_file"),
)


@dataclass(frozen=True)
class CertSetting:
    """A setting that names a certificate (and its key) file, where it is set, and how
    to change it."""

    service: str  # the daemon's name: Postfix.name or Dovecot.name
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
        if self.service == Dovecot.name:
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
        return daemons.by_name(self.service).advice.reload


def dovecot_cert_names(imap: Dovecot) -> tuple[str, str]:
    """Dovecot's certificate and key setting names (2.4 renamed them)."""
    return (("ssl_server_cert_file", "ssl_server_key_file") if imap.uses_24_syntax
            else ("ssl_cert", "ssl_key"))


def postfix_cert_settings(context: Context, service: Optional[postfix_config.MasterService]
                          ) -> list[CertSetting]:
    """The server certificate settings in force for a master.cf service (main.cf's
    for ``None``): smtpd_tls_chain_files when set (3.4+), else the cert/key pairs."""
    config = context.config
    if config is None:
        return []

    def setting(name: str, path: str, key_name: str, key_path: str, override: bool
                ) -> CertSetting:
        key = service.key if override and service is not None else ""
        return CertSetting(Postfix.name, name, path, key_name, key_path, context.main_cf, key)

    chain, override = config.in_force(service, "smtpd_tls_chain_files")
    if chain.strip() and config.version >= (3, 4):
        return [setting("smtpd_tls_chain_files", path, "", path, override)
                for path in postfix_config.split_list(chain)]
    found = []
    for cert_name, key_name in CERT_KEY_PARAMS:
        cert, cert_override = config.in_force(service, cert_name)
        if not cert.strip():
            continue
        key, key_override = config.in_force(service, key_name)
        if cert_override and not key_override and not config.explicit.get(key_name):
            key = cert  # the key default, $smtpd_tls_cert_file, is the overridden file
        found.append(setting(cert_name, cert.strip(), key_name, (key or cert).strip(),
                             cert_override or key_override))
    return found


def dovecot_cert_settings(context: Context) -> list[CertSetting]:
    """Dovecot's top-level certificate and key (local_name blocks are SNI extras)."""
    imap = context.imap
    if imap is None:
        return []
    cert_name, key_name = dovecot_cert_names(imap)
    cert = context.imap_settings.get(cert_name, "").lstrip("<").strip()
    key = context.imap_settings.get(key_name, "").lstrip("<").strip()
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
    return [CertSetting(Dovecot.name, cert_name, cert, key_name, key or cert, source,
                        dovecot_23=not imap.uses_24_syntax, key_source=key_source)]


def cert_settings(context: Context, endpoint: Endpoint) -> list[CertSetting]:
    """The certificate settings in force for one probed endpoint."""
    if endpoint.service == Postfix.name:
        return postfix_cert_settings(context, context.services.get(endpoint))
    return dovecot_cert_settings(context)


def all_cert_settings(context: Context) -> list[CertSetting]:
    """main.cf's, every probed master.cf service's, and Dovecot's."""
    settings = postfix_cert_settings(context, None)
    for service in context.services.values():
        settings += postfix_cert_settings(context, service)
    return settings + dovecot_cert_settings(context)


def lineage_of(context: Context, path: str) -> Optional[tuple[str, str]]:
    """(name, live directory) of the certbot lineage a configured file belongs to:
    ``.../live/NAME/*``, ``.../archive/NAME/*``, or this plugin's own key+chain file."""
    parts = os.path.abspath(path).split(os.sep)
    if len(parts) >= 4 and parts[-3] in ("live", "archive"):
        return parts[-2], os.path.join(os.sep.join(parts[:-3]) or os.sep, "live", parts[-2])
    if len(parts) >= 5 and parts[-3] == constants.LINEAGES_DIR \
            and parts[-4] == constants.PLUGIN_DIR:
        deployed = context.state.lineages.get(parts[-2])
        if deployed is not None:
            return deployed.name, os.path.dirname(deployed.fullchain_path)
    return None


def cert_names(context: Context) -> list[str]:
    """The certbot lineages the configuration points at, else those certbot has."""
    names: list[str] = []
    settings = postfix_cert_settings(context, None) + dovecot_cert_settings(context)
    for service in {id(s): s for s in context.services.values()}.values():
        settings += postfix_cert_settings(context, service)
    for setting in settings:
        found = lineage_of(context, setting.path)
        if found and found[0] not in names:
            names.append(found[0])
    if not names:
        try:
            names = sorted(os.listdir(os.path.join(context.config_dir, "live")))
            names = [n for n in names if not n.startswith(".") and n != "README"]
        except OSError:
            pass
    return names


def install_fix(context: Context) -> str:
    """The ``certbot install`` command that lets the plugin manage the certificate."""
    names = cert_names(context)
    name = names[0] if len(names) == 1 else "NAME"
    return f"certbot install --installer postfix-tls --cert-name {name}"
