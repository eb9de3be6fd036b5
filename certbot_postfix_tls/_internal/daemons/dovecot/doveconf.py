"""What ``doveconf`` and ``doveadm`` print: the effective configuration (its TLS
endpoints), which dovecot.conf this machine's Dovecot reads, established sessions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional

from certbot_postfix_tls._internal import constants, process
from certbot_postfix_tls._internal.tls_client import Advice, Endpoint
from certbot_postfix_tls._internal.verify import choose_address

DEFAULT_CONFIG = constants.CLI_DEFAULTS["dovecot_config"]
# Where packaged Dovecots keep dovecot.conf: Debian/Ubuntu and RHEL/Fedora, then the
# FreeBSD port (built with --sysconfdir=/usr/local/etc). Looked at, in this order, when
# the file doveconf was built to read does not exist.
KNOWN_CONFIGS = (DEFAULT_CONFIG, "/usr/local/etc/dovecot/dovecot.conf")

NAME = "dovecot"  # the daemon's name in the registry, the state and endpoints
ADVICE = Advice(
    display="Dovecot",
    reload="doveadm reload",
    start="dovecot",
    cert_setting="ssl_cert/ssl_key (ssl_server_cert_file/key_file in 2.4)",
    tls_setting="ssl in Dovecot's configuration",
    tls_fix="set ssl = yes",
    listen_setting="listen and the inet_listener",
    protocol_setting="ssl_min_protocol/ssl_cipher_list",
    alt_cert_setting="ssl_alt_cert/ssl_alt_key (ssl_server_alt_cert_file/key_file in 2.4)",
    log_programs=("imap-login", "pop3-login", "config", "dovecot"),
    units=("dovecot",),
    stop_commands=("doveadm stop",),
)
LOGIN_SERVICES = {"imap-login": "imap", "pop3-login": "pop3"}
# The server imposes its order of suites (yes in 2.3; server in 2.4's renamed setting).
PREFER_SERVER = ("ssl_prefer_server_ciphers", "ssl_server_prefer_ciphers")
MIN_PROTOCOL = "ssl_min_protocol"
# ssl_min_protocol values that let clients use something older than TLS 1.2 (ANY is
# SSLv3 and later; LATEST and TLSv1.2+ are fine).
LEGACY_MIN_PROTOCOLS = ("ANY", "SSLv3", "TLSv1", "TLSv1.1")


def legacy_min_protocol(value: str) -> bool:
    """Whether Dovecot's ``ssl_min_protocol`` allows TLS 1.0/1.1 (or SSLv3)."""
    return value.strip() in LEGACY_MIN_PROTOCOLS


def legacy_protocol_warning(config_file: str, value: str) -> str:
    """The sentence deploy and doctor say about an ``ssl_min_protocol`` that allows
    TLS 1.0/1.1: the plugin never changes it (an operator may still serve an old client)."""
    return (f"Dovecot ({config_file}) has ssl_min_protocol = {value}: IMAP and POP3 clients "
            "may log in over TLS 1.0/1.1, which RFC 8996 forbids (certbot-postfix-tls leaves "
            "it as it is); fix: set `ssl_min_protocol = TLSv1.2` there, then doveadm reload")


# --- effective configuration (doveconf output) -----------------------------------------


@dataclass
class Section:
    """One block of ``doveconf`` output: its settings and its sub-blocks, in order."""

    settings: dict[str, str] = field(default_factory=dict)
    children: list[tuple[str, Section]] = field(default_factory=list)


def parse_doveconf(text: str) -> Section:
    """Parse what ``doveconf`` prints (``name = value`` lines, ``header {`` ... ``}``)."""
    root = Section()
    stack = [root]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "}":
            if len(stack) > 1:
                stack.pop()
        elif line.endswith("{") and "=" not in line:
            child = Section()
            stack[-1].children.append((" ".join(line[:-1].split()), child))
            stack.append(child)
        else:
            name, sep, value = line.partition("=")
            if sep:
                stack[-1].settings[name.strip()] = value.strip()
    return root


def _protocols(root: Section) -> set[str]:
    if "protocols" in root.settings:  # 2.3: protocols = imap pop3
        return set(root.settings["protocols"].split())
    for header, child in root.children:  # 2.4: protocols { imap = yes }
        if header == "protocols":
            return {name for name, value in child.settings.items() if value == "yes"}
    return set()


def _addresses(listen: str, verify_address: str) -> list[str]:
    """Where to connect for a ``listen`` value: ``*`` (all IPv4), ``::`` (all IPv6,
    IPv6-only as Dovecot binds it), addresses, names. The wildcards are one listener
    each, reached at verify_address when it is of their family, else at the loopback
    address of their family (``::1`` for ``listen = ::``); every listed address is
    one endpoint."""
    result: list[str] = []
    wildcards: list[str] = []
    for item in re.split(r"[,\s]+", listen.strip()):
        item = item.strip("[]")
        if not item:
            continue
        if item in ("*", "0.0.0.0", "::"):
            wildcards.append("::" if item == "::" else "0.0.0.0")
            continue
        if item not in result:
            result.append(item)
    if wildcards:
        address = choose_address(wildcards, verify_address)
        if address not in result:
            result.insert(0, address)
    return result


