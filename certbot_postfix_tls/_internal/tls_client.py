"""The verifier's transport: a raw socket, bounded line I/O, and the TLS handshake.

Python's smtplib/imaplib cannot be used for verification: they send no SNI when
connecting to an IP address and silently drop bytes a server sends between the
STARTTLS reply and the handshake. This module reads and writes lines with hard
limits, refuses bytes that arrive before the handshake, and does the handshake
with pyOpenSSL (which exposes the served chain), optionally pinned to one TLS
version, offering one key type's signature algorithms only, or one key type's
first. The SMTP, IMAP and POP3 dialogues are in ``dialogues``; judging what was
served is ``verify``.
"""

from __future__ import annotations

import functools
import ipaddress
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from OpenSSL import SSL, crypto

# Limits against hostile or broken servers: nothing legitimate comes close.
_MAX_LINE = 8192
_MAX_TOTAL = 64 * 1024
# How long to watch for bytes the server sends after its STARTTLS reply. Injected data
# normally arrives with the reply itself; this catches a separate write right after it.
_EARLY_DATA_WINDOW = 0.1
# QUIT/LOGOUT is a courtesy; never wait long for its answer.
_QUIT_TIMEOUT = 1.0

_T = TypeVar("_T")


class VerifyError(Exception):
    """A verification failure; the message is one sentence naming the endpoint or file.

    ``retryable`` marks failures a just-reloaded service may still recover from (nothing
    listening yet, an old process closing the connection). ``kind`` classifies the
    failure for ``summarize`` (refused, timeout, closed, greeting, no-starttls,
    starttls-refused, early-data, tls, protocol).
    """

    def __init__(self, message: str, retryable: bool = False, kind: str = "protocol") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind


@dataclass(frozen=True)
class Advice:
    """What failure messages say about the daemon behind an endpoint: its name for
    people, how to reload and start it, the settings that decide what a port serves,
    and where its log gives causes. The defaults fit a daemon that supplies none."""

    display: str = "the service"  # "Postfix"
    reload: str = "reload the service"  # "postfix reload"
    start: str = "start the service"  # "postfix start"
    cert_setting: str = "its certificate setting"
    tls_setting: str = "its TLS setting"  # what turns TLS on for a port
    tls_fix: str = "turn TLS on for this port"
    listen_setting: str = "where it listens"
    protocol_setting: str = "its TLS protocols and ciphers"
    # What can hold a second certificate of another key type beside the deployed one.
    alt_cert_setting: str = "its certificate settings"
    # Log lines of these programs may name a cause (``smtpd[``, ``imap-login``).
    log_programs: tuple[str, ...] = ()
    # Said when the endpoint has no log file to read a cause from ("" says nothing).
    no_log_hint: str = ""
    # The service units and init scripts that run it (a name prefix: ``postfix@-``), and
    # its own commands that stop it: a renewal hook running either takes it down.
    units: tuple[str, ...] = ()
    stop_commands: tuple[str, ...] = ()  # "postfix stop"


@dataclass(frozen=True)
class Endpoint:
    """One TLS endpoint of a mail service."""

    service: str  # the daemon's name ("postfix", "dovecot")
    protocol: str  # "smtp", "imap" or "pop3"
    address: str  # IP address or host name to connect to
    port: int
    tls: str  # "starttls" or "implicit"
    label: str = ""  # e.g. "smtp", "submission", "imaps" (for messages)
    # For failure messages: the setting that decides the served certificate
    # (e.g. "smtpd_tls_chain_files in /etc/postfix/main.cf"), and the service's log
    # file when it writes one (Postfix's maillog_file), where a cause may be found.
    setting: str = field(default="", compare=False)
    log_file: str = field(default="", compare=False)
    advice: Advice = field(default=Advice(), compare=False, repr=False)
    # Whether the server imposes its own order of suites and signature algorithms
    # (Postfix's tls_preempt_cipherlist, Dovecot's ssl_prefer_server_ciphers): a client's
    # preference then cannot show a second certificate in one handshake.
    server_order: bool = field(default=False, compare=False)


