"""Logged-in IMAP and POP3 sessions held open across a reload, as mail clients hold them.

Only point these at the lab's private loopback (``lab.enter_private_namespace``).
Each session is one thread driving the standard library's ``imaplib``/``poplib``:

- ``noop`` sessions send NOOP every ``interval`` seconds (a client polling);
- ``idle`` sessions stay silent: IMAP in IDLE (RFC 2177, what phones and desktop
  clients keep open), POP3 doing nothing. They only watch for the server closing
  the connection (EOF, ``* BYE``, ``-ERR``).

Stopping ends each session that is still alive with a NOOP that must be answered
(after ``DONE`` for IDLE), so a session the server dropped silently is also found.
Any BYE, EOF, reset, timeout or unanswered command counts as cut, with the moment it
was seen (``time.monotonic()``). Dovecot limits connections per user and address
(``mail_max_userip_connections``, 10 by default): open more than 10 of one protocol
under several users.
"""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Optional, Union

__all__ = ["MailSessions", "SessionReport", "SessionResult"]

MODES = ("noop", "idle")
PROTOCOLS = ("imap", "pop3")
_WATCH_SECONDS = 0.5  # how often an idle session checks whether it should stop


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the lab's certificates are not what is tested here
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


Client = Union[imaplib.IMAP4, poplib.POP3]


@dataclass
class SessionResult:
    """One session: what it was, and whether and when it was cut."""

    protocol: str  # imap, pop3
    mode: str  # noop, idle
    port: int
    cut: bool = False
    cut_at: Optional[float] = None  # when the session saw it (monotonic)
    reason: str = ""


@dataclass
class SessionReport:
    """Every session's result, with counts by protocol and mode."""

    results: list[SessionResult] = field(default_factory=list)

    def _select(self, protocol: Optional[str], mode: Optional[str]) -> list[SessionResult]:
        return [r for r in self.results
                if protocol in (None, r.protocol) and mode in (None, r.mode)]

    def opened(self, protocol: Optional[str] = None, mode: Optional[str] = None) -> int:
        return len(self._select(protocol, mode))

    def cut(self, protocol: Optional[str] = None, mode: Optional[str] = None) -> int:
        return sum(1 for r in self._select(protocol, mode) if r.cut)

    def cut_times(self) -> list[float]:
        return sorted(r.cut_at for r in self.results if r.cut_at is not None)

    def reasons(self, limit: int = 3) -> list[str]:
        found: list[str] = []
        for result in self.results:
            if result.cut and result.reason and result.reason not in found:
                found.append(result.reason)
        return found[:limit]

    def summary(self) -> str:
        """``imap 0 of 10, pop3 0 of 5`` (cut of opened, per protocol)."""
        return ", ".join(f"{p} {self.cut(p)} of {self.opened(p)}" for p in PROTOCOLS
                         if self.opened(p))


