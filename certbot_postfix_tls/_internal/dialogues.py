"""SMTP, IMAP and POP3 up to and through STARTTLS (or implicit TLS), for the verifier.

Each dialogue greets, reads the capabilities before and after TLS, and never
pipelines: nothing is sent after STARTTLS until the handshake is done, and any
byte the server sends in between is a failure (CVE-2011-0411 class). The
transport (sockets, limits, the TLS handshake) is ``tls_client``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from certbot_postfix_tls._internal.tls_client import (
    Connection,
    Endpoint,
    VerifyError,
    connect,
    printable,
    where_of,
)


@dataclass
class Handshake:
    """What one connection observed."""

    leaf_der: bytes
    chain_der: list[bytes]  # as served, leaf first
    capabilities_before_tls: list[str]  # [] for implicit TLS
    capabilities_after_tls: list[str]
    protocol: str = ""  # the TLS version negotiated, e.g. "TLSv1.3"


@dataclass
class PlaintextSmtp:
    """What an SMTP port answers before STARTTLS: its EHLO keywords and its reply to
    ``MAIL FROM:<>`` (a port that requires TLS answers 530)."""

    keywords: list[str]
    mail_code: int
    mail_reply: str


# handshake(tls_version=...): pin one protocol version. "legacy" is TLS 1.0-1.1 at
# OpenSSL security level 0, to tell a port that only speaks those from one that fails.


class _Dialogue(Connection):
    """A connection speaking one mail protocol's commands."""

    # -- SMTP

    def smtp_reply(self, what: str) -> tuple[int, list[str]]:
        """A complete (multi-line) SMTP reply: code and the text of each line."""
        code = ""
        texts: list[str] = []
        while True:
            line = self.read_line(what)
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise VerifyError(
                    f"{self.where} sent {printable(line)!r} {what}, which is not an SMTP reply."
                )
            if code and line[:3] != code:
                raise VerifyError(
                    f"{self.where} mixed reply codes {code} and {line[:3]} in one reply {what}."
                )
            code = line[:3]
            texts.append(line[4:])
            if line[3:4] != "-":
                return int(code), texts

    def ehlo(self, name: str) -> list[str]:
        """EHLO and its keywords (the reply lines after the first)."""
        self.send(f"EHLO {name}")
        code, texts = self.smtp_reply("after EHLO")
        if code != 250:
            raise VerifyError(
                f"{self.where} answered EHLO with {printable(f'{code} {texts[0]}')!r}."
            )
        return texts[1:]

    def local_name(self) -> str:
        # An address literal needs no DNS lookup (socket.getfqdn() can hang).
        address = str(self.sock.getsockname()[0]).split("%", 1)[0]
        return f"[IPv6:{address}]" if ":" in address else f"[{address}]"

    # -- IMAP

    def imap_command(self, command: str, what: str) -> tuple[str, str, list[str]]:
        """Send a tagged command; return its status, text and the untagged lines."""
        self.tag += 1
        tag = f"a{self.tag}"
        self.send(f"{tag} {command}")
        untagged: list[str] = []
        while True:
            line = self.read_line(what)
            if line.startswith("* "):
                if line[2:6].upper() == "BYE ":
                    raise VerifyError(
                        f"{self.where} ended the session {what}: {printable(line)!r}."
                    )
                untagged.append(line[2:])
                continue
            head, _, rest = line.partition(" ")
            if head != tag:
                raise VerifyError(
                    f"{self.where} sent {printable(line)!r} {what}, which is not an IMAP reply."
                )
            status, _, text = rest.partition(" ")
            return status.upper(), text, untagged

    def imap_capability(self) -> list[str]:
        status, text, untagged = self.imap_command("CAPABILITY", "after CAPABILITY")
        if status != "OK":
            raise VerifyError(
                f"{self.where} answered CAPABILITY with {printable(status + ' ' + text)!r}."
            )
        for line in untagged:
            words = line.split()
            if words and words[0].upper() == "CAPABILITY":
                return words[1:]
        return _imap_code_capabilities(text)

    # -- POP3

    def pop3_capa(self) -> list[str]:
        """CAPA lines; [] when the server does not know CAPA (-ERR)."""
        self.send("CAPA")
        status = self.read_line("after CAPA")
        if status.startswith("-ERR"):
            return []
        if not status.startswith("+OK"):
            raise VerifyError(
                f"{self.where} sent {printable(status)!r} after CAPA, which is not a POP3 reply."
            )
        lines: list[str] = []
        while True:
            line = self.read_line("after CAPA")
            if line == ".":
                return lines
            lines.append(line[1:] if line.startswith("..") else line)


def _imap_code_capabilities(text: str) -> list[str]:
    """Atoms of a [CAPABILITY ...] response code, e.g. in Dovecot's greeting."""
    match = re.search(r"\[CAPABILITY ([^\]]*)\]", text, re.IGNORECASE)
    return match.group(1).split() if match else []


def _has_keyword(capabilities: Iterable[str], keyword: str) -> bool:
    return any(cap.split()[:1] == [keyword] for cap in (c.upper() for c in capabilities))


