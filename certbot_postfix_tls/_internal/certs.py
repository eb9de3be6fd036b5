"""Certificate material: find the lineage, check key and chain, build the combined file.

certbot swaps live/ symlinks one at a time, so for a moment live/privkey.pem
and live/fullchain.pem can belong to different renewals. Postfix is therefore
pointed at one file holding key + full chain, built here from the resolved
archive files after checking that the key matches the certificate, and put
in place with an atomic rename.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import secrets
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from certbot import errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning

from certbot_postfix_tls._internal import constants


@dataclass(frozen=True)
class Lineage:
    """A certificate as certbot gave it to the installer."""

    name: str
    key_path: str
    fullchain_path: str
    config_dir: str
    in_live: bool  # paths are config_dir/live/<name>/..., renewable by certbot

    @classmethod
    def from_paths(
        cls, domain: str, key_path: str, fullchain_path: Optional[str], config_dir: str
    ) -> Lineage:
        if not fullchain_path:
            raise errors.PluginError(
                f"No full chain was given for {domain}: Postfix must serve the intermediate "
                "certificates too, so pass --fullchain-path (never cert.pem alone)."
            )
        live = os.path.join(os.path.abspath(config_dir), "live")
        parent = os.path.dirname(os.path.abspath(fullchain_path))
        in_live = os.path.dirname(parent) == live
        name = os.path.basename(parent) if in_live else domain
        return cls(name, os.path.abspath(key_path), os.path.abspath(fullchain_path),
                   os.path.abspath(config_dir), in_live)

    @classmethod
    def from_live_dir(cls, live_dir: str, config_dir: str) -> Lineage:
        live_dir = os.path.abspath(live_dir)
        return cls(
            os.path.basename(live_dir),
            os.path.join(live_dir, "privkey.pem"),
            os.path.join(live_dir, "fullchain.pem"),
            os.path.abspath(config_dir),
            True,
        )

    @property
    def plugin_dir(self) -> str:
        """Where the plugin keeps this lineage's derived files."""
        return os.path.join(self.config_dir, constants.PLUGIN_DIR, constants.LINEAGES_DIR,
                            self.name)

    @property
    def chain_file(self) -> str:
        return os.path.join(self.plugin_dir, constants.CHAIN_FILE)


@dataclass(frozen=True)
class Material:
    """A matching key and full chain, read from the same renewal."""

    key_pem: bytes
    fullchain_pem: bytes
    leaf: x509.Certificate
    chain: list[x509.Certificate]

    @property
    def names(self) -> list[str]:
        try:
            san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            return []

    @property
    def key_type(self) -> str:
        """"rsa", "ecdsa" or another key type name: what pairs two lineages."""
        return key_type(self.leaf)

    @property
    def leaf_sha256(self) -> str:
        return sha256_der(self.leaf)

    @property
    def not_after(self) -> datetime.datetime:
        return not_after(self.leaf)

    def fingerprints(self) -> dict[str, Any]:
        """What verification compares, as plain data for the state file."""
        return {
            "leaf_sha256": self.leaf_sha256,
            "intermediates_sha256": [sha256_der(cert) for cert in self.chain],
            "names": self.names,
            "not_after": self.not_after.isoformat(),
            "not_before": not_before(self.leaf).isoformat(),
        }

    def combined(self) -> bytes:
        """Key first, then leaf and intermediates: the order smtpd_tls_chain_files wants."""
        key = self.key_pem if self.key_pem.endswith(b"\n") else self.key_pem + b"\n"
        return key + self.fullchain_pem


