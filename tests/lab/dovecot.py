"""A throwaway Dovecot for the tests and the demo, inside the lab's private namespace.

Only call this after ``lab.enter_private_namespace``: it rewrites /etc/dovecot and
starts ``dovecot`` on the default ports, which is harmless only there.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import lab
from certbot_postfix_tls._internal import process

PRISTINE_DIR = Path("/usr/share/dovecot")
DPKG_INFO = Path("/var/lib/dpkg/info")
# What Debian 12's postinst scripts install into /etc/dovecot (through ucf), used
# when the dpkg scripts cannot be read.
DEBIAN_CONFFILES = (
    "dovecot.conf",
    "dovecot-dict-auth.conf.ext",
    "dovecot-dict-sql.conf.ext",
    "dovecot-sql.conf.ext",
    "conf.d/10-auth.conf",
    "conf.d/10-director.conf",
    "conf.d/10-logging.conf",
    "conf.d/10-mail.conf",
    "conf.d/10-master.conf",
    "conf.d/10-ssl.conf",
    "conf.d/10-tcpwrapper.conf",
    "conf.d/15-lda.conf",
    "conf.d/15-mailboxes.conf",
    "conf.d/20-imap.conf",
    "conf.d/20-pop3.conf",
    "conf.d/90-acl.conf",
    "conf.d/90-plugin.conf",
    "conf.d/90-quota.conf",
    "conf.d/auth-checkpassword.conf.ext",
    "conf.d/auth-deny.conf.ext",
    "conf.d/auth-dict.conf.ext",
    "conf.d/auth-master.conf.ext",
    "conf.d/auth-passwdfile.conf.ext",
    "conf.d/auth-sql.conf.ext",
    "conf.d/auth-static.conf.ext",
    "conf.d/auth-system.conf.ext",
)
SNAKEOIL_CERT = "/etc/dovecot/private/dovecot.pem"
SNAKEOIL_KEY = "/etc/dovecot/private/dovecot.key"
LOOPBACK = "127.0.0.1"


def debian_conffiles() -> list[str]:
    """The files Debian's dovecot postinst scripts copy from /usr/share/dovecot to /etc."""
    found: list[str] = []
    for script in sorted(DPKG_INFO.glob("dovecot-*.postinst")):
        try:
            text = script.read_text()
        except OSError:
            continue
        for block in re.findall(r'^\s*CONFFILES="([^"]*)"', text, re.MULTILINE):
            found += [name for name in block.replace("\\", " ").split() if name not in found]
    return [name for name in found if (PRISTINE_DIR / name).is_file()] or [
        name for name in DEBIAN_CONFFILES if (PRISTINE_DIR / name).is_file()
    ]


def installed_version() -> tuple[int, ...]:
    """The installed Dovecot's version: 2.3 on Debian 12, 2.4 on Debian 13."""
    proc = process.run(["dovecot", "--version"], what="dovecot --version")
    return process.version_tuple(proc.stdout)


def cert_lines(cert: str, key: str) -> tuple[str, str]:
    """How 10-ssl.conf names a certificate and its key in the installed Dovecot's syntax
    (2.4 renamed the settings and reads plain paths, 2.3 reads ``<file``)."""
    if installed_version() >= (2, 4):
        return f"ssl_server_cert_file = {cert}", f"ssl_server_key_file = {key}"
    return f"ssl_cert = <{cert}", f"ssl_key = <{key}"


