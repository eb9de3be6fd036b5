"""Tests for certbot_postfix_tls.verify: real TLS against in-process fake mail servers."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import lab
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbot_postfix_tls._internal import dialogues, findings, verify
from certbot_postfix_tls._internal.tls_client import Endpoint, VerifyError
from certbot_postfix_tls._internal.verify import ExpectedCert

NAME = "mail.example.com"
NOW = datetime.now(timezone.utc)


# --- PKI --------------------------------------------------------------------------------


@dataclass
class Pki:
    tmp: Path
    good: trustme.LeafCert
    other: trustme.LeafCert
    soon: trustme.LeafCert
    expired: trustme.LeafCert
    short: trustme.LeafCert
    rsa: trustme.LeafCert  # an RSA leaf for the same name as ``good`` (ECDSA)

    def fullchain(self, leaf: trustme.LeafCert) -> str:
        path = self.tmp / f"fullchain-{id(leaf)}.pem"
        path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return str(path)

    def expected(self, leaf: trustme.LeafCert) -> ExpectedCert:
        return ExpectedCert.from_fullchain(self.fullchain(leaf))


def issue_dated(
    inter: trustme.CA, chain: list[bytes], name: str, not_before: datetime, not_after: datetime,
    rsa_key: bool = False, also: tuple[str, ...] = (),
) -> trustme.LeafCert:
    """A leaf with chosen validity, key type and names (``name``, then ``also``), signed
    with cryptography by trustme's intermediate (Debian 12's trustme 0.9 has no
    not_before/not_after, and its keys are RSA where newer trustme's are ECDSA)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(65537, 2048) if rsa_key
        else ec.generate_private_key(ec.SECP256R1()))
    issuer = inter._certificate  # noqa: SLF001 - the CA's own certificate
    cert = (
        lab.as_issued(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after),
            key.public_key(), issuer.public_key(), ca=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in (name, *also)]),
                       critical=False)
        .sign(inter._private_key, hashes.SHA256())  # noqa: SLF001
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return trustme.LeafCert(key_pem, cert.public_bytes(serialization.Encoding.PEM), chain)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    inter = ca.create_child_ca()
    chain = [blob.bytes() for blob in inter.issue_cert(NAME).cert_chain_pems[1:]]
    return Pki(
        tmp=tmp_path_factory.mktemp("pki"),
        # ECDSA whatever trustme's default: the key-type tests serve an RSA leaf beside it.
        good=issue_dated(inter, chain, NAME, NOW - timedelta(days=1), NOW + timedelta(days=89),
                         also=("*.example.net",)),
        other=inter.issue_cert("old.example.com", common_name="old.example.com"),
        # 90 days of lifetime, 5 left: past the 14-day warning, before the 3-day critical.
        soon=issue_dated(inter, chain, NAME, NOW - timedelta(days=84, hours=18),
                         NOW + timedelta(days=5, hours=6)),
        # 160 hours, fresh: certbot renews it with 80 hours left.
        short=issue_dated(inter, chain, NAME, NOW - timedelta(hours=1),
                          NOW + timedelta(hours=159)),
        expired=issue_dated(inter, chain, NAME, NOW - timedelta(days=90),
                            NOW - timedelta(days=2, hours=6)),
        rsa=issue_dated(inter, chain, NAME, NOW - timedelta(days=1), NOW + timedelta(days=60),
                        rsa_key=True),
    )


def sha256_pem(leaf: trustme.LeafCert) -> str:
    return hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    ).hexdigest()


# --- fake servers -----------------------------------------------------------------------


@dataclass
class Behaviour:
    protocol: str = "smtp"
    implicit: bool = False
    certs: list[trustme.LeafCert] = field(default_factory=list)  # per connection, last repeats
    leaf_only: bool = False
    advertise_starttls: bool = True
    starttls_reply: str | None = None  # replaces the positive reply
    inject: bytes = b""  # sent in the same write as the STARTTLS reply
    inject_later: bytes = b""  # sent in a separate write shortly after it
    greeting: str | None = None
    silent: bool = False  # never greet
    # Served after the leaf instead of its own chain (PEM blobs, in this order).
    chain: list[bytes] | None = None
    alt: trustme.LeafCert | None = None  # a second certificate (another key type)
    server_order: bool = True  # Python's default: the server's order of suites/sigalgs


