"""The certificates: files and keys the daemons name, the chain each port serves,
certificates renewed but never loaded, and expiry."""

from __future__ import annotations

import functools
import os
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certbot_postfix_tls._internal import certs, expiry, services, tls_client, verify
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dialogues import Handshake
from certbot_postfix_tls._internal.doctor.context import Context, Probe, is_root, ports_phrase
from certbot_postfix_tls._internal.doctor.logs import log_phrase, log_says
from certbot_postfix_tls._internal.doctor.settings import (
    CertSetting,
    all_cert_settings,
    cert_settings,
    install_fix,
    lineage_of,
)
from certbot_postfix_tls._internal.findings import OK, Finding
from certbot_postfix_tls._internal.tls_client import VerifyError

_PEM_KEY = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----\r?\n.+?\r?\n-----END \1PRIVATE KEY-----", re.DOTALL)
# Probe failures a broken certificate or key file explains.
_FAILED_KINDS = ("starttls-refused", "tls", "closed")


def read_file(path: str) -> bytes:
    """A file's bytes (OSError when it cannot be read)."""
    with open(path, "rb") as handle:
        return handle.read()


def _certificates(path: str) -> list[x509.Certificate]:
    """The certificates in a PEM file; [] when it cannot be read or holds none."""
    try:
        return certs.load_pem_chain(read_file(path))
    except (OSError, ValueError):
        return []


def leaf_of(path: str) -> Optional[x509.Certificate]:
    """The first certificate of a PEM file; None when it cannot be read or holds none."""
    found = _certificates(path)
    return found[0] if found else None


def load_der(der: bytes) -> Optional[x509.Certificate]:
    """A served certificate, None when it cannot be parsed."""
    try:
        return certs.load_der(der)
    except ValueError:
        return None


def day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def serving_setting(context: Context, probe: Probe) -> Optional[CertSetting]:
    """The setting whose file holds the certificate the port served (by fingerprint
    when readable; else the one pointing at a cert.pem; else the first)."""
    settings = cert_settings(context, probe.endpoint)
    if probe.shake is not None:
        for setting in settings:
            found = _certificates(setting.path)
            if found and found[0].public_bytes(serialization.Encoding.DER) \
                    == probe.shake.leaf_der:
                return setting
    for setting in settings:
        if os.path.basename(setting.path) == "cert.pem":
            return setting
    return settings[0] if settings else None


# --- certificate and key files -----------------------------------------------------------


def _file_problem(setting: CertSetting) -> tuple[str, str]:
    """(which setting: cert, key or pair; what is wrong) with a certificate and its key,
    as the daemon would find it; ("", "") when nothing is."""
    def unreadable(path: str, exc: OSError) -> str:
        if isinstance(exc, FileNotFoundError):
            return f"{path} does not exist"
        return f"{path} cannot be read ({exc.strerror or exc})"

    try:
        data = read_file(setting.path)
    except OSError as exc:
        return "cert", unreadable(setting.path, exc)
    try:
        chain = certs.load_pem_chain(data)
    except ValueError:
        return "cert", f"{setting.path} holds no PEM certificate"
    key_data = data
    if setting.key_path != setting.path:
        try:
            key_data = read_file(setting.key_path)
        except OSError as exc:
            return "key", unreadable(setting.key_path, exc)
    blocks = [m.group(0) for m in _PEM_KEY.finditer(key_data)]
    if not blocks:
        return "key", f"{setting.key_path} holds no private key"
    try:
        key = serialization.load_pem_private_key(blocks[0], password=None)
    except (ValueError, TypeError):
        return "key", f"{setting.key_path} holds no unencrypted private key the daemon can load"
    if certs.public_der(key) != certs.public_der(chain[0]):
        if setting.key_path == setting.path:
            return "cert", f"the private key in {setting.path} does not match its certificate"
        return "pair", "the private key does not match the certificate"
    return "", ""


def _pair_fix(context: Context, setting: CertSetting) -> str:
    lineage = lineage_of(context, setting.path) or lineage_of(context, setting.key_path)
    if lineage is None:
        return (f"point {setting.name}{' and ' + setting.key_name if setting.key_name else ''} "
                f"at a certificate and its own key, then {setting.reload}")
    name, live = lineage
    if setting.name == "smtpd_tls_chain_files":
        return (f"{install_fix(context).replace('NAME', name)} (it rebuilds the key+chain file "
                f"from live/{name} after checking that they match)")
    pair = [(setting.name, os.path.join(live, "fullchain.pem"))]
    if setting.key_name:
        pair.append((setting.key_name, os.path.join(live, "privkey.pem")))
    fix = f"{setting.assign(pair)}, then {setting.reload}"
    if setting.service == Postfix.name:
        fix += f" (or {install_fix(context).replace('NAME', name)})"
    return fix