def _smtp(conv: _Dialogue, starttls: bool, sni: str | None) -> tuple[list[str], list[str]]:
    if not starttls:
        conv.start_tls(sni)
    code, texts = conv.smtp_reply("while waiting for the greeting")
    if code != 220:
        raise VerifyError(
            f"{conv.where} greeted with {printable(f'{code} {texts[0]}')!r} instead of 220.",
            kind="greeting",
        )
    name = conv.local_name()
    caps = conv.ehlo(name)
    before: list[str] = []
    if starttls:
        before = caps
        if not _has_keyword(caps, "STARTTLS"):
            raise VerifyError(
                f"{conv.where} does not advertise STARTTLS in its EHLO reply.", kind="no-starttls"
            )
        conv.send("STARTTLS")
        code, texts = conv.smtp_reply("after STARTTLS")
        if code != 220:
            raise VerifyError(
                f"{conv.where} answered STARTTLS with {printable(f'{code} {texts[0]}')!r}"
                " instead of 220.",
                kind="starttls-refused",
            )
        conv.refuse_early_data("STARTTLS")
        conv.start_tls(sni)
        caps = conv.ehlo(name)

    def bye() -> None:
        conv.send("QUIT")
        conv.smtp_reply("after QUIT")

    conv.quit(bye)
    return before, caps


def _imap(conv: _Dialogue, starttls: bool, sni: str | None) -> tuple[list[str], list[str]]:
    if not starttls:
        conv.start_tls(sni)
    greeting = conv.read_line("while waiting for the greeting")
    if not greeting.upper().startswith("* OK"):
        raise VerifyError(
            f"{conv.where} greeted with {printable(greeting)!r} instead of * OK.", kind="greeting"
        )
    caps = conv.imap_capability() or _imap_code_capabilities(greeting)
    before: list[str] = []
    if starttls:
        before = caps
        if "STARTTLS" not in (c.upper() for c in caps):
            raise VerifyError(
                f"{conv.where} does not advertise STARTTLS in its capabilities.",
                kind="no-starttls",
            )
        status, text, _ = conv.imap_command("STARTTLS", "after STARTTLS")
        if status != "OK":
            raise VerifyError(
                f"{conv.where} answered STARTTLS with {printable(status + ' ' + text)!r}"
                " instead of OK.",
                kind="starttls-refused",
            )
        conv.refuse_early_data("STARTTLS")
        conv.start_tls(sni)
        caps = conv.imap_capability()
    conv.quit(lambda: conv.imap_command("LOGOUT", "after LOGOUT"))
    return before, caps


def _pop3(conv: _Dialogue, starttls: bool, sni: str | None) -> tuple[list[str], list[str]]:
    if not starttls:
        conv.start_tls(sni)
    greeting = conv.read_line("while waiting for the greeting")
    if not greeting.startswith("+OK"):
        raise VerifyError(
            f"{conv.where} greeted with {printable(greeting)!r} instead of +OK.", kind="greeting"
        )
    caps = conv.pop3_capa()
    before: list[str] = []
    if starttls:
        before = caps
        if not _has_keyword(caps, "STLS"):
            raise VerifyError(
                f"{conv.where} does not advertise STLS in its CAPA reply.", kind="no-starttls"
            )
        conv.send("STLS")
        reply = conv.read_line("after STLS")
        if not reply.startswith("+OK"):
            raise VerifyError(
                f"{conv.where} answered STLS with {printable(reply)!r} instead of +OK.",
                kind="starttls-refused",
            )
        conv.refuse_early_data("STLS")
        conv.start_tls(sni)
        caps = conv.pop3_capa()

    def bye() -> None:
        conv.send("QUIT")
        conv.read_line("after QUIT")

    conv.quit(bye)
    return before, caps


_PROTOCOLS = {"smtp": _smtp, "imap": _imap, "pop3": _pop3}


def handshake(endpoint: Endpoint, sni: str | None, timeout: float = 10.0,
              tls_version: str | None = None, key_type: str | None = None,
              prefer: str | None = None) -> Handshake:
    """Connect, negotiate TLS as the endpoint is configured, and report what was served.

    SNI is sent only when ``sni`` is a DNS name. Nothing is ever pipelined. Raises
    VerifyError when nothing listens, the protocol exchange fails, STARTTLS is missing
    or refused, the server sends data before the handshake, or TLS fails.
    ``tls_version`` (one of TLS_VERSIONS) pins the protocol version offered;
    ``key_type`` ("rsa", "ecdsa") offers only that key type's signature algorithms;
    ``prefer`` offers every key type's, that one's first.
    """
    run = _PROTOCOLS.get(endpoint.protocol)
    if run is None or endpoint.tls not in ("starttls", "implicit"):
        raise VerifyError(
            f"Cannot check {where_of(endpoint)}: unknown protocol {endpoint.protocol!r} "
            f"or TLS mode {endpoint.tls!r}."
        )
    sock = connect(endpoint, timeout)
    try:
        conv = _Dialogue(endpoint, sock, timeout, tls_version, key_type, prefer)
        before, after = run(conv, endpoint.tls == "starttls", sni)
        return Handshake(conv.leaf_der, conv.chain_der, before, after, conv.protocol)
    finally:
        sock.close()


def smtp_before_tls(endpoint: Endpoint, timeout: float = 10.0) -> PlaintextSmtp:
    """What an SMTP STARTTLS port offers and accepts before TLS: EHLO, then
    ``MAIL FROM:<>`` (no RCPT follows, so nothing is ever sent), then QUIT."""
    sock = connect(endpoint, timeout)
    try:
        conv = _Dialogue(endpoint, sock, timeout)
        code, texts = conv.smtp_reply("while waiting for the greeting")
        if code != 220:
            raise VerifyError(
                f"{conv.where} greeted with {printable(f'{code} {texts[0]}')!r} instead of 220.",
                kind="greeting",
            )
        keywords = conv.ehlo(conv.local_name())
        conv.send("MAIL FROM:<>")
        mail_code, mail_texts = conv.smtp_reply("after MAIL FROM")

        def bye() -> None:
            conv.send("QUIT")
            conv.smtp_reply("after QUIT")

        conv.quit(bye)
        return PlaintextSmtp(keywords, mail_code, printable(" ".join(mail_texts)))
    finally:
        sock.close()