# handshake(tls_version=...): pin one protocol version. "legacy" is TLS 1.0-1.1 at
# OpenSSL security level 0, to tell a port that only speaks those from one that fails;
# "anonymous" offers only certificate-less suites (TLS 1.0-1.2), as scanners try them.
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3", "legacy", "anonymous")


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def a_label(name: str) -> str:
    """Lower-case ASCII form of a host name (IDNs as A-labels, as in certificates)."""
    name = name.rstrip(".").lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def printable(text: str, limit: int = 120) -> str:
    """Server-supplied text made safe for a one-line message."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _hostport(endpoint: Endpoint) -> str:
    host = endpoint.address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{endpoint.port}"


def where_of(endpoint: Endpoint) -> str:
    return f"{_hostport(endpoint)} ({endpoint.service} {endpoint.label or endpoint.protocol})"


def _wait(sock: socket.socket, write: bool, timeout: float) -> bool:
    # selectors instead of select.select: no FD_SETSIZE limit in a busy certbot process.
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE if write else selectors.EVENT_READ)
        return bool(sel.select(max(timeout, 0.0)))


def _ssl_reason(err: SSL.Error) -> str:
    details = err.args[0] if err.args else None
    if isinstance(details, list) and details:
        reasons = [str(d[-1] or d[0]) for d in details if isinstance(d, tuple) and d]
        if reasons:
            return ", ".join(dict.fromkeys(reasons))
    return str(err) or type(err).__name__


class _Eof(Exception):
    """The peer closed (or reset) the TLS connection."""


class Connection:
    """One connection: line I/O with limits, first in plaintext, then over TLS.

    The protocol dialogues (``dialogues``) build on it; nothing here knows SMTP,
    IMAP or POP3 beyond a line and the QUIT courtesy."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket, timeout: float,
                 tls_version: str | None = None, key_type: str | None = None,
                 prefer: str | None = None) -> None:
        self.endpoint = endpoint
        self.tls_version = tls_version
        self.key_type = key_type
        self.prefer = prefer
        self.protocol = ""
        self.where = where_of(endpoint)
        self.sock = sock
        self.timeout = timeout
        self.tls: SSL.Connection | None = None
        self.buf = b""
        self.total = 0
        self.leaf_der = b""
        self.chain_der: list[bytes] = []
        self.tag = 0

    # -- raw I/O

    def _tls_call(self, op: Callable[[], _T], what: str) -> _T:
        """Run a pyOpenSSL operation on the non-blocking fd (a socket timeout makes it so)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return op()
            except SSL.WantReadError:
                write = False
            except SSL.WantWriteError:
                write = True
            except (SSL.ZeroReturnError, SSL.SysCallError) as err:
                raise _Eof() from err
            except SSL.Error as err:
                hint = ""
                if self.endpoint.tls == "implicit" and "wrong version number" in str(err):
                    hint = " - the port does not seem to speak implicit TLS"
                raise VerifyError(
                    f"TLS with {self.where} failed {what}: {_ssl_reason(err)}{hint}.", kind="tls"
                ) from err
            if not _wait(self.sock, write, deadline - time.monotonic()):
                raise VerifyError(
                    f"{self.where} did not answer within {self.timeout:g} s {what}.",
                    kind="timeout",
                )

    def _recv(self, what: str) -> bytes:
        try:
            if self.tls is not None:
                tls = self.tls
                try:
                    return self._tls_call(lambda: tls.recv(4096), what)
                except _Eof:
                    return b""
            return self.sock.recv(4096)
        except socket.timeout as err:
            raise VerifyError(
                f"{self.where} did not answer within {self.timeout:g} s {what}.", kind="timeout"
            ) from err
        except OSError as err:
            raise VerifyError(
                f"{self.where} dropped the connection {what}: {err.strerror or err}.",
                retryable=True,
                kind="closed",
            ) from err

    def send(self, line: str) -> None:
        """Send one command line (CRLF added)."""
        data = line.encode("ascii") + b"\r\n"
        what = f"while sending {line.split(' ', 1)[0]}"
        try:
            if self.tls is None:
                self.sock.sendall(data)
                return
            tls = self.tls
            sent = 0
            while sent < len(data):
                sent += self._tls_call(functools.partial(tls.send, data[sent:]), what)
        except _Eof as err:
            raise VerifyError(f"{self.where} closed the connection {what}.", True) from err
        except socket.timeout as err:
            raise VerifyError(f"{self.where} stalled {what}.") from err
        except OSError as err:
            raise VerifyError(
                f"{self.where} dropped the connection {what}: {err.strerror or err}.",
                retryable=True,
            ) from err

    def read_line(self, what: str) -> str:
        """One line without its CRLF (bare LF tolerated), within the size limits."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1 :]
                if len(line) > _MAX_LINE:
                    break
                return line.rstrip(b"\r").decode("utf-8", "replace")
            if len(self.buf) > _MAX_LINE:
                break
            data = self._recv(what)
            if not data:
                raise VerifyError(
                    f"{self.where} closed the connection {what}.", retryable=True, kind="closed"
                )
            self.total += len(data)
            if self.total > _MAX_TOTAL:
                raise VerifyError(
                    f"{self.where} sent more than {_MAX_TOTAL // 1024} KiB {what}, "
                    "which no mail server does."
                )
            self.buf += data
        raise VerifyError(f"{self.where} sent a line longer than {_MAX_LINE} bytes {what}.")

    # -- TLS

    def refuse_early_data(self, command: str) -> None:
        """Fail if the server sent anything after its reply to STARTTLS/STLS.

        Such bytes would be taken for post-handshake data by a careless client
        (CVE-2011-0411 class); a correct server stays silent until the ClientHello.
        """
        early = len(self.buf)
        if not early and _wait(self.sock, False, min(_EARLY_DATA_WINDOW, self.timeout)):
            try:
                early = len(self.sock.recv(1, socket.MSG_PEEK))
            except OSError:
                early = 0
            if not early:
                raise VerifyError(
                    f"{self.where} closed the connection right after accepting {command}.",
                    retryable=True,
                    kind="closed",
                )
        if early:
            raise VerifyError(
                f"{self.where} sent data before the TLS handshake (after its {command} reply),"
                " so plaintext could be passed off as encrypted - refusing to trust it.",
                kind="early-data",
            )

    def start_tls(self, sni: str | None) -> None:
        """Handshake (SNI only for DNS names) and record the served chain."""
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        # No trust store: the served certificate is compared by fingerprint instead.
        ctx.set_verify(SSL.VERIFY_NONE)
        if self.tls_version == "legacy":
            ctx.set_min_proto_version(SSL.TLS1_VERSION)
            ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        elif self.tls_version == "anonymous":
            # Only certificate-less suites (TLS 1.3 has none), at any protocol version.
            ctx.set_min_proto_version(SSL.TLS1_VERSION)
            ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
            ctx.set_cipher_list(b"aNULL:!eNULL:@SECLEVEL=0")
        elif self.tls_version is not None:
            pinned = SSL.TLS1_3_VERSION if self.tls_version == "TLSv1.3" else SSL.TLS1_2_VERSION
            ctx.set_min_proto_version(pinned)
            ctx.set_max_proto_version(pinned)
        if self.key_type:
            _offer_only(ctx, self.key_type)
        elif self.prefer:
            _offer_first(ctx, self.prefer)
        conn = SSL.Connection(ctx, self.sock)
        if sni and not is_ip(sni):
            try:
                conn.set_tlsext_host_name(a_label(sni).encode("ascii"))
            except UnicodeError as err:
                raise VerifyError(f"Cannot send {sni!r} as SNI to {self.where}.") from err
        conn.set_connect_state()
        try:
            self._tls_call(conn.do_handshake, "during the TLS handshake")
        except _Eof as err:
            raise VerifyError(
                f"{self.where} closed the connection during the TLS handshake.", True, "closed"
            ) from err
        self.protocol = conn.get_protocol_version_name()
        self.tls = conn
        leaf = conn.get_peer_certificate()
        if leaf is None and self.tls_version == "anonymous":
            return
        if leaf is None:
            raise VerifyError(f"{self.where} completed the TLS handshake without a certificate.")
        self.leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)
        chain = conn.get_peer_cert_chain() or []
        self.chain_der = [crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain]
        if not self.chain_der:
            self.chain_der = [self.leaf_der]

    def quit(self, send_quit: Callable[[], object]) -> None:
        """Say goodbye politely; errors no longer matter at this point."""
        self.timeout = min(self.timeout, _QUIT_TIMEOUT)
        try:
            send_quit()
        except (VerifyError, OSError, SSL.Error):
            pass


