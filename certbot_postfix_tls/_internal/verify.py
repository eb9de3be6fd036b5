"""Prove by a real handshake which certificate each mail endpoint serves.

What should be served (``ExpectedCert``), the verdict on what was (``check_endpoint``:
fingerprint, chain, name, expiry; compared by SHA-256, no trust store), and one-line
summaries of failures. The connection itself is ``tls_client`` (transport) and
``dialogues`` (SMTP, IMAP, POP3).
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from certbot_postfix_tls._internal import certs, constants, expiry
from certbot_postfix_tls._internal.dialogues import Handshake, handshake
from certbot_postfix_tls._internal.tls_client import (
    Advice,
    Endpoint,
    VerifyError,
    a_label,
    is_ip,
    printable,
    where_of,
)

__all__ = [
    "EndpointResult",
    "ExpectedCert",
    "certificate_covers",
    "check_endpoint",
    "choose_address",
    "dns_name_matches",
    "key_algorithm",
    "log_cause",
    "summarize",
]


WARN_DAYS = constants.WARN_DAYS
"""At most this many days left is a WARNING (90-day certificates and longer); shorter
lifetimes warn later, in proportion (``expiry.judge``)."""

_RETRY_INTERVAL = 0.2




@dataclass(frozen=True)
class _CertInfo:
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime
    algorithm: str = ""  # key_algorithm() of the certificate's public key
    not_before: datetime | None = None


@dataclass(frozen=True)
class ExpectedCert:
    """The certificate that should be served, taken from a lineage's fullchain.pem."""

    leaf_sha256: str
    intermediates_sha256: tuple[str, ...]
    names: tuple[str, ...]
    not_after: datetime
    # None in a state recorded before it was kept: expiry then assumes 90 days of lifetime.
    not_before: datetime | None = None
    key_type: str = ""  # "rsa", "ecdsa" (key_class of the leaf); "" when unknown

    @classmethod
    def from_fullchain(cls, path: str) -> ExpectedCert:
        """Read a PEM fullchain file (leaf first); raises VerifyError naming the file."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as err:
            raise VerifyError(f"Cannot read {path}: {err.strerror or err}.") from err
        try:
            ders = [cert.public_bytes(Encoding.DER) for cert in certs.load_pem_chain(data)]
        except ValueError as err:
            raise VerifyError(f"{path} holds no readable PEM certificate ({err}).") from err
        info = _cert_info(ders[0])
        if info is None:
            raise VerifyError(f"{path} starts with an unreadable certificate.")
        return cls(
            leaf_sha256=_sha256(ders[0]),
            intermediates_sha256=tuple(_sha256(d) for d in ders[1:]),
            names=info.dns_names,
            not_after=info.not_after,
            not_before=info.not_before,
            key_type=key_class(info.algorithm),
        )


@dataclass
class EndpointResult:
    """The verdict for one endpoint; fields are the JSON object ``verify --json`` prints."""

    service: str
    address: str
    port: int
    tls: str
    sni: str | None  # the SNI actually sent (None when none was, e.g. for an IP)
    status: str
    served_sha256: str | None
    expected_sha256: str
    chain_complete: bool | None
    name_matches: bool | None
    days_left: int | None
    message: str
    # Not part of the JSON: what summarize() needs to group and explain failures.
    kind: str = field(default="", compare=False)
    endpoint: Endpoint | None = field(default=None, compare=False, repr=False)
    # The served leaf's expiry and key algorithm (None/"" without a handshake), for metrics.
    served_not_after: datetime | None = field(default=None, compare=False)
    served_not_before: datetime | None = field(default=None, compare=False)
    served_algorithm: str = field(default="", compare=False)
    # The key type the client asked for ("rsa"/"ecdsa" by signature algorithms), when an
    # endpoint serves two certificates side by side; "" when the client offered all.
    algorithm: str = ""

    def to_json(self) -> dict[str, object]:
        """The endpoint as a JSON-ready dict, keys in a fixed order."""
        return {
            "service": self.service,
            "address": self.address,
            "port": self.port,
            "tls": self.tls,
            "sni": self.sni,
            "status": self.status,
            "served_sha256": self.served_sha256,
            "expected_sha256": self.expected_sha256,
            "chain_complete": self.chain_complete,
            "name_matches": self.name_matches,
            "days_left": self.days_left,
            "message": self.message,
            "algorithm": self.algorithm or None,
        }



# --- addresses ----------------------------------------------------------------------------

WILDCARDS = {4: "0.0.0.0", 6: "::"}
LOOPBACKS = {4: "127.0.0.1", 6: "::1"}


def ip_version(address: str) -> int | None:
    """4 or 6 for an IP address (brackets and %scope allowed), None for a name."""
    try:
        return ipaddress.ip_address(address.strip("[]").split("%", 1)[0]).version
    except ValueError:
        return None


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or the names Postfix and Dovecot use for them."""
    if address.lower() in ("localhost", "loopback-only"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def choose_address(bound: Iterable[str], verify_address: str) -> str:
    """Where to connect to reach a listener bound to ``bound`` (IP addresses; the
    wildcards ``0.0.0.0`` and ``::`` for all addresses of a family, IPv6-only as Postfix
    and Dovecot bind them).

    ``verify_address`` when the listener accepts it (it is bound, or a wildcard of its
    family is); else the loopback address of a wildcard's family, IPv4 first; else a
    bound loopback address; else the first bound address.
    """
    bound = list(bound)
    wanted = verify_address.strip("[]")
    family = ip_version(wanted)
    for address in bound:
        if address == wanted or (address in WILDCARDS.values() and ip_version(address) == family):
            return wanted
    for version in (4, 6):
        if WILDCARDS[version] in bound:
            return LOOPBACKS[version]
    loopback = [a for a in bound if is_loopback(a)]
    if loopback:
        return loopback[0]
    return bound[0] if bound else wanted


# --- names ------------------------------------------------------------------------------


def dns_name_matches(pattern: str, hostname: str) -> bool:
    """Whether a certificate DNS name matches hostname (RFC 6125 section 6.4).

    A wildcard is only accepted as the whole left-most label and covers exactly one
    label: ``*.example.com`` matches ``mail.example.com`` but neither ``example.com`` nor
    ``a.mail.example.com``. Wildcards directly under a TLD (``*.com``) never match.
    """
    pat, host = a_label(pattern), a_label(hostname)
    if not pat or not host:
        return False
    if "*" not in pat:
        return pat == host
    plabels, hlabels = pat.split("."), host.split(".")
    if plabels[0] != "*" or any("*" in label for label in plabels[1:]) or len(plabels) < 3:
        return False
    return len(hlabels) == len(plabels) and bool(hlabels[0]) and hlabels[1:] == plabels[1:]


def certificate_covers(names: Iterable[str], hostname: str) -> bool:
    """Whether any of a certificate's DNS names matches hostname."""
    return any(dns_name_matches(name, hostname) for name in names)


# --- certificates -----------------------------------------------------------------------


_sha256 = certs.sha256_hex


_not_after = certs.not_after


def _cert_info(der: bytes) -> _CertInfo | None:
    try:
        cert = certs.load_der(der)
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        common_name = str(cns[0].value) if cns else None
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = tuple(san.get_values_for_type(x509.DNSName))
            ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            dns, ips = (), ()
        return _CertInfo(common_name, dns, ips, _not_after(cert), key_algorithm(cert),
                         certs.not_before(cert))
    except ValueError:
        return None


_CURVES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}


