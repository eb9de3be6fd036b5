"""A throwaway mail lab: Pebble, Postfix and Dovecot in a private namespace.

Used by ``certbot-postfix-tls demo`` and by the test suite. The calling
process moves itself into a new mount and network namespace: /etc and /var
become overlays whose writes land in a scratch directory, the mail spool and
daemon state directories are empty private mounts, and loopback is a private
interface. Everything started from here on (Pebble, Postfix, Dovecot,
certbot) sees default paths and standard ports, yet the machine's own
/etc/postfix, /etc/dovecot, /etc/letsencrypt and running mail services are
never touched.
"""

from __future__ import annotations

import ctypes
import datetime
import fcntl
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certbot_postfix_tls._internal import process

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18

# Directories a daemon in the lab writes to: each gets an empty private mount.
PRIVATE_STATE_DIRS = (
    "/var/spool/postfix",
    "/var/lib/postfix",
    "/var/lib/dovecot",
    "/var/lib/letsencrypt",
    "/var/log/letsencrypt",
    "/run",
)

LAB_HOSTNAME = "mail.example.org"
PEBBLE_PORT = 14000
PEBBLE_MANAGEMENT_PORT = 15000
HTTP01_PORT = 5002
# Let's Encrypt's shortlived profile: 160-hour certificates.
SHORTLIVED_SECONDS = 160 * 3600


class LabError(RuntimeError):
    """The lab could not be set up; the message says what is missing."""


_entered: Optional[Path] = None


def _libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise LabError(f"{name}{args!r} failed: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: Optional[str], flags: int, data: str = "") -> None:
    _libc_call(
        "mount",
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )


def _loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, req)[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def enter_private_namespace(scratch: Path) -> Path:
    """Move this process into private mount + network namespaces (idempotent).

    Returns the scratch directory holding the overlays' upper layers.
    """
    global _entered
    if _entered is not None:
        return _entered
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it makes private mount and network namespaces).")
    if sys.platform != "linux":
        raise LabError("the lab needs Linux namespaces.")
    scratch.mkdir(parents=True, exist_ok=True)
    _libc_call("unshare", _CLONE_NEWNS | _CLONE_NEWNET)
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    _loopback_up()
    for top in ("/etc", "/var"):
        upper = scratch / f"overlay{top.replace('/', '-')}-upper"
        work = scratch / f"overlay{top.replace('/', '-')}-work"
        upper.mkdir()
        work.mkdir()
        _mount("overlay", top, "overlay", 0, f"lowerdir={top},upperdir={upper},workdir={work}")
    for directory in PRIVATE_STATE_DIRS:
        private = scratch / ("state" + directory.replace("/", "-"))
        private.mkdir()
        os.makedirs(directory, exist_ok=True)
        # Same owner and mode as the real one: Postfix checks them at start.
        real = os.stat(directory)
        os.chown(private, real.st_uid, real.st_gid)
        os.chmod(private, real.st_mode & 0o7777)
        _mount(str(private), directory, None, _MS_BIND)
    os.makedirs("/run/lock", exist_ok=True)
    for path in {Path(__file__).resolve().parents[2], Path(sys.prefix).resolve()}:
        _let_others_traverse(path, scratch)
    _entered = scratch
    return scratch


def _let_others_traverse(path: Path, scratch: Path) -> None:
    """Overlay each ancestor of path that others may not traverse with one that they may.

    Tests run the checkout's venv as unprivileged users; a clone in a 0700 home
    (/root, /home/USER on Debian 12) would be closed to them. Only this namespace
    sees the added o+x: the machine's directories keep their modes.
    """
    for directory in [*reversed(path.parents), path]:
        real = os.stat(directory)
        if real.st_mode & 0o001:
            continue
        name = "traverse" + str(directory).replace("/", "-")
        upper, work = scratch / f"{name}-upper", scratch / f"{name}-work"
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        os.chown(upper, real.st_uid, real.st_gid)
        os.chmod(upper, (real.st_mode & 0o7777) | 0o001)
        _mount("overlay", str(directory), "overlay", 0,
               f"lowerdir={directory},upperdir={upper},workdir={work}")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Wait until something accepts connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise LabError(f"nothing listens on {host}:{port} after {timeout:.0f} s") from None
            time.sleep(0.1)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a daemon by pid and wait for it to go (SIGKILL after timeout)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_pid(pidfile: str) -> Optional[int]:
    try:
        return int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- certificates as a real CA makes them ------------------------------------