# Signature algorithms a client offers to be served one key type only (TLS 1.2 and 1.3).
SIGALGS = {
    "ecdsa": b"ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512",
    "rsa": b"RSA-PSS+SHA256:RSA-PSS+SHA384:RSA-PSS+SHA512:RSA+SHA256:RSA+SHA384:RSA+SHA512",
}


def _offer_only(ctx: SSL.Context, key_type: str) -> None:
    """Offer only ``key_type``'s signature algorithms, as an ECDSA-only or RSA-only client
    would (pyOpenSSL has no public call for it; cryptography binds OpenSSL's)."""
    from OpenSSL._util import lib  # private, but the very binding pyOpenSSL uses

    raw = ctx._context  # the SSL_CTX pointer
    if key_type not in SIGALGS or not lib.SSL_CTX_set1_sigalgs_list(raw, SIGALGS[key_type]):
        raise VerifyError(f"Cannot offer only {key_type} signature algorithms.")


# TLS 1.2 suites authenticated by each key type, put first by _offer_first.
_SUITES = {"ecdsa": b"ECDHE+aECDSA", "rsa": b"ECDHE+aRSA:DHE+aRSA"}


def _offer_first(ctx: SSL.Context, key_type: str) -> None:
    """Offer every key type, ``key_type``'s signature algorithms (and TLS 1.2 suites)
    first. A server with a certificate of that type serves it (the client's order
    decides unless the server imposes its own); one without serves the other: so one
    handshake shows whether a certificate of that type is configured beside the other."""
    from OpenSSL._util import lib

    others = [kind for kind in SIGALGS if kind != key_type]
    order = b":".join([SIGALGS[key_type], *(SIGALGS[kind] for kind in others)])
    ctx.set_cipher_list(_SUITES[key_type] + b":DEFAULT")
    if not lib.SSL_CTX_set1_sigalgs_list(ctx._context, order):
        raise VerifyError(f"Cannot offer {key_type} signature algorithms first.")


def connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((endpoint.address, endpoint.port), timeout=timeout)
    except ConnectionRefusedError as err:
        raise VerifyError(
            f"Nothing listens on {where_of(endpoint)}: connection refused"
            " - is the service running and listening there?",
            retryable=True,
            kind="refused",
        ) from err
    except socket.timeout as err:
        raise VerifyError(
            f"Connecting to {where_of(endpoint)} timed out after {timeout:g} s"
            " - is a firewall dropping it?",
            kind="timeout",
        ) from err
    except OSError as err:
        raise VerifyError(
            f"Cannot connect to {where_of(endpoint)}: {err.strerror or err}.", kind="refused"
        ) from err
    return sock
