"""The lab's certificates pass the strict verification Python 3.13 does by default.

Python 3.13 (Debian 13) adds VERIFY_X509_STRICT to ``ssl.create_default_context()``, and
urllib3 (certbot's requests) sets it too: a CA without key identifiers makes certbot fail
to reach Pebble ("Missing Authority Key Identifier"). Checked here on any Python, by a
handshake in memory, so that a Debian 12 run catches what only Debian 13 would show.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import lab
from lab.dovecot import write_self_signed


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
