"""Handshake load and long-lived IMAP sessions, for the renewal benchmark and the demo.

Only ever point these at the lab's private loopback (``lab.enter_private_namespace``):
``HandshakeLoad`` runs back-to-back full TLS handshakes against mail endpoints and
records, per endpoint, how many were attempted, how many failed (and why), and when
each successful one completed and which leaf it got; that answers "how many clients
did the renewal turn away" and "when was the new certificate first served on every
port". ``ImapSessions`` holds established IMAP connections open across a renewal and
reports how many the server cut.

Two clients are available. ``"light"`` (the default) speaks just enough SMTP/IMAP over a
raw socket and does the handshake with the standard library; it checks the replies but
does not watch for bytes injected after the STARTTLS reply. ``"verify"`` uses
``dialogues.handshake``, the strict client, which waits 0.1 s after every STARTTLS reply
for injected bytes: that caps it at about 10 STARTTLS handshakes per second per thread,
so under load the light client probes the server several times as often (the
benchmark prints the measured rates).
"""

from __future__ import annotations

import hashlib
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Callable, Optional

from certbot_postfix_tls._internal import dialogues, tls_client

__all__ = [
    "EndpointStats",
    "HandshakeLoad",
    "ImapSessionResults",
    "ImapSessions",
    "LoadError",
    "LoadResults",
    "light_handshake",
    "mail_endpoints",
]

MAX_DISTINCT_ERRORS = 5
"""How many distinct failure messages are kept per endpoint (with their counts)."""

_MAX_REPLY = 64 * 1024


class LoadError(Exception):
    """One failed handshake; the message says which step failed."""


# --- a light STARTTLS / implicit TLS client ---------------------------------------------


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The served leaf is compared by fingerprint, not validated against a trust store.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_CONTEXT = _client_context()