def key_algorithm(cert: x509.Certificate) -> str:
    """The certificate's key type and size from a small set (rsa2048, ecdsa-p256,
    ed25519, ...): bounded, so usable as a metric label."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "other"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ecdsa-{_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448"
    return "other"


def key_class(algorithm: str) -> str:
    """"rsa" or "ecdsa" for a key_algorithm() value (what a client's signature
    algorithms choose between); "" for any other."""
    for kind in ("rsa", "ecdsa"):
        if algorithm.startswith(kind):
            return kind
    return ""


def other_key_type(key_type: str) -> str | None:
    """The key type a client could be served instead of ``key_type`` ("rsa" <-> "ecdsa")."""
    return {"rsa": "ecdsa", "ecdsa": "rsa"}.get(key_type)


def chain_out_of_order(chain: Sequence[bytes]) -> int | None:
    """The position (1-based, leaf = 0) of the first certificate received that does not
    issue the one before it, as a scanner checks the received order; None when every
    certificate is followed by its issuer (or a certificate cannot be read: the
    fingerprint and chain checks say so)."""
    try:
        parsed = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return None
    for position in range(1, len(parsed)):
        if parsed[position - 1].issuer != parsed[position].subject:
            return position
    return None


def _describe(der: bytes, info: _CertInfo | None) -> str:
    prefix = f"sha256 {_sha256(der)[:16]}"
    if info is None:
        return f"an unparseable certificate ({prefix})"
    parts = []
    if info.common_name:
        parts.append(f"CN={printable(info.common_name)}")
    names = info.dns_names + info.ip_addresses
    if names:
        parts.append("names " + ", ".join(printable(n) for n in names[:5]))
        if len(names) > 5:
            parts[-1] += f" and {len(names) - 5} more"
    return f"a certificate for {'; '.join(parts) or 'no name'} ({prefix})"


def describe_der(der: bytes) -> str:
    """One phrase naming a served certificate: CN, names and SHA-256 prefix."""
    return _describe(der, _cert_info(der))


# --- the client -------------------------------------------------------------------------


# --- verdict ----------------------------------------------------------------------------


def _days_left(not_after: datetime, now: datetime) -> int:
    return int((not_after - now).total_seconds() // 86400)


def _judge(
    endpoint: Endpoint,
    expected: ExpectedCert,
    sni: str | None,
    shake: Handshake,
    now: datetime,
    prefer: str | None = None,
) -> EndpointResult:
    where = where_of(endpoint)
    served = _sha256(shake.leaf_der)
    info = _cert_info(shake.leaf_der)
    judged = (expiry.judge(info.not_after, info.not_before, now) if info else
              expiry.judge(expected.not_after, expected.not_before, now))
    days_left = judged.days_left
    target = sni or (expected.names[0] if expected.names else None)
    name_ok: bool | None = None
    if target is not None and info is not None:
        if is_ip(target):
            wanted = ipaddress.ip_address(target.strip("[]").split("%", 1)[0])
            name_ok = any(ipaddress.ip_address(ip) == wanted for ip in info.ip_addresses)
        else:
            name_ok = certificate_covers(info.dns_names, target)
    elif target is not None:
        name_ok = False

    def result(status: str, chain: bool | None, message: str, kind: str) -> EndpointResult:
        return EndpointResult(
            service=endpoint.service,
            address=endpoint.address,
            port=endpoint.port,
            tls=endpoint.tls,
            sni=sni if sni and not is_ip(sni) else None,
            status=status,
            served_sha256=served,
            expected_sha256=expected.leaf_sha256,
            chain_complete=chain,
            name_matches=name_ok,
            days_left=days_left,
            message=message,
            kind=kind,
            endpoint=endpoint,
            served_not_after=info.not_after if info else None,
            served_not_before=info.not_before if info else None,
            served_algorithm=info.algorithm if info else "",
        )

    served_type = key_class(info.algorithm) if info else ""
    if served != expected.leaf_sha256 and prefer and served_type == prefer:
        # The client put the other key type first and got a certificate of that type:
        # one is configured beside the deployed one, and clients of that type get it.
        return result(
            "CRITICAL",
            None,
            f"{where} serves {_describe(shake.leaf_der, info)} to clients that prefer "
            f"{prefer.upper()} keys (an {prefer.upper()}-only client gets nothing else), "
            f"beside the deployed {expected.key_type.upper()} certificate (sha256 "
            f"{expected.leaf_sha256[:16]}) - remove it from "
            f"{endpoint.advice.alt_cert_setting}.",
            "alt-cert",
        )
    if served != expected.leaf_sha256:
        # Chain completeness is judged against the deployed fullchain: meaningless here.
        return result(
            "CRITICAL",
            None,
            f"{where} serves {_describe(shake.leaf_der, info)} instead of the deployed one"
            f" (sha256 {expected.leaf_sha256[:16]}) - reload the service or check which"
            " certificate file it reads.",
            "other-cert",
        )

    served_chain = {_sha256(der) for der in shake.chain_der[1:]}
    chain_ok = all(h in served_chain for h in expected.intermediates_sha256)
    problems: list[str] = []
    kinds: list[str] = []
    if not chain_ok:
        kinds.append("chain")
        problems.append("serves the leaf without its chain - point the service at fullchain.pem")
    misplaced = chain_out_of_order(shake.chain_der)
    if chain_ok and misplaced is not None:
        kinds.append("chain-order")
        problems.append(
            f"sends its chain out of order (certificate {misplaced + 1} received does not "
            f"issue certificate {misplaced}), which strict clients and scanners reject - point "
            f"{endpoint.setting or endpoint.advice.cert_setting} at fullchain.pem as certbot "
            "writes it (leaf, then each issuer)")
    if name_ok is False:
        kinds.append("name")
        covered = ", ".join(printable(n) for n in (info.dns_names if info else ())[:5])
        problems.append(
            f"serves a certificate that does not cover {printable(str(target))}"
            f" (it covers {covered or 'no DNS name'})"
        )
    if judged.expired:
        kinds.append("expired")
        problems.append(
            f"serves a certificate that {judged.reason()} - run certbot renew"
        )
    elif judged.status == "CRITICAL":
        kinds.append("expiring")
        problems.append(
            f"serves the deployed certificate, but it {judged.reason()} - run certbot renew"
            " and check the renewal hooks"
        )
    if problems:
        return result("CRITICAL", chain_ok, f"{where} {'; '.join(problems)}.", kinds[0])
    if judged.status == "WARNING":
        return result(
            "WARNING",
            chain_ok,
            f"{where} serves the deployed certificate, but it {judged.reason()}"
            " - check that renewal works.",
            "expiring",
        )
    return result(
        "OK",
        chain_ok,
        f"{where} serves the deployed certificate (sha256 {served[:16]}) with its chain,"
        f" valid for {printable(str(target))} for {expiry.duration(judged.left)} more.",
        "ok",
    )


def check_endpoint(
    endpoint: Endpoint,
    expected: ExpectedCert,
    sni: str | None,
    retry_seconds: float = 5.0,
    timeout: float = 10.0,
    now: datetime | None = None,
    key_type: str | None = None,
) -> EndpointResult:
    """Handshake with endpoint and judge the served certificate against ``expected``.

    CRITICAL when the endpoint cannot be reached or the protocol/TLS exchange fails,
    another leaf is served, an intermediate of fullchain.pem is missing from the served
    chain, the name (``sni``, else the first expected name) is not covered, or the
    certificate has expired or is about to, the chain is received out of order, or
    (``key_type`` not pinned) a certificate of the other key type is served to a client
    that puts that type first; WARNING when certbot should have renewed it long ago
    (``expiry.judge``: 14 days left of 90, 25 hours of 160); OK otherwise.
    While the connection is refused/dropped or another leaf is served, it retries about
    every 0.2 s for ``retry_seconds`` (an old process may still answer after a reload)
    and reports the last attempt.
    """
    # One handshake does both: a client that offers the other key type first gets this
    # lineage's certificate only where no certificate of the other type is configured
    # (unless the server imposes its own order: then a second, other-type-only one).
    prefer = None if key_type else other_key_type(expected.key_type)
    deadline = time.monotonic() + retry_seconds
    while True:
        retry = False
        try:
            shake = handshake(endpoint, sni, timeout, key_type=key_type, prefer=prefer)
        except VerifyError as err:
            retry = err.retryable
            result = EndpointResult(
                service=endpoint.service,
                address=endpoint.address,
                port=endpoint.port,
                tls=endpoint.tls,
                sni=sni if sni and not is_ip(sni) else None,
                status="CRITICAL",
                served_sha256=None,
                expected_sha256=expected.leaf_sha256,
                chain_complete=None,
                name_matches=None,
                days_left=None,
                message=str(err),
                kind=err.kind,
                endpoint=endpoint,
            )
        else:
            moment = now or datetime.now(timezone.utc)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            result = _judge(endpoint, expected, sni, shake, moment, prefer)
            retry = result.served_sha256 != expected.leaf_sha256
        result.algorithm = key_type or ""
        remaining = deadline - time.monotonic()
        if not retry or remaining <= 0:
            if prefer and endpoint.server_order and result.served_sha256 == expected.leaf_sha256:
                return _other_key_type(endpoint, expected, sni, timeout, now, prefer) or result
            return result
        time.sleep(min(_RETRY_INTERVAL, remaining))


def _other_key_type(endpoint: Endpoint, expected: ExpectedCert, sni: str | None,
                    timeout: float, now: datetime | None, other: str) -> EndpointResult | None:
    """A server imposing its own order serves its preferred key type whatever the client
    prefers, so only a client offering nothing but ``other`` shows a certificate of that
    type: the verdict when one is served, None when the handshake fails (there is none)."""
    try:
        shake = handshake(endpoint, sni, timeout, key_type=other)
    except VerifyError:
        return None
    moment = now or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return _judge(endpoint, expected, sni, shake, moment, other)


# --- failure summaries ------------------------------------------------------------------

# How much of the end of a log file to read for a cause, and how old a line may be.
_LOG_TAIL = 256 * 1024
_LOG_WINDOW = 15 * 60
_TLS_WORDS = re.compile(r"TLS|SSL|certificate|private key|\bkey\b|chain", re.IGNORECASE)
# Follow-up lines that only repeat that TLS failed; the line before them says why.
_GENERIC = re.compile(
    r"^(TLS library problem|TLS server initialization failed|No server certs available"
    r"|disabling TLS support|SSL_accept error)", re.IGNORECASE)
# Lines that say what went wrong (not, say, a note about ignored legacy parameters).
_FAILURE = re.compile(
    r"cannot|can't|error|unable|fail|no such file|permission denied|does not match|mismatch",
    re.IGNORECASE)
# Failure kinds whose cause a TLS-speaking service logs.
_LOGGED_KINDS = ("starttls-refused", "tls", "closed")


def log_time(line: str, now: datetime) -> datetime | None:
    """The timestamp of a syslog-style (``Nov 30 04:46:45``) or RFC 3339 log line."""
    try:
        if line[:4].isdigit():
            stamp = datetime.fromisoformat(line.split()[0])
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=now.astimezone().tzinfo)
        local = now.astimezone()
        stamp = datetime.strptime(f"{local.year} {line[:15]}", "%Y %b %d %H:%M:%S")
        return stamp.replace(tzinfo=local.tzinfo)
    except (ValueError, IndexError):
        return None


def _log_cause(result: EndpointResult) -> str:
    """The service's own reason for a failed TLS start, from its log file when it writes
    one (Postfix's maillog_file); "" when the log shows none."""
    endpoint = result.endpoint
    if endpoint is None or not endpoint.log_file:
        return ""
    return log_cause(read_log_tail(endpoint.log_file), endpoint.advice.log_programs)


def read_log_tail(path: str) -> str:
    """The end of a log file (what recent causes are looked for in); "" if unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - _LOG_TAIL))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_cause(text: str, programs: Sequence[str]) -> str:
    """From a daemon's log text, lines of its ``programs`` only (``Advice.log_programs``):
    the newest recent warning about a file, key or certificate that says what failed;
    "" when there is none."""
    now = datetime.now(timezone.utc)
    found: list[str] = []
    for line in text.splitlines():
        if not any(program in line for program in programs):
            continue
        when = log_time(line, now)
        if when is not None and abs((now - when).total_seconds()) > _LOG_WINDOW:
            continue
        for marker in ("warning: ", "error: ", "fatal: ", "Error: ", "Fatal: "):
            if marker in line:
                message = line.split(marker, 1)[1].strip()
                if _TLS_WORDS.search(message):
                    found.append(message)
                break
    recent = list(dict.fromkeys(reversed(found[-12:])))  # newest first, no repeats
    specific = [m for m in recent if not _GENERIC.search(m) and _FAILURE.search(m)]
    return printable(specific[0], 240) if specific else ""


def _fix(result: EndpointResult) -> tuple[str, str]:
    """(setting that decides it, what to do) for a failure kind."""
    endpoint = result.endpoint
    advice = endpoint.advice if endpoint else Advice()
    cert_setting = endpoint.setting if endpoint and endpoint.setting else advice.cert_setting
    reload = advice.reload
    kind = result.kind
    if kind == "other-cert":
        return cert_setting, f"point it at the deployed lineage, then {reload}"
    if kind == "chain":
        return cert_setting, "point it at fullchain.pem (key+fullchain file), not cert.pem"
    if kind == "chain-order":
        return cert_setting, f"point it at fullchain.pem as certbot writes it, then {reload}"
    if kind == "alt-cert":
        return (advice.alt_cert_setting,
                f"remove the other certificate (or deploy that key type's lineage for the "
                f"same names beside this one, as a pair), then {reload}")
    if kind == "name":
        return "the certificate's names", "issue the certificate for that name (certbot -d)"
    if kind in ("expired", "expiring"):
        return cert_setting, "run certbot renew and check the renewal hooks"
    if kind == "no-starttls":
        return advice.tls_setting, advice.tls_fix
    if kind == "starttls-refused":
        return cert_setting, f"fix what the log names, then {reload}"
    if kind == "closed":
        return "", ""
    if kind in ("refused", "timeout"):
        return (advice.listen_setting,
                "start the service, or check that it listens on this address and port")
    if kind == "tls":
        return (f"{advice.protocol_setting} and {cert_setting}",
                "check the TLS settings of this port")
    if kind == "early-data":
        return "the software in front of this port", "upgrade or remove what injects data"
    return "", ""


def _where_result(result: EndpointResult) -> str:
    if result.endpoint is not None:
        return where_of(result.endpoint)
    host = f"[{result.address}]" if ":" in result.address else result.address
    return f"{host}:{result.port} ({result.service})"


def _detail(result: EndpointResult, where: str) -> str:
    message = result.message.rstrip(".")
    if message.startswith(where + " "):
        return message[len(where) + 1 :]
    for prefix, short in (("TLS with", "TLS"), ("Nothing listens on", "nothing listens"),
                          ("Connecting to", "connecting"), ("Cannot connect to", "cannot connect"),
                          ("Cannot check", "cannot check")):
        message = message.replace(f"{prefix} {where}", short)
    return message.replace(where, "the port")


def _sni_phrase(snis: list[str | None]) -> str:
    names = [s for s in snis if s]
    parts = []
    if None in snis:
        parts.append("without SNI")
    if names:
        parts.append("with SNI " + ", ".join(names))
    return " and ".join(parts)


def summarize(
    results: Iterable[EndpointResult], statuses: Iterable[str] = ("CRITICAL",)
) -> list[str]:
    """One line per failed endpoint, for deploy, hook and CLI messages.

    Results that fail the same way on the same port (with and without SNI, or with
    several names) become one line listing the SNI names. Each line says where, what
    the port served or answered, the setting that decides it and the fix; a cause is
    named only when the reply or the service's own log shows it.
    """
    wanted = set(statuses)
    groups: dict[tuple[str, str, str, str], list[EndpointResult]] = {}
    for result in results:
        if result.status not in wanted:
            continue
        where = _where_result(result)
        key = (where, result.tls, result.kind, _detail(result, where))
        groups.setdefault(key, []).append(result)
    lines = []
    for (where, _tls, kind, detail), members in groups.items():
        first = members[0]
        snis = list(dict.fromkeys(m.sni for m in members))
        line = f"port {first.port}, {where}, {_sni_phrase(snis)}: {detail}"
        if kind in _LOGGED_KINDS:
            cause = _log_cause(first)
            advice = first.endpoint.advice if first.endpoint else Advice()
            if cause:
                line += f"; {advice.display}'s log says: {cause}"
            elif advice.no_log_hint and not (first.endpoint and first.endpoint.log_file):
                line += f"; {advice.no_log_hint}"
        setting, fix = _fix(first)
        if setting:
            line += f"; decided by {setting}"
        if fix:
            line += f"; fix: {fix}"
        lines.append(line + ".")
    return lines
