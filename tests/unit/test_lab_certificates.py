"""The lab's certificates pass the strict verification Python 3.13 does by default.

Python 3.13 (Debian 13) adds VERIFY_X509_STRICT to ``ssl.create_default_context()``, and
urllib3 (certbot's requests) sets it too: a CA without key identifiers makes certbot fail
to reach Pebble ("Missing Authority Key Identifier"). Checked here on any Python, by a
handshake in memory, so that a Debian 12 run catches what only Debian 13 would show; and,
where tools/debian13-chroot made a Debian 13 chroot (.ci/heavy does), by Debian 13's own
Python 3.13 with its default context.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import lab
import pytest
from conftest import REPO
from lab.dovecot import write_self_signed

# Run by the chroot's python3: connect, verify with the default context, say the version.
CLIENT = """
import socket, ssl, sys
ctx = ssl.create_default_context(cadata=sys.stdin.read())
assert ctx.verify_flags & ssl.VERIFY_X509_STRICT, "not a strict default context"
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        print(sys.version.split()[0], tls.version())
"""


def strict_handshake(ca: Path, cert: Path, key: Path, name: str) -> None:
    """A TLS handshake between two in-memory ends; the client verifies strictly."""
    client = ssl.create_default_context(cafile=str(ca))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert), str(key))
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_end = client.wrap_bio(client_in, client_out, server_hostname=name)
    server_end = server.wrap_bio(server_in, server_out, server_side=True)
    pending = {client_end, server_end}
    for _ in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.discard(end)
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            return
    raise AssertionError("the in-memory handshake did not finish")


def test_pebble_https_certificate_verifies_strictly(tmp_path: Path) -> None:
    ca, cert, key = lab._make_ca_and_server_cert(tmp_path)  # noqa: SLF001
    strict_handshake(ca, cert, key, "localhost")


def test_self_signed_stand_in_verifies_strictly(tmp_path: Path) -> None:
    cert, key = tmp_path / "dovecot.pem", tmp_path / "dovecot.key"
    write_self_signed(str(cert), str(key), "mail.example.org")
    strict_handshake(cert, cert, key, "mail.example.org")


@pytest.mark.tier2  # needs the Debian 13 chroot that .ci/heavy prepares
def test_debian13_python_accepts_the_pebble_ca(tmp_path: Path) -> None:
    check = subprocess.run([str(REPO / "tools" / "debian13-chroot"), "--check", "--suite",
                            "trixie"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        pytest.skip("no Debian 13 chroot: sh tools/debian13-chroot --suite trixie "
                    "(as .ci/heavy does)")
    ca, cert, key = lab._make_ca_and_server_cert(tmp_path)  # noqa: SLF001
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert), str(key))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass  # the client's verdict is what counts

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        proc = subprocess.run(["chroot", check.stdout.strip(), "python3", "-c", CLIENT,  # noqa: S607
                               str(port)], input=ca.read_text(), capture_output=True,
                              text=True, timeout=60, check=False)
        thread.join(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3.13"), proc.stdout
