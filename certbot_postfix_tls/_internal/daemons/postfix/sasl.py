"""Whether the SASL backend an smtpd service enables can work: Cyrus needs a password
source (``smtpd.conf``, and saslauthd's socket when it names saslauthd), Dovecot's type a
socket that exists and answers. Read by the installer (``--postfix-tls-sasl auto``
replaces a backend that cannot work) and by doctor (``sasl-backend``)."""

from __future__ import annotations

import glob
import os
import re
import socket
import stat
from typing import Optional

from certbot_postfix_tls._internal.daemons.postfix.config import (
    MasterService,
    PostfixConfig,
    is_yes,
)

# Where Cyrus SASL looks for smtpd.conf when cyrus_sasl_config_path is empty (Debian's
# Postfix adds /etc/postfix/sasl), and where saslauthd listens by default.
CYRUS_DIRS = ("/etc/postfix/sasl", "/etc/sasl2", "/usr/lib/sasl2", "/usr/lib/*/sasl2")
SASLAUTHD_MUX = "/var/run/saslauthd/mux"


def socket_problem(path: str) -> tuple[str, bool]:
    """(what is wrong with a unix socket, whether it could be checked at all); the
    reason starts with the path, so that callers can write "... socket {reason}"."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{path} does not exist", True
    except PermissionError:
        return "", False
    if not stat.S_ISSOCK(info.st_mode):
        return f"{path} is not a socket", True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except PermissionError:
            return "", False
        except OSError as exc:
            return f"{path} has nothing listening on it ({exc.strerror or exc})", True
    return "", True


def cyrus_problem(config: PostfixConfig, app: str, chroot: bool) -> tuple[str, Optional[str]]:
    """(why Cyrus SASL cannot work for ``app``, the saslauthd socket it waits for when
    that is why); ("", None) when it has a password source or nothing can be told."""
    configured = config.value("cyrus_sasl_config_path")
    dirs = [d for d in configured.split(":") if d] if configured else list(CYRUS_DIRS)
    files = [path for pattern in dirs for path in glob.glob(os.path.join(pattern, f"{app}.conf"))]
    if not files:
        return (f"Cyrus SASL has no {app}.conf in {', '.join(dirs)}, so it has no password "
                "source: the server advertises AUTH that nobody can use (or smtpd dies with "
                "'no SASL authentication mechanisms')", None)
    try:
        with open(files[0], "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "", None
    options = dict(re.findall(r"^\s*(\w+)\s*:\s*(\S.*?)\s*$", text, re.MULTILINE))
    if options.get("pwcheck_method", "").split()[:1] == ["saslauthd"]:
        mux = options.get("saslauthd_path") or SASLAUTHD_MUX
        candidates = [mux]
        if chroot:
            queue = config.value("queue_directory") or "/var/spool/postfix"
            candidates.insert(0, queue + mux)
        problems = [socket_problem(path) for path in candidates]
        if all(checked and problem for problem, checked in problems):
            return f"{files[0]} uses saslauthd, but {problems[0][0]}", candidates[0]
    return "", None


def chrooted(config: PostfixConfig, services: list[MasterService]) -> bool:
    """Whether any of ``services`` runs chrooted ("-" is chroot before Postfix 3.0)."""
    old = config.version < (3, 0)
    return any(s.chroot == "y" or (s.chroot == "-" and old) for s in services)


def backend_problem(config: PostfixConfig, service: MasterService) -> str:
    """Why the SASL backend ``service`` enables cannot work: Cyrus without a password
    source or its saslauthd, a Dovecot socket that does not exist or answers nothing;
    "" when SASL is off there, it works, or this user cannot tell."""
    if not is_yes(config.in_force(service, "smtpd_sasl_auth_enable")[0]):
        return ""
    kind = config.in_force(service, "smtpd_sasl_type")[0] or "cyrus"
    path = config.in_force(service, "smtpd_sasl_path")[0] or "smtpd"
    if kind == "dovecot" and not path.startswith("inet:"):
        queue = config.value("queue_directory") or "/var/spool/postfix"
        reason, _ = socket_problem(path if path.startswith("/") else os.path.join(queue, path))
        return f"Dovecot's auth socket {reason}" if reason else ""
    if kind == "cyrus":
        return cyrus_problem(config, path, chrooted(config, [service]))[0]
    return ""