_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def load_pem_chain(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order (cryptography < 39 has no helper)."""
    with _quiet():
        certs = [x509.load_pem_x509_certificate(block) for block in _PEM_CERT.findall(data)]
    if not certs:
        raise ValueError("no PEM certificate found")
    return certs


def load_der(der: bytes) -> x509.Certificate:
    """A DER certificate (ValueError when it cannot be parsed)."""
    with _quiet():
        return x509.load_der_x509_certificate(der)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """cryptography warns on stderr about certificates that break RFC 5280 (a serial
    number that is not positive) and still parses them: doctor reports them as
    findings naming the file or port (``rfc5280_problem``) instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


def rfc5280_problem(cert: x509.Certificate) -> Optional[str]:
    """What RFC 5280 forbids in ``cert`` that clients may refuse it for; None if nothing."""
    with _quiet():  # cryptography warns when the serial number is read
        serial = cert.serial_number
    if serial <= 0:
        return (f"its serial number ({serial}) is not positive, which RFC 5280 "
                "forbids and strict clients (Go 1.23 and later) refuse")
    return None


def key_type(cert: x509.Certificate) -> str:
    """The certificate's key type: "rsa", "ecdsa", or the key class's name."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    return type(key).__name__.lower()


def not_after(cert: x509.Certificate) -> datetime.datetime:
    """Expiry as an aware UTC datetime, on old and new cryptography alike."""
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def not_before(cert: x509.Certificate) -> datetime.datetime:
    """Start of validity as an aware UTC datetime, on old and new cryptography alike."""
    value = getattr(cert, "not_valid_before_utc", None)
    if value is None:
        value = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_der(cert: x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER, the fingerprint verification compares."""
    return sha256_hex(cert.public_bytes(serialization.Encoding.DER))


def _read(path: str, what: str, domain: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise errors.PluginError(
            f"The {what} {path} does not exist: check the certificate name "
            f"(certbot certificates) for {domain}."
        ) from None
    except PermissionError:
        raise errors.PluginError(
            f"The {what} {path} is not readable by this user: run certbot as root."
        ) from None
    except OSError as exc:
        raise errors.PluginError(f"The {what} {path} cannot be read: {exc.strerror}.") from None


def public_der(key_or_cert: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a private key or a certificate (to match them)."""
    return bytes(key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ))


def load_material(lineage: Lineage) -> Material:
    """Read key and full chain (through resolved links) and check they belong together."""
    key_path = os.path.realpath(lineage.key_path)
    chain_path = os.path.realpath(lineage.fullchain_path)
    key_pem = _read(key_path, "private key", lineage.name)
    fullchain_pem = _read(chain_path, "certificate chain", lineage.name)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise errors.PluginError(
            f"The private key {lineage.key_path} is not an unencrypted PEM key: "
            "give the key certbot issued with the certificate."
        ) from None
    try:
        certs = load_pem_chain(fullchain_pem)
    except ValueError:
        raise errors.PluginError(
            f"The certificate chain {lineage.fullchain_path} holds no PEM certificate."
        ) from None
    if public_der(key) != public_der(certs[0]):
        raise errors.PluginError(
            f"The private key {lineage.key_path} does not match the certificate in "
            f"{lineage.fullchain_path}: nothing was changed; renew the lineage "
            f"(certbot renew --force-renewal --cert-name {lineage.name}) or give the matching key."
        )
    return Material(key_pem, fullchain_pem, certs[0], certs[1:])


def check_readable(lineage: Lineage) -> None:
    """Raise the error ``load_material`` would when the key or the chain cannot be read
    (a lineage whose archive/ is gone); reads no more than that."""
    _read(os.path.realpath(lineage.key_path), "private key", lineage.name)
    _read(os.path.realpath(lineage.fullchain_path), "certificate chain", lineage.name)


def current_bytes(path: str) -> Optional[bytes]:
    """A file's bytes (None: absent), never read through a symbolic link: what a write
    would replace, compared before writing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_atomic(
    path: str, data: bytes, mode: Optional[int] = 0o600,
    owner: Optional[tuple[int, int]] = None,
) -> bool:
    """The one atomic writer: ``data`` to ``path`` via a temp file + rename; False when
    the file was already exactly so (same bytes, mode and owner).

    ``mode`` None keeps an existing file's mode and owner (new files get 0644): for
    configuration files the plugin edits but does not own. The temp file is 0600 and
    ends in ``~`` while it is written (certbot skips such names in its hook
    directories), and gets its final mode only once complete.
    """
    try:
        # O_NOFOLLOW: a link planted where our file belongs is refused, not chmod-ed;
        # O_NONBLOCK: a FIFO planted there does not hang the read.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        existing: Optional[os.stat_result] = None
    else:
        with os.fdopen(fd, "rb") as handle:
            existing = os.fstat(handle.fileno())
            # Only a regular file with no other name is changed in place: a hard link
            # planted there must not pass our mode or owner on to its other name.
            in_place = stat.S_ISREG(existing.st_mode) and existing.st_nlink == 1
            if in_place and handle.read() == data:
                changed = False
                if mode is not None and stat.S_IMODE(existing.st_mode) != mode:
                    os.fchmod(handle.fileno(), mode)
                    changed = True
                if owner is not None and (existing.st_uid, existing.st_gid) != owner:
                    os.fchown(handle.fileno(), *owner)
                    changed = True
                return changed
            if not in_place:
                existing = None  # nothing of a planted file is kept
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if mode is None:
                final = stat.S_IMODE(existing.st_mode) if existing else 0o644
                keep = (existing.st_uid, existing.st_gid) if existing else None
            else:
                final, keep = mode, None
            target = owner or keep
            if target is not None:
                os.fchown(handle.fileno(), target[0], target[1])
            os.fchmod(handle.fileno(), final)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def create_temp(path: str, suffix: str = ".tmp~") -> tuple[int, str]:
    """A new, empty 0600 file beside ``path`` for a write renamed over it: a unique
    name opened O_EXCL|O_NOFOLLOW, so no FIFO, symlink or hard link planted in the
    directory (or a second writer) is ever written through. The name starts with a
    dot and ends in ``suffix`` (``~``: certbot skips such names in its hook
    directories; neither node_exporter nor Postfix reads them)."""
    directory, base = os.path.split(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def stale_temps(path: str, suffix: str = ".tmp~") -> list[str]:
    """Temporary files of writes to ``path`` that a kill cut short."""
    directory, base = os.path.split(path)
    pattern = re.compile(re.escape(f".{base}.") + r"[0-9a-f]{12}" + re.escape(suffix) + r".*\Z")
    try:
        entries = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, e) for e in entries if pattern.match(e))