class _Lines:
    """Line reader over a plain or TLS socket, bounded in size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self, what: str) -> str:
        while b"\n" not in self.buf:
            if len(self.buf) > _MAX_REPLY:
                raise LoadError(f"reply too long {what}")
            data = self.sock.recv(4096)
            if not data:
                raise LoadError(f"connection closed {what}")
            self.buf += data
        raw, _, self.buf = self.buf.partition(b"\n")
        return raw.rstrip(b"\r").decode("utf-8", "replace")

    def smtp_reply(self, what: str) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            text = self.line(what)
            if len(text) < 3 or not text[:3].isdigit():
                raise LoadError(f"not an SMTP reply {what}: {text[:60]!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), lines

    def imap_tagged(self, tag: str, what: str) -> str:
        while True:
            text = self.line(what)
            if text.upper().startswith("* BYE"):
                raise LoadError(f"server said {text[:60]!r} {what}")
            if text.startswith(tag + " "):
                return text[len(tag) + 1 :]


def _wrap(sock: socket.socket, sni: Optional[str]) -> ssl.SSLSocket:
    """The TLS socket (it takes over ``sock``'s descriptor), closed again on failure."""
    tls = _CONTEXT.wrap_socket(sock, server_hostname=sni, do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except ssl.SSLError as err:
        tls.close()
        raise LoadError(f"TLS handshake failed: {err.reason or err}") from err
    except BaseException:
        tls.close()
        raise
    return tls


def _leaf_sha256(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    if not der:
        raise LoadError("TLS handshake completed without a certificate")
    return hashlib.sha256(der).hexdigest()


def _smtp_session(sock: socket.socket, endpoint: tls_client.Endpoint, sni: Optional[str]) -> str:
    holder = [sock]
    try:
        return _smtp_dialogue(holder, endpoint, sni)
    finally:
        holder[-1].close()  # the TLS socket once wrapped


def _imap_session(sock: socket.socket, endpoint: tls_client.Endpoint, sni: Optional[str]) -> str:
    holder = [sock]
    try:
        return _imap_dialogue(holder, endpoint, sni)
    finally:
        holder[-1].close()


def _smtp_dialogue(holder: list[socket.socket], endpoint: tls_client.Endpoint,
                   sni: Optional[str]) -> str:
    sock = holder[0]
    if endpoint.tls == "implicit":
        sock = _wrap(sock, sni)
        holder.append(sock)
    lines = _Lines(sock)
    code, texts = lines.smtp_reply("before the greeting")
    if code != 220:
        raise LoadError(f"greeting {code} {texts[0][:60]}")
    sock.sendall(b"EHLO [127.0.0.1]\r\n")
    code, texts = lines.smtp_reply("after EHLO")
    if code != 250:
        raise LoadError(f"EHLO answered {code} {texts[0][:60]}")
    if endpoint.tls == "starttls":
        if not any(t.upper().split()[:1] == ["STARTTLS"] for t in texts[1:]):
            raise LoadError("no STARTTLS in the EHLO reply")
        sock.sendall(b"STARTTLS\r\n")
        code, texts = lines.smtp_reply("after STARTTLS")
        if code != 220:
            raise LoadError(f"STARTTLS answered {code} {texts[0][:60]}")
        if lines.buf:
            raise LoadError("data after the STARTTLS reply")
        sock = _wrap(sock, sni)
        holder.append(sock)
        lines = _Lines(sock)
    assert isinstance(sock, ssl.SSLSocket)
    digest = _leaf_sha256(sock)
    try:  # courtesy: the handshake already counted as a success
        sock.sendall(b"QUIT\r\n")
        lines.smtp_reply("after QUIT")
    except (OSError, LoadError):
        pass
    return digest


def _imap_dialogue(holder: list[socket.socket], endpoint: tls_client.Endpoint,
                   sni: Optional[str]) -> str:
    sock = holder[0]
    if endpoint.tls == "implicit":
        sock = _wrap(sock, sni)
        holder.append(sock)
    lines = _Lines(sock)
    greeting = lines.line("before the greeting")
    if not greeting.upper().startswith("* OK"):
        raise LoadError(f"greeting {greeting[:60]!r}")
    if endpoint.tls == "starttls":
        sock.sendall(b"a STARTTLS\r\n")
        reply = lines.imap_tagged("a", "after STARTTLS")
        if not reply.upper().startswith("OK"):
            raise LoadError(f"STARTTLS answered {reply[:60]!r}")
        if lines.buf:
            raise LoadError("data after the STARTTLS reply")
        sock = _wrap(sock, sni)
        holder.append(sock)
        lines = _Lines(sock)
    assert isinstance(sock, ssl.SSLSocket)
    digest = _leaf_sha256(sock)
    try:
        sock.sendall(b"z LOGOUT\r\n")
        lines.imap_tagged("z", "after LOGOUT")
    except (OSError, LoadError):
        pass
    return digest


def light_handshake(endpoint: tls_client.Endpoint, sni: Optional[str], timeout: float = 3.0) -> str:
    """One full handshake with a light client; returns the served leaf's SHA-256 (hex).

    SMTP and IMAP, STARTTLS or implicit TLS. Raises LoadError (or OSError) naming the
    step that failed. Every call is a new TCP connection and a full handshake (no
    session resumption).
    """
    sessions: dict[str, Callable[[socket.socket, tls_client.Endpoint, Optional[str]], str]] = {
        "smtp": _smtp_session,
        "imap": _imap_session,
    }
    run = sessions.get(endpoint.protocol)
    if run is None:
        raise LoadError(f"no light client for {endpoint.protocol}")
    sock = socket.create_connection((endpoint.address, endpoint.port), timeout=timeout)
    try:
        return run(sock, endpoint, sni)
    finally:
        sock.close()


def _verify_handshake(endpoint: tls_client.Endpoint, sni: Optional[str], timeout: float) -> str:
    return hashlib.sha256(dialogues.handshake(endpoint, sni, timeout).leaf_der).hexdigest()


_CLIENTS: dict[str, Callable[[tls_client.Endpoint, Optional[str], float], str]] = {
    "light": light_handshake,
    "verify": _verify_handshake,
}


def _describe_error(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    if isinstance(err, socket.timeout):
        return "timed out"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or err}"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


# --- results -----------------------------------------------------------------------------


@dataclass
class EndpointStats:
    """What the load saw on one endpoint; times are ``time.monotonic()`` values."""

    endpoint: tls_client.Endpoint
    attempts: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # first few distinct messages
    served: list[tuple[float, str]] = field(default_factory=list)  # (done at, leaf sha256)
    failed_at: list[float] = field(default_factory=list)
    started: float = 0.0
    stopped: float = 0.0

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def rate(self) -> float:
        """Attempts per second over the whole run."""
        span = self.stopped - self.started
        return self.attempts / span if span > 0 else 0.0

    def first_time_serving(self, sha256: str) -> Optional[float]:
        """When the first handshake that got this leaf completed (None: never)."""
        for moment, digest in self.served:
            if digest == sha256:
                return moment
        return None

    def served_other_after(self, sha256: str) -> int:
        """Handshakes that got another leaf after this one was first served."""
        first = self.first_time_serving(sha256)
        if first is None:
            return 0
        return sum(1 for moment, digest in self.served if moment > first and digest != sha256)

    def serving_only_from(self, sha256: str) -> Optional[float]:
        """When the first handshake with this leaf completed after the last one with
        another leaf: from then on every handshake got it (None: not yet)."""
        stable: Optional[float] = None
        for moment, digest in self.served:
            if digest != sha256:
                stable = None
            elif stable is None:
                stable = moment
        return stable

    def outage(self) -> float:
        """Seconds from the first to the last failure (0 with fewer than two)."""
        return self.failed_at[-1] - self.failed_at[0] if len(self.failed_at) > 1 else 0.0


@dataclass
class LoadResults:
    """Per-endpoint statistics, keyed by port."""

    stats: dict[int, EndpointStats]

    def first_time_serving(self, sha256: str, port: int) -> Optional[float]:
        """Monotonic time of the first handshake on ``port`` that got this leaf."""
        return self.stats[port].first_time_serving(sha256)

    def first_time_serving_everywhere(self, sha256: str) -> Optional[float]:
        """The latest of the per-port first times (None when some port never served it)."""
        times = [s.first_time_serving(sha256) for s in self.stats.values()]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def serving_only_everywhere_from(self, sha256: str) -> Optional[float]:
        """The latest per-port ``serving_only_from`` (None when some port is not there)."""
        times = [s.serving_only_from(sha256) for s in self.stats.values()]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    @property
    def attempts(self) -> int:
        return sum(s.attempts for s in self.stats.values())

    @property
    def failures(self) -> int:
        return sum(s.failures for s in self.stats.values())


# --- the load generator ----------------------------------------------------------------


class HandshakeLoad:
    """``threads`` threads per endpoint doing back-to-back full handshakes.

    After a failure a thread pauses ``pause_after_failure`` seconds, so a refused port
    is not hammered at memory speed (failure counts are therefore bounded by
    threads / pause per second of outage). Every thread stops by itself after
    ``max_seconds``. Use as a context manager, or call start() and stop().
    """

    def __init__(
        self,
        endpoints: Sequence[tls_client.Endpoint],
        sni: Optional[str],
        threads: int = 2,
        timeout: float = 3.0,
        client: str = "light",
        pause_after_failure: float = 0.02,
        max_seconds: float = 600.0,
    ) -> None:
        if client not in _CLIENTS:
            raise ValueError(f"client must be one of {', '.join(_CLIENTS)}")
        ports = [e.port for e in endpoints]
        if len(set(ports)) != len(ports):
            raise ValueError("one endpoint per port")
        self.endpoints = list(endpoints)
        self.sni = sni
        self.threads = threads
        self.timeout = timeout
        self.client = _CLIENTS[client]
        self.pause_after_failure = pause_after_failure
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        self._locks = {e.port: threading.Lock() for e in self.endpoints}
        self._stats = {e.port: EndpointStats(e) for e in self.endpoints}
        self._workers: list[threading.Thread] = []
        self._results: Optional[LoadResults] = None

    def start(self) -> None:
        """Start the threads (once)."""
        if self._workers:
            raise RuntimeError("HandshakeLoad already started")
        now = time.monotonic()
        for endpoint in self.endpoints:
            self._stats[endpoint.port].started = now
            for index in range(self.threads):
                worker = threading.Thread(
                    target=self._run, args=(endpoint, now + self.max_seconds),
                    name=f"load-{endpoint.port}-{index}", daemon=True,
                )
                self._workers.append(worker)
                worker.start()

    def _run(self, endpoint: tls_client.Endpoint, deadline: float) -> None:
        stats, lock = self._stats[endpoint.port], self._locks[endpoint.port]
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                digest = self.client(endpoint, self.sni, self.timeout)
            except Exception as err:  # anything short of a handshake is a failure
                message = _describe_error(err)
                with lock:
                    stats.attempts += 1
                    stats.failures += 1
                    stats.failed_at.append(time.monotonic())
                    if message in stats.errors:
                        stats.errors[message] += 1
                    elif len(stats.errors) < MAX_DISTINCT_ERRORS:
                        stats.errors[message] = 1
                self._stop.wait(self.pause_after_failure)
                continue
            done = time.monotonic()
            with lock:
                stats.attempts += 1
                stats.served.append((done, digest))

    def first_time_serving(self, sha256: str, port: int) -> Optional[float]:
        """Monotonic time of the first handshake on ``port`` that got this leaf (live)."""
        with self._locks[port]:
            return self._stats[port].first_time_serving(sha256)

    def wait_serving(self, sha256: str, timeout: float) -> Optional[float]:
        """Wait until every port served this leaf; the latest first time, or None."""
        deadline = time.monotonic() + timeout
        while True:
            times = [self.first_time_serving(sha256, e.port) for e in self.endpoints]
            if all(t is not None for t in times):
                return max(t for t in times if t is not None)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def stop(self) -> LoadResults:
        """Stop the threads and return what they saw (again on later calls)."""
        if self._results is None:
            self._stop.set()
            for worker in self._workers:
                worker.join(self.timeout * 4 + 5)
            now = time.monotonic()
            for stats in self._stats.values():
                stats.stopped = now
            self._results = LoadResults(dict(self._stats))
        return self._results

    def __enter__(self) -> HandshakeLoad:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


# --- established IMAP sessions -----------------------------------------------------------


@dataclass
class _Session:
    sock: socket.socket
    opened: float
    cut_at: Optional[float] = None  # when the watcher saw BYE or EOF
    probe_failed: bool = False  # NOOP got no OK at the end
    last_line: str = ""

    @property
    def cut(self) -> bool:
        return self.cut_at is not None or self.probe_failed


@dataclass
class ImapSessionResults:
    """What happened to the sessions; times are ``time.monotonic()`` values."""

    opened: int
    cut: int
    cut_times: list[float]  # when the watcher saw each cut (not those found by the probe)
    messages: list[str]  # distinct last lines seen on cut sessions (e.g. "* BYE ...")

    @property
    def alive(self) -> int:
        return self.opened - self.cut


class ImapSessions:
    """``count`` established IMAP connections, held open and watched.

    With ``login`` (user, password) each session logs in, so it is served by an
    ``imap`` process like a real mail client's; without, it stays pre-login in an
    ``imap-login`` process (which survives a stop of Dovecot's master, so it says
    little about restarts). A watcher thread notes when the server closes a session
    (or says BYE); close() then probes each remaining one with NOOP: no tagged OK
    means it was cut. Plain IMAP (143) by default; ``implicit_tls`` for 993.
    """

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = 143,
        count: int = 10,
        implicit_tls: bool = False,
        sni: Optional[str] = None,
        timeout: float = 5.0,
        max_seconds: float = 600.0,
        login: Optional[tuple[str, str]] = None,
    ) -> None:
        self.address = address
        self.login = login
        self.port = port
        self.count = count
        self.implicit_tls = implicit_tls
        self.sni = sni
        self.timeout = timeout
        self.max_seconds = max_seconds
        self._sessions: list[_Session] = []
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Connect ``count`` sessions and read each greeting; raises LoadError on failure."""
        for _ in range(self.count):
            sock = socket.create_connection((self.address, self.port), timeout=self.timeout)
            try:
                if self.implicit_tls:
                    sock = _wrap(sock, self.sni)
                lines = _Lines(sock)
                greeting = lines.line("before the greeting")
                if not greeting.upper().startswith("* OK"):
                    raise LoadError(f"greeted with {greeting[:60]!r}")
                if self.login is not None:
                    user, password = (_imap_quote(v) for v in self.login)
                    sock.sendall(f"l LOGIN {user} {password}\r\n".encode())
                    reply = lines.imap_tagged("l", "after LOGIN")
                    if not reply.upper().startswith("OK"):
                        raise LoadError(f"LOGIN answered {reply[:60]!r}")
            except (OSError, LoadError) as err:
                sock.close()
                raise LoadError(f"IMAP session on port {self.port}: {err}") from err
            self._sessions.append(_Session(sock, time.monotonic()))
        self._watcher = threading.Thread(target=self._watch, name="imap-sessions", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with selectors.DefaultSelector() as selector:
            for session in self._sessions:
                selector.register(session.sock, selectors.EVENT_READ, session)
            while not self._stop.is_set() and time.monotonic() < deadline:
                if not selector.get_map():
                    return
                for key, _ in selector.select(0.2):
                    session = key.data
                    try:
                        data = session.sock.recv(4096)
                    except ssl.SSLWantReadError:
                        continue
                    except OSError:
                        data = b""
                    now = time.monotonic()
                    text = data.decode("utf-8", "replace").strip()
                    with self._lock:
                        if text:
                            session.last_line = text.splitlines()[-1][:80]
                        if not data or text.upper().startswith("* BYE"):
                            if session.cut_at is None:
                                session.cut_at = now
                        if not data:
                            selector.unregister(session.sock)

    def _probe(self, index: int, session: _Session) -> None:
        tag = f"p{index}"
        try:
            session.sock.settimeout(2.0)
            session.sock.sendall(f"{tag} NOOP\r\n".encode())
            reply = _Lines(session.sock).imap_tagged(tag, "after NOOP")
            if not reply.upper().startswith("OK"):
                raise LoadError(f"NOOP answered {reply[:60]!r}")
        except (OSError, LoadError) as err:
            session.probe_failed = True
            session.last_line = session.last_line or _describe_error(err)

    def close(self) -> ImapSessionResults:
        """Stop watching, probe the sessions still open, close all, and report."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for index, session in enumerate(self._sessions):
            if session.cut_at is None:
                self._probe(index, session)
        for session in self._sessions:
            try:
                session.sock.close()
            except OSError:
                pass
        cut = [s for s in self._sessions if s.cut]
        messages: list[str] = []
        for session in cut:
            if session.last_line and session.last_line not in messages:
                messages.append(session.last_line)
        return ImapSessionResults(
            opened=len(self._sessions),
            cut=len(cut),
            cut_times=sorted(s.cut_at for s in cut if s.cut_at is not None),
            messages=messages,
        )

    def __enter__(self) -> ImapSessions:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def _imap_quote(value: str) -> str:
    if any(c in value for c in '\r\n"\\'):
        raise LoadError("IMAP user names and passwords here must not contain quotes or CR/LF")
    return f'"{value}"'


def mail_endpoints(
    address: str = "127.0.0.1", ports: Iterable[int] = (25, 587, 993)
) -> list[tls_client.Endpoint]:
    """Endpoints for the usual ports: 25/587 SMTP STARTTLS, 143 IMAP STARTTLS, 993/465
    implicit TLS."""
    known = {
        25: tls_client.Endpoint("postfix", "smtp", address, 25, "starttls", "smtp"),
        465: tls_client.Endpoint("postfix", "smtp", address, 465, "implicit", "submissions"),
        587: tls_client.Endpoint("postfix", "smtp", address, 587, "starttls", "submission"),
        143: tls_client.Endpoint("dovecot", "imap", address, 143, "starttls", "imap"),
        993: tls_client.Endpoint("dovecot", "imap", address, 993, "implicit", "imaps"),
    }
    return [known[port] for port in ports]