class Peer:
    """Server side of one connection: buffered lines, upgradable to TLS."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket = sock
        self.buf = b""

    def readline(self) -> str | None:
        while b"\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(f"{line}\r\n" for line in lines).encode())

    def wrap(self, ctx: ssl.SSLContext) -> None:
        assert not self.buf, "client pipelined data behind STARTTLS"
        self.sock = ctx.wrap_socket(self.sock, server_side=True)

    def drain(self) -> None:
        """Wait until the client hangs up."""
        while self.readline() is not None:
            pass


class FakeServer:
    """A one-thread TCP server on 127.0.0.1 handling connections one after another."""

    def __init__(self, pki: Pki, behaviour: Behaviour) -> None:
        self.pki = pki
        self.b = behaviour
        self.sni: list[str | None] = []
        self.commands: list[list[str]] = []
        self.errors: list[BaseException] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._contexts = [self._context(c) for c in behaviour.certs or [pki.good]]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def endpoint(self, label: str = "") -> Endpoint:
        tls = "implicit" if self.b.implicit else "starttls"
        service = "postfix" if self.b.protocol == "smtp" else "dovecot"
        return Endpoint(service, self.b.protocol, "127.0.0.1", self.port, tls, label)

    def _context(self, leaf: trustme.LeafCert) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if not self.b.server_order:  # as Postfix and Dovecot by default: the client's
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        chain = [c.bytes() for c in (leaf.cert_chain_pems[:1] if self.b.leaf_only
                                      else leaf.cert_chain_pems)]
        if self.b.chain is not None:
            chain = chain[:1] + self.b.chain
        path = self.pki.tmp / f"server-{id(leaf)}-{id(self.b)}.pem"
        path.write_bytes(leaf.private_key_pem.bytes() + b"".join(chain))
        ctx.load_cert_chain(str(path))
        if self.b.alt is not None:  # OpenSSL keeps one certificate per key type
            alt = self.b.alt
            alt_path = self.pki.tmp / f"server-alt-{id(alt)}.pem"
            alt_path.write_bytes(alt.private_key_pem.bytes()
                                 + b"".join(c.bytes() for c in alt.cert_chain_pems))
            ctx.load_cert_chain(str(alt_path))

        def record(_sock: object, name: str | None, _ctx: object) -> None:
            self.sni.append(name)

        ctx.sni_callback = record
        return ctx

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(5)
            peer = Peer(conn)
            self.commands.append([])
            ctx = self._contexts[min(index, len(self._contexts) - 1)]
            try:
                HANDLERS[self.b.protocol](self, peer, ctx)
            except Exception as err:  # surfaced via self.errors
                self.errors.append(err)
            finally:
                peer.sock.close()
                conn.close()
            index += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def _start(peer: Peer, server: FakeServer, ctx: ssl.SSLContext, greeting: list[str]) -> bool:
    """Greet (over TLS when implicit); False when the script says to stay silent."""
    if server.b.silent:
        peer.drain()
        return False
    if server.b.implicit:
        peer.wrap(ctx)
    peer.send(*([server.b.greeting] if server.b.greeting else greeting))
    return True


def _accept_tls(peer: Peer, server: FakeServer, ctx: ssl.SSLContext, reply: str) -> bool:
    """Answer STARTTLS/STLS as scripted; True when TLS is now on."""
    b = server.b
    if b.starttls_reply:
        peer.send(b.starttls_reply)
        return False
    peer.sock.sendall(f"{reply}\r\n".encode() + b.inject)
    if b.inject_later:
        time.sleep(0.02)
        peer.sock.sendall(b.inject_later)
    if b.inject or b.inject_later:
        peer.drain()  # a correct client hangs up now
        return False
    peer.wrap(ctx)
    return True


def smtp_server(server: FakeServer, peer: Peer, ctx: ssl.SSLContext) -> None:
    if not _start(peer, server, ctx, ["220-mail.example.com ESMTP", "220 fake"]):
        return
    tls = server.b.implicit
    while (line := peer.readline()) is not None:
        server.commands[-1].append(line)
        verb = line.split(" ", 1)[0].upper()
        if verb == "EHLO":
            caps = ["PIPELINING", "SIZE 10240000"]
            if not tls and server.b.advertise_starttls:
                caps.append("STARTTLS")
            if tls:  # like smtpd_tls_auth_only = yes
                caps.append("AUTH PLAIN LOGIN")
            caps.append("8BITMIME")
            peer.send("250-mail.example.com", *(f"250-{c}" for c in caps[:-1]), f"250 {caps[-1]}")
        elif verb == "STARTTLS" and not tls:
            tls = _accept_tls(peer, server, ctx, "220 2.0.0 Ready to start TLS")
            if server.b.inject or server.b.inject_later:
                return
        elif verb == "QUIT":
            peer.send("221 2.0.0 Bye")
            return
        else:
            peer.send("502 5.5.2 Error: command not recognized")


def imap_server(server: FakeServer, peer: Peer, ctx: ssl.SSLContext) -> None:
    b = server.b
    starttls = " STARTTLS" if b.advertise_starttls and not b.implicit else ""
    if not _start(peer, server, ctx, [f"* OK [CAPABILITY IMAP4rev1{starttls}] Fake ready."]):
        return
    tls = b.implicit
    while (line := peer.readline()) is not None:
        server.commands[-1].append(line)
        tag, _, command = line.partition(" ")
        command = command.upper()
        if command == "CAPABILITY":
            caps = "IMAP4rev1 IDLE"
            caps += " AUTH=PLAIN" if tls else (" STARTTLS" if b.advertise_starttls else "")
            peer.send(f"* CAPABILITY {caps}", f"{tag} OK Pre-login capabilities listed.")
        elif command == "STARTTLS" and not tls:
            tls = _accept_tls(peer, server, ctx, f"{tag} OK Begin TLS negotiation now.")
            if b.inject or b.inject_later:
                return
        elif command == "LOGOUT":
            peer.send("* BYE Logging out", f"{tag} OK Logout completed.")
            return
        else:
            peer.send(f"{tag} BAD Error in IMAP command.")


def pop3_server(server: FakeServer, peer: Peer, ctx: ssl.SSLContext) -> None:
    b = server.b
    if not _start(peer, server, ctx, ["+OK Fake ready."]):
        return
    tls = b.implicit
    while (line := peer.readline()) is not None:
        server.commands[-1].append(line)
        command = line.upper()
        if command == "CAPA":
            caps = ["TOP", "UIDL"]
            caps += ["SASL PLAIN"] if tls else (["STLS"] if b.advertise_starttls else [])
            peer.send("+OK", *caps, ".")
        elif command == "STLS" and not tls:
            tls = _accept_tls(peer, server, ctx, "+OK Begin TLS negotiation now.")
            if b.inject or b.inject_later:
                return
        elif command == "QUIT":
            peer.send("+OK Logging out.")
            return
        else:
            peer.send("-ERR Unknown command.")


HANDLERS: dict[str, Callable[[FakeServer, Peer, ssl.SSLContext], None]] = {
    "smtp": smtp_server,
    "imap": imap_server,
    "pop3": pop3_server,
}


@pytest.fixture
def serve(pki: Pki) -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(**kwargs: object) -> FakeServer:
        server = FakeServer(pki, Behaviour(**kwargs))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def check(server: FakeServer, expected: ExpectedCert, sni: str | None = NAME, **kwargs: object):
    kwargs.setdefault("retry_seconds", 0.3)
    kwargs.setdefault("timeout", 3.0)
    return verify.check_endpoint(server.endpoint(), expected, sni, **kwargs)  # type: ignore[arg-type]


# --- happy paths ------------------------------------------------------------------------

HAPPY = [
    ("smtp", False, ["EHLO [127.0.0.1]", "STARTTLS", "EHLO [127.0.0.1]", "QUIT"]),
    ("imap", False, ["a1 CAPABILITY", "a2 STARTTLS", "a3 CAPABILITY", "a4 LOGOUT"]),
    ("pop3", False, ["CAPA", "STLS", "CAPA", "QUIT"]),
    ("smtp", True, ["EHLO [127.0.0.1]", "QUIT"]),
    ("imap", True, ["a1 CAPABILITY", "a2 LOGOUT"]),
    ("pop3", True, ["CAPA", "QUIT"]),
]


@pytest.mark.parametrize(("protocol", "implicit", "commands"), HAPPY)
def test_happy_path(serve, pki, protocol, implicit, commands):
    server = serve(protocol=protocol, implicit=implicit)
    expected = pki.expected(pki.good)
    result = check(server, expected)
    assert result.status == "OK", result.message
    assert result.served_sha256 == expected.leaf_sha256 == sha256_pem(pki.good)
    assert result.chain_complete is True
    assert result.name_matches is True
    assert result.days_left is not None and result.days_left > 14
    assert result.sni == NAME
    assert server.sni == [NAME]
    # one command at a time, in order, nothing else
    assert server.commands == [commands]
    assert server.errors == []
    assert f"127.0.0.1:{server.port}" in result.message


def test_json_shape(serve, pki):
    server = serve()
    result = check(server, pki.expected(pki.good))
    data = result.to_json()
    assert list(data) == [
        "service", "address", "port", "tls", "sni", "status", "served_sha256",
        "expected_sha256", "chain_complete", "name_matches", "days_left", "message",
        "algorithm",
    ]  # fmt: skip
    assert data["tls"] == "starttls" and data["service"] == "postfix"


def test_no_sni_when_none(serve, pki):
    server = serve()
    result = check(server, pki.expected(pki.good), sni=None)
    assert result.status == "OK", result.message
    assert result.sni is None
    assert result.name_matches is True  # checked against the first expected name
    assert server.sni == [None]


def test_no_sni_for_ip_address(serve, pki):
    server = serve(protocol="imap")
    shake = dialogues.handshake(server.endpoint(), "127.0.0.1", timeout=3)
    assert server.sni == [None]
    assert hashlib.sha256(shake.leaf_der).hexdigest() == sha256_pem(pki.good)
    assert shake.chain_der[0] == shake.leaf_der and len(shake.chain_der) == 2


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3"])
def test_auth_only_after_tls(serve, protocol):
    server = serve(protocol=protocol)
    shake = dialogues.handshake(server.endpoint(), NAME, timeout=3)
    auth = {"smtp": "AUTH PLAIN LOGIN", "imap": "AUTH=PLAIN", "pop3": "SASL PLAIN"}[protocol]
    assert auth not in shake.capabilities_before_tls
    assert auth in shake.capabilities_after_tls
    assert shake.capabilities_before_tls  # STARTTLS was among them


def test_implicit_has_no_capabilities_before_tls(serve):
    shake = dialogues.handshake(serve(implicit=True).endpoint(), NAME, timeout=3)
    assert shake.capabilities_before_tls == []
    assert "AUTH PLAIN LOGIN" in shake.capabilities_after_tls


# --- the client must not be fooled ------------------------------------------------------


@pytest.mark.parametrize(("protocol", "word"), [("smtp", "STARTTLS"), ("imap", "STARTTLS"),
                                                ("pop3", "STLS")])  # fmt: skip
def test_starttls_not_advertised(serve, pki, protocol, word):
    server = serve(protocol=protocol, advertise_starttls=False)
    result = check(server, pki.expected(pki.good))
    assert result.status == "CRITICAL"
    assert f"does not advertise {word}" in result.message
    assert result.served_sha256 is None
    assert server.sni == []


def test_454_after_starttls(serve, pki):
    server = serve(starttls_reply="454 4.7.0 TLS not available due to local problem")
    result = check(server, pki.expected(pki.good))
    assert result.status == "CRITICAL"
    assert "454 4.7.0 TLS not available due to local problem" in result.message
    assert f"127.0.0.1:{server.port}" in result.message


def test_imap_starttls_refused(serve, pki):
    server = serve(protocol="imap", starttls_reply="a2 NO STARTTLS is not available.")
    result = check(server, pki.expected(pki.good))
    assert result.status == "CRITICAL"
    assert "NO STARTTLS is not available" in result.message


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3"])
def test_injected_bytes_in_same_write(serve, pki, protocol):
    server = serve(protocol=protocol, inject=b"250-INJECTED\r\n250 AUTH PLAIN\r\n")
    result = check(server, pki.expected(pki.good))
    assert result.status == "CRITICAL"
    assert "before the TLS handshake" in result.message
    assert server.sni == []  # never started TLS


def test_injected_bytes_in_later_write(serve, pki):
    server = serve(inject_later=b"250 INJECTED\r\n")
    with pytest.raises(VerifyError, match="before the TLS handshake"):
        dialogues.handshake(server.endpoint(), NAME, timeout=3)


def test_wrong_certificate(serve, pki):
    server = serve(certs=[pki.other])
    expected = pki.expected(pki.good)
    result = check(server, expected, retry_seconds=0.3)
    assert result.status == "CRITICAL"
    served = sha256_pem(pki.other)
    assert result.served_sha256 == served != expected.leaf_sha256
    assert "old.example.com" in result.message
    assert served[:16] in result.message
    assert len(server.sni) >= 2  # it retried


def test_leaf_without_chain(serve, pki):
    server = serve(leaf_only=True)
    result = check(server, pki.expected(pki.good))
    assert result.status == "CRITICAL"
    assert result.chain_complete is False
    assert "serves the leaf without its chain - point the service at fullchain.pem" in (
        result.message
    )


def test_chain_out_of_order(serve, pki):
    # Another certificate between the leaf and its intermediate: complete, not in order.
    intermediate = pki.good.cert_chain_pems[1].bytes()
    server = serve(chain=[pki.other.cert_chain_pems[0].bytes(), intermediate])
    result = check(server, pki.expected(pki.good))
    assert result.status == "CRITICAL" and result.kind == "chain-order", result.message
    assert result.chain_complete is True
    assert "sends its chain out of order (certificate 2 received does not issue certificate 1)" in (
        result.message)
    # The fake server's endpoint has no advice of its own: the generic setting is named.
    assert "point its certificate setting at fullchain.pem" in result.message
    assert verify.chain_out_of_order([]) is None


def test_other_key_type_beside_the_deployed_one(serve, pki):
    expected = pki.expected(pki.good)
    assert expected.key_type == "ecdsa"
    # One ECDSA certificate: one handshake, OK (the client put RSA first).
    server = serve(server_order=False)
    assert check(server, expected).status == "OK"
    assert len(server.sni) == 1
    # An RSA certificate left beside it: the same one handshake gets it.
    server = serve(alt=pki.rsa, server_order=False)
    result = check(server, expected, retry_seconds=0)
    assert result.status == "CRITICAL" and result.kind == "alt-cert", result.message
    assert result.served_sha256 == sha256_pem(pki.rsa)
    assert "to clients that prefer RSA keys" in result.message
    assert result.message.endswith("- remove it from its certificate settings.")
    assert len(server.sni) == 1
    [line] = verify.summarize([result])
    assert "; decided by its certificate settings; fix: remove the other certificate" in line
    # A pair member is checked with its own key type only: no finding.
    assert check(server, expected, key_type="ecdsa").status == "OK"


def test_other_key_type_where_the_server_orders(serve, pki):
    """A server imposing its order serves ECDSA to anyone who offers it: only an
    RSA-only client shows the leftover, so an endpoint that says so gets that second
    handshake (and one whose configuration does not say so cannot be judged by one)."""
    expected = pki.expected(pki.good)
    server = serve(alt=pki.rsa)
    ordered = dataclasses.replace(server.endpoint(), server_order=True)
    result = verify.check_endpoint(ordered, expected, NAME, retry_seconds=0)
    assert result.status == "CRITICAL" and result.kind == "alt-cert", result.message
    assert result.served_sha256 == sha256_pem(pki.rsa)
    assert len(server.sni) == 2
    # Without the RSA certificate the second handshake fails: OK.
    server = serve()
    ordered = dataclasses.replace(server.endpoint(), server_order=True)
    assert verify.check_endpoint(ordered, expected, NAME, retry_seconds=0).status == "OK"


def test_expires_soon_is_warning(serve, pki):
    server = serve(certs=[pki.soon])
    result = check(server, pki.expected(pki.soon))
    assert result.status == "WARNING", result.message
    assert result.days_left == 5
    assert result.chain_complete is True and result.name_matches is True


def test_expired_is_critical(serve, pki):
    server = serve(certs=[pki.expired])
    result = check(server, pki.expected(pki.expired))
    assert result.status == "CRITICAL"
    assert result.days_left == -3
    assert "expired" in result.message


def test_short_lived_certificate_judged_by_its_lifetime(serve, pki):
    # A fresh 160-hour certificate is OK (a fixed 14 days would call it expiring forever);
    # WARNING once certbot's renewal point (80 hours left) is long past (25 hours left);
    # CRITICAL with about 5 hours left, before it expires.
    server = serve(certs=[pki.short])
    expected = pki.expected(pki.short)
    result = check(server, expected)
    assert result.status == "OK", result.message
    assert result.message.endswith("for 6 day(s) more."), result.message
    end = expected.not_after
    assert expected.not_before is not None and end - expected.not_before == timedelta(hours=160)
    for left, status in ((timedelta(hours=30), "OK"), (timedelta(hours=24), "WARNING"),
                         (timedelta(hours=5), "CRITICAL"), (-timedelta(hours=1), "CRITICAL")):
        result = check(server, expected, now=end - left)
        assert result.status == status, (left, result.message)
    result = check(server, expected, now=end - timedelta(hours=24))
    assert "expires in 24 hour(s): certbot should have renewed it at " in result.message
    assert "(a half of its 6 day(s) lifetime left)" in result.message
    result = check(server, expected, now=end - timedelta(hours=5))
    assert result.kind == "expiring" and "run certbot renew" in result.message


def test_days_left_uses_now(serve, pki):
    server = serve()
    expected = pki.expected(pki.good)
    later = expected.not_after - timedelta(days=10, hours=1)
    result = check(server, expected, now=later)
    assert (result.status, result.days_left) == ("WARNING", 10)


def test_name_mismatch(serve, pki):
    server = serve()
    result = check(server, pki.expected(pki.good), sni="mail.example.org")
    assert result.status == "CRITICAL"
    assert result.name_matches is False
    assert result.chain_complete is True
    assert "does not cover mail.example.org" in result.message
    assert server.sni == ["mail.example.org"]


def test_wildcard_name_via_sni(serve, pki):
    result = check(serve(), pki.expected(pki.good), sni="imap.example.net")
    assert result.status == "OK", result.message
    assert result.name_matches is True


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("Mail.Example.COM", "mail.example.com.", True),
        ("mail.example.com", "smtp.example.com", False),
        ("*.example.com", "mail.example.com", True),
        ("*.example.com", "MAIL.EXAMPLE.COM", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.mail.example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.com", "example.com", False),
        ("mail.*.com", "mail.example.com", False),
        ("m*.example.com", "mail.example.com", False),
        ("*.*.example.com", "a.b.example.com", False),
        ("*.xn--caf-dma.example", "mail.café.example", True),
        ("", "mail.example.com", False),
    ],
)
def test_dns_name_matches(pattern, host, ok):
    assert verify.dns_name_matches(pattern, host) is ok


def test_certificate_covers():
    assert verify.certificate_covers(["a.example", "*.b.example"], "x.b.example")
    assert not verify.certificate_covers([], "a.example")


# --- connection problems and retry ------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused(pki):
    port = _closed_port()
    endpoint = Endpoint("postfix", "smtp", "127.0.0.1", port, "starttls", "submission")
    started = time.monotonic()
    result = verify.check_endpoint(endpoint, pki.expected(pki.good), NAME, retry_seconds=0.3)
    elapsed = time.monotonic() - started
    assert result.status == "CRITICAL"
    assert result.message.startswith(f"Nothing listens on 127.0.0.1:{port} (postfix submission)")
    assert result.served_sha256 is None and result.days_left is None
    assert 0.25 <= elapsed < 1.5


def test_retry_until_new_certificate(serve, pki):
    server = serve(certs=[pki.other, pki.other, pki.good])
    result = check(server, pki.expected(pki.good), retry_seconds=3)
    assert result.status == "OK", result.message
    assert server.sni == [NAME, NAME, NAME]


def test_no_retry_on_protocol_failure(serve, pki):
    server = serve(advertise_starttls=False)
    started = time.monotonic()
    result = check(server, pki.expected(pki.good), retry_seconds=3)
    assert result.status == "CRITICAL"
    assert time.monotonic() - started < 1
    assert len(server.commands) == 1


def test_bad_greeting(serve):
    server = serve(greeting="554 5.7.1 go away")
    with pytest.raises(VerifyError, match=r"greeted with '554 5.7.1 go away' instead of 220"):
        dialogues.handshake(server.endpoint(), NAME, timeout=3)


def test_not_an_smtp_reply(serve):
    server = serve(greeting="HTTP/1.1 400 Bad Request")
    with pytest.raises(VerifyError, match="not an SMTP reply"):
        dialogues.handshake(server.endpoint(), NAME, timeout=3)


def test_overlong_line(serve):
    server = serve(greeting="220 " + "x" * 20000)
    with pytest.raises(VerifyError, match="longer than"):
        dialogues.handshake(server.endpoint(), NAME, timeout=3)


def test_silent_server_times_out(serve):
    server = serve(silent=True)
    started = time.monotonic()
    with pytest.raises(VerifyError, match=r"did not answer within 0.3 s"):
        dialogues.handshake(server.endpoint("smtp"), NAME, timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_implicit_tls_port_speaking_plaintext(serve):
    server = serve()  # STARTTLS server, checked as if it were implicit TLS
    endpoint = Endpoint("postfix", "smtp", "127.0.0.1", server.port, "implicit", "smtps")
    with pytest.raises(VerifyError, match=r"TLS with 127\.0\.0\.1:\d+ \(postfix smtps\) failed"):
        dialogues.handshake(endpoint, NAME, timeout=3)


# --- small pieces -----------------------------------------------------------------------


def test_expected_from_fullchain(pki):
    expected = pki.expected(pki.good)
    assert expected.leaf_sha256 == sha256_pem(pki.good)
    inter = ssl.PEM_cert_to_DER_cert(pki.good.cert_chain_pems[1].bytes().decode())
    assert expected.intermediates_sha256 == (hashlib.sha256(inter).hexdigest(),)
    assert expected.names == (NAME, "*.example.net")
    assert expected.not_after.tzinfo is not None


def test_expected_from_bad_file(tmp_path):
    with pytest.raises(VerifyError, match="Cannot read"):
        ExpectedCert.from_fullchain(str(tmp_path / "missing.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(VerifyError, match="no PEM certificate"):
        ExpectedCert.from_fullchain(str(empty))


def test_worst_and_exit_codes():
    assert findings.worst([]) == "OK"
    assert findings.worst(["OK", "WARNING", "OK"]) == "WARNING"
    assert findings.worst(["CRITICAL", "WARNING"]) == "CRITICAL"
    assert findings.worst(iter(["UNKNOWN", "CRITICAL"])) == "CRITICAL"
    assert findings.worst(["WARNING", "UNKNOWN"]) == "UNKNOWN"
    assert findings.EXIT_CODES == {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