def as_issued(
    builder: x509.CertificateBuilder,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer_public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """Add the extensions every real CA puts on a certificate it issues.

    Subject and Authority Key Identifiers, key usage and basic constraints: Python
    3.13 (Debian 13) verifies with VERIFY_X509_STRICT, which refuses a chain without
    them ("Missing Authority Key Identifier"). A self-signed certificate passes its
    own public key as ``issuer_public_key``.
    """
    return (
        builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # An RSA leaf may also be used for RSA key transport (TLS 1.2 and older).
                key_encipherment=not ca and isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),
            critical=False,
        )
    )


# --- a throwaway CA for Pebble's own HTTPS endpoint ------------------------


def _make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certbot-postfix-tls lab CA")])
    ca_cert = as_issued(
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2)),
        ca_key.public_key(), ca_key.public_key(), ca=True,
    ).sign(ca_key, hashes.SHA256())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        as_issued(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2)),
            key.public_key(), ca_key.public_key(), ca=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@dataclass
class Pebble:
    """Debian's pebble ACME server on 127.0.0.1, with its own throwaway CA."""

    workdir: Path
    proc: Optional[subprocess.Popen[bytes]] = None
    ca_bundle: Path = field(init=False)
    _log: Optional[IO[bytes]] = None
    # Lifetime of the certificates it issues (certificateValidityPeriod, seconds; None:
    # pebble's default of five years), e.g. SHORTLIVED_SECONDS. A second Pebble beside
    # the session's needs other ports (``offset`` is added to each).
    validity_seconds: Optional[int] = None
    offset: int = 0

    @property
    def port(self) -> int:
        return PEBBLE_PORT + self.offset

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> None:
        binary = process.find_tool("pebble")
        if binary is None:
            raise LabError("pebble is not installed (apt-get install pebble).")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle, cert, key = _make_ca_and_server_cert(self.workdir)
        config = self.workdir / "pebble-config.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress":
                            f"127.0.0.1:{PEBBLE_MANAGEMENT_PORT + self.offset}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": HTTP01_PORT,
                        "tlsPort": 5001,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                        **({"certificateValidityPeriod": self.validity_seconds}
                           if self.validity_seconds else {}),
                    }
                }
            )
        )
        env = {
            **os.environ,
            "PEBBLE_VA_ALWAYS_VALID": "1",
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        self._log = open(self.workdir / "pebble.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603
            [binary, "-config", str(config)], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid)
            self.proc.wait()
        if self._log is not None:
            self._log.close()


# --- certbot -----------------------------------------------------------------


@dataclass
class Certbot:
    """Runs the real certbot against the lab's Pebble with private directories.

    ``python`` is the interpreter whose certbot to use: this one (the newest
    certbot from PyPI in the project's venv) or one whose site-packages hold
    Debian's python3-certbot.
    """

    pebble: Pebble
    base: Path
    python: str = sys.executable
    # The lab has no DNS but its own (tests/lab/dns.py, started by the DANE tests, which
    # deploy with --postfix-tls-dane auto): elsewhere every TLSA lookup would fail and hold
    # each renewal, so deploys opt out, visibly (the plugin prints that DANE is not
    # checked), through a certbot configuration file.
    dane: str = "ignore"

    @property
    def config_dir(self) -> Path:
        return self.base / "config"

    def cli_ini(self) -> Path:
        path = self.base / "cli.ini"
        if not path.exists():
            self.base.mkdir(parents=True, exist_ok=True)
            path.write_text(f"postfix-tls-dane = {self.dane}\n")
        return path

    def argv(self, *args: str) -> list[str]:
        return [
            self.python,
            "-c",
            "import sys; from certbot.main import main; sys.exit(main())",
            *args,
            "--config", str(self.cli_ini()),
            "--config-dir", str(self.config_dir),
            "--work-dir", str(self.base / "work"),
            "--logs-dir", str(self.base / "logs"),
            "--non-interactive",
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, "REQUESTS_CA_BUNDLE": str(self.pebble.ca_bundle)}

    def acme_args(self) -> list[str]:
        return [
            "--server", self.pebble.directory_url,
            "--agree-tos",
            "--register-unsafely-without-email",
            "--http-01-port", str(HTTP01_PORT),
        ]

    def run(
        self, *args: str, check: bool = True, env: Optional[dict[str, str]] = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(  # noqa: S603
            self.argv(*args), env={**self.env(), **(env or {})}, capture_output=True, text=True,
            timeout=300, check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(f"certbot {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def version(self) -> str:
        proc = subprocess.run(  # noqa: S603
            [self.python, "-c", "import certbot; print(certbot.__version__)"],
            capture_output=True, text=True, check=True,
        )
        return proc.stdout.strip()


# --- Postfix -------------------------------------------------------------------

def debian_stock_config() -> tuple[str, str]:
    """main.cf and master.cf as Debian's postinst writes them for an Internet Site."""
    share = Path("/usr/share/postfix")
    main_cf = (share / "main.cf.debian").read_text()
    if (share / "main.cf.tls").exists():
        main_cf += (share / "main.cf.tls").read_text()
    # Debian 13's main.cf.debian already sets some of these: drop them so postconf
    # does not warn about an "overriding earlier entry".
    ours = ("smtpd_relay_restrictions", "alias_maps", "alias_database", "mynetworks",
            "mailbox_size_limit", "recipient_delimiter")
    main_cf = "".join(line for line in main_cf.splitlines(keepends=True)
                      if line[:1] in "# \t" or line.split("=", 1)[0].strip() not in ours)
    main_cf += (
        "\nsmtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated"
        " defer_unauth_destination\n"
        "alias_maps = hash:/etc/aliases\nalias_database = hash:/etc/aliases\n"
        "mynetworks = 127.0.0.0/8\nmailbox_size_limit = 0\nrecipient_delimiter = +\n"
    )
    return main_cf, (share / "master.cf.dist").read_text()


@dataclass
class PostfixLab:
    """The default Postfix instance, inside the private namespace."""

    config_dir: str = "/etc/postfix"
    log_file: str = "/var/log/postfix.log"
    queue_directory: str = "/var/spool/postfix"

    def install_config(self, main_cf: str, master_cf: str) -> None:
        """Write main.cf/master.cf, pointed at loopback and logging to a file."""
        os.makedirs(self.config_dir, exist_ok=True)
        Path(self.config_dir, "main.cf").write_text(main_cf)
        Path(self.config_dir, "master.cf").write_text(master_cf)
        self.postconf(
            "-e",
            f"myhostname={LAB_HOSTNAME}",
            "inet_interfaces=127.0.0.1",
            "inet_protocols=ipv4",
            f"maillog_file={self.log_file}",
            "mydestination=$myhostname, localhost",
        )

    def postconf(self, *args: str) -> str:
        return process.run(["postconf", "-c", self.config_dir, *args], what="postconf").stdout

    def running(self) -> bool:
        return process.run(
            ["postfix", "-c", self.config_dir, "status"], what="postfix status", check=False
        ).returncode == 0

    def start(self) -> None:
        process.run(["postfix", "-c", self.config_dir, "start"], what="postfix start")
        wait_for_port(25)

    def master_pid(self) -> Optional[int]:
        # Read the pid file directly: a test may have broken main.cf on purpose.
        return read_pid(f"{self.queue_directory}/pid/master.pid")

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is not None:
            stop_pid(pid)

    def log(self) -> str:
        try:
            return Path(self.log_file).read_text(errors="replace")
        except OSError:
            return ""


def file_tree(directory: str) -> dict[str, bytes]:
    """Every file under a directory, by relative path (for byte-for-byte comparisons)."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = Path(path).read_bytes()
    return found