def file_checks(context: Context) -> list[Finding]:
    """Every certificate and key file named: readable, a PEM certificate, an
    unencrypted key, and the key matching the certificate (root only)."""
    if not is_root():
        return [Finding("certificate-files", "OK",
                        "skipped: the certificate and key files Postfix and Dovecot load are "
                        "readable by root only; run doctor as root to check them")]
    checks = []
    for setting in dict.fromkeys(all_cert_settings(context)):
        which, problem = _file_problem(setting)
        if not problem:
            continue
        failed = [p for p in context.probes if p.endpoint.service == setting.service
                  and p.error is not None and p.error.kind in _FAILED_KINDS
                  and setting in cert_settings(context, p.endpoint)]
        seen = ""
        if failed:
            detail = str(failed[0].error).rstrip(".")
            where = tls_client.where_of(failed[0].endpoint)
            seen = f"; {ports_phrase(failed)}: {detail.replace(where + ' ', '')}"
        cause = log_says(context, setting.service) if failed else ""
        checks.append(Finding(
            "certificate-files", "CRITICAL",
            f"{setting.describe(which)}: {problem}{seen}"
            f"{log_phrase(setting.service, cause)}"
            f"; fix: {_pair_fix(context, setting)}"))
    if not checks:
        checks.append(Finding("certificate-files", "OK",
                              "every certificate and key file Postfix and Dovecot name exists "
                              "and each key matches its certificate"))
    return checks


# --- chain -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _trusted_subjects() -> frozenset[bytes]:
    """Subjects of the system's trust anchors (a leaf issued by one needs no chain)."""
    paths = ssl.get_default_verify_paths()
    for bundle in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if bundle and os.path.isfile(bundle):
            return frozenset(c.subject.public_bytes() for c in _certificates(bundle))
    return frozenset()


def chain_complete(shake: Handshake) -> bool:
    """Whether the served chain lets a client reach a trust anchor: intermediates sent,
    or a self-issued leaf, or a leaf issued directly by a root the system trusts."""
    if any(der != shake.leaf_der for der in shake.chain_der[1:]):
        return True
    leaf = load_der(shake.leaf_der)
    if leaf is None:
        return True
    return leaf.issuer == leaf.subject or leaf.issuer.public_bytes() in _trusted_subjects()


def _issuer(der: bytes) -> str:
    leaf = load_der(der)
    if leaf is None:
        return "its issuer"
    names = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else leaf.issuer.rfc4514_string()


def _fullchain_fix(context: Context, setting: CertSetting) -> str:
    lineage = lineage_of(context, setting.path)
    install = (f" (or let {install_fix(context)} manage it)"
               if lineage and setting.service == Postfix.name else "")
    if setting.name == "smtpd_tls_chain_files":
        return (f"put the intermediate certificates after the certificate in {setting.path} "
                f"(key, certificate, intermediates), then {setting.reload}{install}")
    sibling = os.path.join(os.path.dirname(setting.path), "fullchain.pem")
    if os.path.basename(setting.path) == "cert.pem" and (lineage or os.path.exists(sibling)):
        return f"{setting.assign([(setting.name, sibling)])}, then {setting.reload}{install}"
    return (f"append the intermediate certificates to {setting.path} (or point "
            f"{setting.name} at the CA's full-chain file), then {setting.reload}{install}")


def chain_checks(context: Context) -> list[Finding]:
    """Ports that serve a certificate without its intermediates, by deciding setting."""
    probes = context.probes
    groups: dict[Optional[CertSetting], list[Probe]] = {}
    for item in probes:
        if item.shake is not None and not chain_complete(item.shake):
            groups.setdefault(serving_setting(context, item), []).append(item)
    checks = []
    for setting, members in groups.items():
        issuer = _issuer(members[0].shake.leaf_der) if members[0].shake else "its issuer"
        ports = ports_phrase(members)
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
            f"serve{'s' if len(members) == 1 else ''}; fix: {_fullchain_fix(context, setting)}"))
    if not checks and any(p.shake for p in probes):
        checks.append(Finding("chain", "OK", "every TLS port serves its intermediate certificates"))
    return checks


# --- renewed but never loaded --------------------------------------------------------------


@dataclass(frozen=True)
class Newest:
    """The newest certificate of a lineage: fingerprint, expiry, and its file."""

    sha256: str
    not_after: datetime
    path: str


def newest(context: Context, setting: CertSetting) -> Optional[Newest]:
    """The newest certificate of the lineage a setting points into; None when there is
    none, or this user cannot read it (and the plugin recorded nothing)."""
    lineage = lineage_of(context, setting.path)
    if lineage is None:
        return None
    name, live = lineage
    deployed = context.state.lineages.get(name)
    if deployed is not None:  # readable, or the fingerprints recorded at the last deploy
        try:
            expected = services.expected_cert(deployed)
        except VerifyError:
            return None
        return Newest(expected.leaf_sha256, expected.not_after, deployed.fullchain_path)
    path = os.path.join(live, "cert.pem")
    leaf = leaf_of(path)
    return Newest(certs.sha256_der(leaf), certs.not_after(leaf), path) if leaf else None


