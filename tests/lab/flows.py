"""The end-to-end flows the lab tests share: issue, install, renew, and what is served.

One copy of each, imported by the tests/e2e modules (never from one another).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lab
from certbot_postfix_tls._internal import certs, dialogues, tls_client
from lab.dovecot import write_self_signed

HOST = lab.LAB_HOSTNAME  # Postfix's myhostname in the lab
OTHER = "mail.b.example"
# Every TLS port of the lab's stock Postfix and Dovecot: (protocol, port, tls).
PORTS = (("smtp", 25, "starttls"), ("smtp", 587, "starttls"),
         ("imap", 143, "starttls"), ("imap", 993, "implicit"))
# What Postfix and Dovecot log on a reload.
POSTFIX_RELOAD = "reload -- version"
DOVECOT_RELOAD = "SIGHUP received"


def leaf(certbot: lab.Certbot, name: str) -> bytes:
    """The DER of the lineage's current leaf certificate."""
    pem = (certbot.config_dir / "live" / name / "fullchain.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def served(protocol: str, port: int, tls: str, name: str | None) -> bytes:
    """The DER of the leaf that 127.0.0.1:port serves for SNI ``name``."""
    endpoint = tls_client.Endpoint("x", protocol, "127.0.0.1", port, tls, str(port))
    return dialogues.handshake(endpoint, name).leaf_der


def served_leaf(port: int, name: str, protocol: str = "smtp", tls: str = "starttls") -> bytes:
    """served() with SMTP STARTTLS as the default."""
    return served(protocol, port, tls, name)


def assert_serving(certbot: lab.Certbot, names: list[str], default: str) -> None:
    """Every lab port serves each name's lineage, and ``default``'s without SNI."""
    for protocol, port, tls in PORTS:
        for name in names:
            assert served(protocol, port, tls, name) == leaf(certbot, name), (port, name)
        assert served(protocol, port, tls, None) == leaf(certbot, default), (port, "no SNI")


def issue(certbot: lab.Certbot, *names: str) -> None:
    """One lineage per name from Pebble (standalone)."""
    for name in names:
        certbot.run("certonly", "-a", "standalone", "-d", name, *certbot.acme_args())


def install(certbot: lab.Certbot, name: str, *extra: str) -> None:
    """certbot install -i postfix-tls for one lineage."""
    certbot.run("install", "-i", "postfix-tls", "--cert-name", name, *extra)


def renew(certbot: lab.Certbot, *extra: str) -> subprocess.CompletedProcess[str]:
    """A forced renewal of every lineage, hooks included."""
    return certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                       *certbot.acme_args(), *extra)


def run_cli(certbot: lab.Certbot, *args: str) -> subprocess.CompletedProcess[str]:
    """certbot-postfix-tls with certbot's config dir, not checked."""
    return subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir),
         *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def count(text: str, needle: str) -> int:
    """How often needle occurs in a log."""
    return text.count(needle)


def wait_for_count(read: Callable[[], str], needle: str, expected: int, timeout: float = 5) -> int:
    """Logs are written asynchronously (postlogd): wait a moment for them to settle."""
    deadline = time.monotonic() + timeout
    while True:
        found = count(read(), needle)
        if found >= expected or time.monotonic() > deadline:
            time.sleep(0.5)  # and make sure no extra reload follows
            return count(read(), needle)
        time.sleep(0.1)


SNAKEOIL = ("/etc/ssl/certs/ssl-cert-snakeoil.pem", "/etc/ssl/private/ssl-cert-snakeoil.key")


@contextlib.contextmanager
def without_snakeoil() -> Iterator[None]:
    """Debian's snakeoil pair absent (moved aside inside the lab's /etc overlay, put back
    after): a machine with ssl-cert has it, and a test needs it gone."""
    moved = [path for path in SNAKEOIL if os.path.exists(path)]
    for path in moved:
        os.rename(path, path + ".lab-aside")
    try:
        yield
    finally:
        for path in moved:
            os.rename(path + ".lab-aside", path)


@contextlib.contextmanager
def debian_snakeoil() -> Iterator[None]:
    """Debian's snakeoil pair, which its stock main.cf names (package ssl-cert makes it):
    the last undeploy gives Postfix those settings back and refuses when the files are
    gone. Removed again when made here (other tests need it absent)."""
    made = [path for path in SNAKEOIL if not os.path.exists(path)]
    if made:
        write_self_signed(*SNAKEOIL, "localhost")
    try:
        yield
    finally:
        for path in made:
            Path(path).unlink(missing_ok=True)