def write_self_signed(cert_path: str, key_path: str, name: str = "snakeoil.invalid") -> None:
    """A self-signed EC certificate and key (stand-in for Debian's snakeoil pair)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        lab.as_issued(
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30)),
            key.public_key(), key.public_key(), ca=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@dataclass
class DovecotLab:
    """Dovecot with Debian's stock configuration, on the private loopback."""

    config_dir: str = "/etc/dovecot"
    log_file: str = "/var/log/dovecot.log"
    listen: str = LOOPBACK
    # A second instance (the demo's, or a non-default --postfix-tls-dovecot-config)
    # needs its own runtime directory and ports: {"imap": 10143, "imaps": 10993, ...}.
    base_dir: Optional[str] = None
    ports: Optional[Mapping[str, int]] = None

    @property
    def imap_port(self) -> int:
        return (self.ports or {}).get("imap", 143)

    @property
    def config_file(self) -> str:
        return os.path.join(self.config_dir, "dovecot.conf")

    def install_config(self, snakeoil: bool = True) -> None:
        """Write Debian 12's pristine /etc/dovecot, pointed at loopback and a log file.

        ``snakeoil`` decides whether the certificate Debian's 10-ssl.conf refers to
        exists (without it Dovecot refuses to start: the case the plugin fixes by
        commenting that line out).
        Whatever the host's /etc/dovecot holds is replaced, so every test starts from
        the same stock files.
        """
        files = debian_conffiles()
        if "dovecot.conf" not in files:
            raise lab.LabError(
                f"{PRISTINE_DIR} holds no pristine dovecot.conf (apt-get install dovecot-core)."
            )
        shutil.rmtree(self.config_dir, ignore_errors=True)
        os.makedirs(os.path.join(self.config_dir, "conf.d"), mode=0o755)
        private = os.path.join(self.config_dir, "private")
        os.makedirs(private, mode=0o700)
        for name in files:
            shutil.copyfile(PRISTINE_DIR / name, os.path.join(self.config_dir, name))
        with open(self.config_file, "a") as handle:
            handle.write(self._lab_settings())
        snakeoil_cert, snakeoil_key = SNAKEOIL_CERT, SNAKEOIL_KEY
        if self.config_dir != "/etc/dovecot":  # 10-ssl.conf names /etc/dovecot/private
            ssl_conf = Path(self.config_dir, "conf.d", "10-ssl.conf")
            private_dir = f"{self.config_dir}/private/"
            ssl_conf.write_text(ssl_conf.read_text().replace("/etc/dovecot/private/", private_dir))
            snakeoil_cert = SNAKEOIL_CERT.replace("/etc/dovecot/private/", private_dir)
            snakeoil_key = SNAKEOIL_KEY.replace("/etc/dovecot/private/", private_dir)
        if snakeoil:
            write_self_signed(snakeoil_cert, snakeoil_key)

    def _lab_settings(self) -> str:
        lines = ["", "# certbot-postfix-tls lab", f"log_path = {self.log_file}",
                 f"listen = {self.listen}"]
        if self.base_dir:
            lines.append(f"base_dir = {self.base_dir}")
        for service, listeners in (("imap-login", ("imap", "imaps")),
                                   ("pop3-login", ("pop3", "pop3s"))):
            chosen = [name for name in listeners if self.ports and name in self.ports]
            if chosen:
                lines.append(f"service {service} {{")
                for name in chosen:
                    assert self.ports is not None
                    lines += [f"  inet_listener {name} {{", f"    port = {self.ports[name]}",
                              "  }"]
                lines.append("}")
        return "\n".join(lines) + "\n"

    def runtime_dir(self) -> str:
        # `doveconf -h base_dir` fails on 2.4 ("multiple settings matched").
        proc = process.run(["doveconf", "-c", self.config_file, "base_dir"],
                           what="doveconf base_dir", check=False)
        _, _, value = proc.stdout.partition("=")
        return value.strip() or "/run/dovecot"

    def master_pid(self) -> Optional[int]:
        return lab.read_pid(os.path.join(self.runtime_dir(), "master.pid"))

    def start(self) -> None:
        """Run ``dovecot`` (it daemonizes) and wait until IMAP answers."""
        binary = process.find_tool("dovecot")
        if binary is None:
            raise lab.LabError("dovecot is not installed (apt-get install dovecot-imapd).")
        # Not process.run: the daemonized master keeps inherited pipes open, so
        # reading them to EOF would hang; its start-up errors go to this file.
        with tempfile.TemporaryFile() as errors_out:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                [binary, "-c", self.config_file],
                stdin=subprocess.DEVNULL, stdout=errors_out, stderr=errors_out,
                timeout=60, check=False,
            )
            errors_out.seek(0)
            output = errors_out.read().decode(errors="replace")
        if proc.returncode != 0:
            raise lab.LabError(
                f"dovecot did not start with {self.config_file}: {process.last_line(output)}"
            )
        lab.wait_for_port(self.imap_port, self.listen)

    def stop(self) -> None:
        """Stop the master by pid and wait until its listeners are gone."""
        pid = self.master_pid()
        if pid is None:
            return
        lab.stop_pid(pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.listen, self.imap_port), timeout=0.5):
                    pass
            except OSError:
                return
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return Path(self.log_file).read_text(errors="replace")
        except OSError:
            return ""


# Where RHEL 8/9 and Fedora's dovecot package points ssl_cert and ssl_key.
RHEL_CERT = "/etc/pki/dovecot/certs/dovecot.pem"
RHEL_KEY = "/etc/pki/dovecot/private/dovecot.pem"


def rhel_ssl_conf(debian_text: str) -> str:
    """Debian's 10-ssl.conf turned into what RHEL 8/9 and Fedora install."""
    replaced = {
        "ssl = yes": "ssl = required",
        **dict(zip(cert_lines(SNAKEOIL_CERT, SNAKEOIL_KEY), cert_lines(RHEL_CERT, RHEL_KEY))),
    }
    if installed_version() < (2, 4):
        replaced["ssl_dh = </usr/share/dovecot/dh.pem"] = "#ssl_dh = </etc/dovecot/dh.pem"
    lines = []
    for line in debian_text.splitlines():
        lines.append(replaced.pop(line, line))
    assert not replaced, f"Debian's 10-ssl.conf changed: {replaced}"
    # RHEL's crypto-policies profile; Debian's OpenSSL does not know it (adaptation).
    lines.append("#ssl_cipher_list = PROFILE=SYSTEM")
    return "\n".join(lines) + "\n"