def stale_checks(context: Context) -> list[Finding]:
    """Ports serving an older certificate than the newest of its lineage."""
    probes = context.probes
    checks = []
    skipped = False
    for item in probes:
        if item.shake is None:
            continue
        setting = serving_setting(context, item)
        if setting is None or lineage_of(context, setting.path) is None:
            continue
        latest = newest(context, setting)
        served = load_der(item.shake.leaf_der)
        if latest is None or served is None:
            skipped = skipped or latest is None
            continue
        served_end = certs.not_after(served)
        if latest.sha256 == certs.sha256_der(served) or served_end >= latest.not_after:
            continue
        configured = leaf_of(setting.path)
        if configured is not None and certs.sha256_der(configured) == certs.sha256_der(served):
            # The file itself is old (archive/NAME/certN.pem): point at live/.
            if setting.name == "smtpd_tls_chain_files":
                fix = install_fix(context)
            else:
                live = os.path.join(os.path.dirname(latest.path), "fullchain.pem")
                fix = f"{setting.assign([(setting.name, live)])}, then {setting.reload}"
        elif configured is not None:
            fix = f"{setting.reload} (the configured file already holds the newest)"
        else:
            fix = setting.reload
        checks.append(Finding(
            "stale-certificate", "CRITICAL",
            f"{item.where} serves a certificate that expires {day(served_end)}, older than "
            f"the newest of its lineage ({latest.path}, expires {day(latest.not_after)}): "
            f"renewed but never loaded; fix: {fix}"))
    if skipped and not checks:
        checks.append(Finding("stale-certificate", "OK",
                              "skipped: the lineages' newest certificates are readable by root "
                              "only; run doctor as root to compare them with what is served"))
    elif not checks and any(p.shake for p in probes):
        checks.append(Finding("stale-certificate", "OK",
                              "no port serves an older certificate than its lineage's newest"))
    return checks


# --- RFC 5280 ----------------------------------------------------------------------------


def rfc5280_checks(context: Context) -> list[Finding]:
    """Certificates, served or named by a setting, that break RFC 5280 in a way clients
    may refuse (a serial number that is not positive): one WARNING naming the file or
    the ports, never a library warning on stderr."""
    checks: list[Finding] = []
    reported: set[str] = set()
    for setting in dict.fromkeys(all_cert_settings(context)):
        leaf = leaf_of(setting.path)
        problem = certs.rfc5280_problem(leaf) if leaf is not None else None
        if leaf is None or problem is None or certs.sha256_der(leaf) in reported:
            continue
        reported.add(certs.sha256_der(leaf))
        checks.append(Finding("rfc5280", "WARNING",
                              f"the certificate in {setting.path} ({setting.describe()}): "
                              f"{problem}; fix: have it reissued by its CA, then "
                              f"{setting.reload}"))
    groups: dict[bytes, list[Probe]] = {}
    for item in context.probes:
        if item.shake is not None:
            groups.setdefault(item.shake.leaf_der, []).append(item)
    for der, members in groups.items():
        leaf = load_der(der)
        problem = certs.rfc5280_problem(leaf) if leaf is not None else None
        if problem is None or certs.sha256_hex(der) in reported:
            continue
        reported.add(certs.sha256_hex(der))
        checks.append(Finding("rfc5280", "WARNING",
                              f"{ports_phrase(members)} serve{'s' if len(members) == 1 else ''} "
                              f"{verify.describe_der(der)}: {problem}; fix: have it reissued "
                              "by its CA and serve that"))
    return checks


# --- expiry ------------------------------------------------------------------------------


def expiry_checks(context: Context) -> list[Finding]:
    """Served certificates expired or about to (CRITICAL), or past the point where certbot
    should have renewed them (WARNING): ``expiry.judge``, relative to each lifetime."""
    groups: dict[bytes, list[Probe]] = {}
    for item in context.probes:
        if item.shake is not None:
            groups.setdefault(item.shake.leaf_der, []).append(item)
    now = datetime.now(timezone.utc)
    checks = []
    for der, members in groups.items():
        leaf = load_der(der)
        if leaf is None:
            continue
        end = certs.not_after(leaf)
        judged = expiry.judge(end, certs.not_before(leaf), now)
        if judged.status == OK:
            continue
        setting = serving_setting(context, members[0])
        lineage = lineage_of(context, setting.path) if setting else None
        if lineage is not None:
            fix = (f"certbot renew --cert-name {lineage[0]}, then "
                   f"{setting.reload if setting else 'reload'} (or let the renewal hooks of "
                   f"{install_fix(context).replace('NAME', lineage[0])} reload)")
        elif setting is not None:
            fix = f"put a current certificate in {setting.path}, then {setting.reload}"
        else:
            fix = "install a current certificate"
        what = verify.describe_der(der)
        serve = f"{ports_phrase(members)} serve{'s' if len(members) == 1 else ''} {what}"
        if judged.expired:
            checks.append(Finding("expiry", "CRITICAL",
                                  f"{serve}, which expired {day(end)} "
                                  f"({judged.reason()}); fix: {fix}"))
        else:
            checks.append(Finding("expiry", judged.status,
                                  f"{serve}, which expires {day(end)} ({judged.reason()}); "
                                  f"fix: {fix}"))
    if not checks and groups:
        checks.append(Finding("expiry", "OK",
                              "every served certificate has more than 14/90 of its lifetime "
                              "left (14 days of 90, 25 hours of 160): none is overdue for "
                              "renewal"))
    return checks