class _Session:
    def __init__(self, client: Client, result: SessionResult, interval: float,
                 timeout: float, stop: threading.Event) -> None:
        self.client = client
        self.result = result
        self.interval = interval
        self.timeout = timeout
        self.stop = stop
        self.thread = threading.Thread(
            target=self._run, name=f"{result.protocol}-{result.mode}-session", daemon=True)

    def _cut(self, reason: str) -> None:
        if not self.result.cut:
            self.result.cut, self.result.cut_at = True, time.monotonic()
            self.result.reason = reason[:100]

    def _run(self) -> None:
        try:
            if self.result.mode == "noop":
                while not self.stop.wait(self.interval):
                    self._noop()
            else:
                self._idle()
            if not self.result.cut:
                self._noop()  # the last word: a session dropped silently fails here
        except (OSError, EOFError, imaplib.IMAP4.error, poplib.error_proto) as exc:
            self._cut(_describe(exc))
        finally:
            self._close()

    def _noop(self) -> None:
        if isinstance(self.client, imaplib.IMAP4):
            status, data = self.client.noop()
            if status != "OK":
                raise imaplib.IMAP4.error(f"NOOP answered {status} {data!r}")
        else:
            self.client.noop()  # raises error_proto unless +OK

    def _idle(self) -> None:
        """Silent until stopped; IMAP in IDLE. Reads the socket directly (with a
        timeout), never through the client's buffered file, which a timeout spoils."""
        sock = self.client.sock
        imap = isinstance(self.client, imaplib.IMAP4)
        buffer = b""
        if imap:
            sock.sendall(b"I1 IDLE\r\n")
            buffer = _read_until(sock, b"+", self.timeout)
        sock.settimeout(_WATCH_SECONDS)
        while not self.stop.is_set():
            try:
                data = sock.recv(4096)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not data:
                self._cut("connection closed by the server")
                return
            buffer = (buffer + data)[-4096:]
            for line in buffer.split(b"\r\n"):
                if line.startswith((b"* BYE", b"-ERR")):
                    self._cut(line.decode("utf-8", "replace"))
                    return
        sock.settimeout(self.timeout)
        if imap:
            sock.sendall(b"DONE\r\n")
            reply = _read_until(sock, b"I1 ", self.timeout)
            if not reply.split(b"I1 ", 1)[1].startswith(b"OK"):
                raise imaplib.IMAP4.error(f"IDLE ended with {reply[-60:]!r}")

    def _close(self) -> None:
        sock = self.client.sock  # quit() sets it to None
        try:
            sock.settimeout(2)
            if isinstance(self.client, imaplib.IMAP4):
                self.client.logout()
            else:
                self.client.quit()
        except (OSError, EOFError, imaplib.IMAP4.error, poplib.error_proto):
            pass
        try:
            sock.close()
        except OSError:
            pass


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    """Read lines until one starts with ``marker``; returns everything read."""
    sock.settimeout(timeout)
    data = b""
    while not any(line.startswith(marker) for line in data.split(b"\r\n")[:-1]):
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("connection closed by the server")
        data += chunk
        if b"* BYE" in data:
            raise imaplib.IMAP4.abort(data.decode("utf-8", "replace").strip()[-80:])
    return data


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class MailSessions:
    """Sessions opened by ``open()``, watched until ``close()`` (or the ``with`` block
    ends), which returns the report."""

    def __init__(self, address: str = "127.0.0.1", interval: float = 1.0,
                 timeout: float = 10.0) -> None:
        self.address = address
        self.interval = interval
        self.timeout = timeout
        self._stop = threading.Event()
        self._sessions: list[_Session] = []
        self._report: Optional[SessionReport] = None

    def open(self, protocol: str, count: int, port: int, login: tuple[str, str],
             mode: str = "noop", tls: bool = True) -> None:
        """Connect and log in ``count`` sessions (implicit TLS unless ``tls`` is false),
        then start watching them. Raises on any failure to log in."""
        if protocol not in PROTOCOLS or mode not in MODES:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, mode one of {MODES}")
        for _ in range(count):
            client = self._connect(protocol, port, tls, login)
            session = _Session(client, SessionResult(protocol, mode, port), self.interval,
                               self.timeout, self._stop)
            self._sessions.append(session)
            session.thread.start()

    def _connect(self, protocol: str, port: int, tls: bool, login: tuple[str, str]) -> Client:
        user, password = login
        client: Client
        if protocol == "imap":
            client = (imaplib.IMAP4_SSL(self.address, port, ssl_context=_context(),
                                        timeout=self.timeout)
                      if tls else imaplib.IMAP4(self.address, port, timeout=self.timeout))
            client.login(user, password)
        else:
            client = (poplib.POP3_SSL(self.address, port, context=_context(),
                                      timeout=self.timeout)
                      if tls else poplib.POP3(self.address, port, timeout=self.timeout))
            client.user(user)
            client.pass_(password)
        return client

    def alive(self) -> int:
        """Sessions not cut so far."""
        return sum(1 for s in self._sessions if not s.result.cut)

    def close(self) -> SessionReport:
        """Stop watching, end every session (NOOP, then LOGOUT/QUIT) and report."""
        if self._report is None:
            self._stop.set()
            for session in self._sessions:
                session.thread.join(self.timeout * 2 + 5)
            self._report = SessionReport([s.result for s in self._sessions])
        return self._report

    def __enter__(self) -> MailSessions:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()


def total(reports: Iterable[SessionReport]) -> SessionReport:
    """Several reports as one."""
    return SessionReport([r for report in reports for r in report.results])