def endpoints_from_doveconf(text: str, verify_address: str) -> list[Endpoint]:
    """IMAP/POP3 TLS endpoints from ``doveconf protocols listen ssl service/...`` output.

    Listeners with port 0 are disabled; haproxy listeners expect a PROXY header
    first, which the verifier cannot send, so they are left out; ``ssl = no``
    means no TLS anywhere. A listener's own address (2.3 ``address``, 2.4
    ``listen``) wins over the global ``listen``; ``*``/``::`` become verify_address.
    """
    root = parse_doveconf(text)
    if root.settings.get("ssl", "yes") == "no":
        return []
    server_order = any(root.settings.get(name) in ("yes", "server") for name in PREFER_SERVER)
    protocols = _protocols(root)
    listen = root.settings.get("listen", "*, ::")
    result: list[Endpoint] = []
    for header, service in root.children:
        kind, _, name = header.partition(" ")
        if kind != "service":
            continue
        protocol = service.settings.get("protocol") or LOGIN_SERVICES.get(name, "")
        is_login = name in LOGIN_SERVICES or service.settings.get("type") == "login"
        if not is_login or protocol not in ("imap", "pop3") or protocol not in protocols:
            continue
        for lheader, listener in service.children:
            lkind, _, lname = lheader.partition(" ")
            if lkind != "inet_listener":
                continue
            try:
                port = int(listener.settings.get("port", "0") or "0")
            except ValueError:
                continue
            if port == 0 or listener.settings.get("haproxy") == "yes":
                continue
            tls = "implicit" if listener.settings.get("ssl") == "yes" else "starttls"
            where = listener.settings.get("address") or listener.settings.get("listen") or listen
            for address in _addresses(where, verify_address):
                endpoint = Endpoint(NAME, protocol, address, port, tls, lname or protocol,
                                    advice=ADVICE, server_order=server_order)
                if endpoint not in result:
                    result.append(endpoint)
    return result


# --- which dovecot.conf -----------------------------------------------------------------

_HEADER = re.compile(r"^#\s*\S+(?:\s+\([0-9a-f]+\))?:\s*(/\S+)\s*$", re.MULTILINE)
_OPEN_FAILED = re.compile(r"open\((/[^)]+)\) failed")


def built_in_config() -> Optional[str]:
    """The dovecot.conf this machine's doveconf reads without ``-c``, None when
    Dovecot is not installed or does not say.

    doveconf names it in its first line (``# 2.3.19.1 (9b53102964): /etc/dovecot/dovecot.conf``),
    also when the file is missing (then its Fatal line says ``open(PATH) failed``).
    """
    if process.find_tool("doveconf") is None:
        return None
    proc = process.run(["doveconf", "-n"], what="doveconf -n", check=False)
    for pattern, text in ((_HEADER, proc.stdout), (_OPEN_FAILED, proc.stderr)):
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def find_config() -> Optional[str]:
    """The dovecot.conf to configure when none is given: the one doveconf was built to
    read if it exists, else the first of KNOWN_CONFIGS that exists (a FreeBSD-style
    /usr/local/etc/dovecot with no /etc/dovecot), else the built-in path (missing;
    the caller says so). None when Dovecot is not installed."""
    built_in = built_in_config()
    if built_in is None and process.find_tool("doveconf") is None:
        return None
    if built_in and os.path.isfile(built_in):
        return built_in
    for candidate in KNOWN_CONFIGS:
        if os.path.isfile(candidate):
            return candidate
    return built_in or DEFAULT_CONFIG


def doveconf_problem(proc_stderr: str, proc_stdout: str, returncode: int) -> str:
    """doveconf's own reason: its Fatal/Error line without the program prefix."""
    lines = [line for line in proc_stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Fatal:" in line or "Error:" in line:
            return line.split(": ", 1)[-1].replace("Fatal: ", "").replace("Error: ", "").strip()
    return process.last_line(proc_stderr or proc_stdout) or f"exit {returncode}"


def count_sessions(text: str) -> dict[str, int]:
    """Connections per protocol from ``doveadm -f tab who -1`` (2.3 names the column
    ``proto``, 2.4 ``service``)."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    header = lines[0]
    column = next((i for i, name in enumerate(header) if name in ("proto", "service")), None)
    counts: dict[str, int] = {}
    for row in lines[1:]:
        proto = row[column] if column is not None and column < len(row) else "?"
        counts[proto] = counts.get(proto, 0) + 1
    return counts


