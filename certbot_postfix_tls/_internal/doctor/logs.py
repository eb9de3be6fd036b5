"""The daemons' own words: recent lines of Postfix's and Dovecot's logs (their own log
file, syslog's mail.log, else systemd's journal), for the cause behind a failure."""

from __future__ import annotations

import os
import re
import time
from typing import Optional

from certbot_postfix_tls._internal import constants, daemons, process, tls_client, verify
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.doctor.context import Context

SYSLOG_MAIL = constants.SYSLOG_MAIL
# How long to wait for a cause to reach the log (postlogd and syslog write it
# asynchronously, after the connection that caused it).
LOG_WAIT = 2.0


def _journal() -> str:
    """Mail-facility lines of the last 15 minutes from systemd's journal."""
    if not os.path.isdir("/run/systemd/system") or process.find_tool("journalctl") is None:
        return ""
    proc = process.run(
        ["journalctl", "--no-pager", "--quiet", "--output=short-iso", "--since=-15min",
         "SYSLOG_FACILITY=2"],
        what="journalctl", check=False, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""


def _own_log(context: Context, service: str) -> str:
    """The log file the daemon called ``service`` is told to write (Postfix's
    maillog_file, Dovecot's log_path) as configured; "" for none."""
    if service == Postfix.name:
        return context.config.value("maillog_file") if context.config else ""
    if service == Dovecot.name:
        return context.imap_settings.get("log_path", "")
    return ""


def _log(context: Context, service: str, fresh: bool = False) -> tuple[str, str]:
    """(recent log text, where it came from) of the daemon called ``service``: its own
    log file, else syslog's /var/log/mail.log, else the journal."""
    if fresh or service not in context.logs:
        own = _own_log(context, service)
        sources = [own] if own.startswith("/") and not own.startswith("/dev/") else []
        sources.append(SYSLOG_MAIL)
        text, where = "", ""
        for source in sources:
            if os.path.isfile(source):
                text, where = verify.read_log_tail(source), source
                break
        else:
            text, where = _journal(), "the journal"
        context.logs[service] = (text, where)
    return context.logs[service]


def log_says(context: Context, service: str, pattern: Optional[re.Pattern[str]] = None
             ) -> str:
    """The service's own recent reason, waiting a moment for it to reach the log: the
    newest line matching ``pattern``, else verify.log_cause's TLS file/key cause.
    "" when none shows (or the log cannot be read)."""
    deadline = time.monotonic() + LOG_WAIT
    fresh = False
    while True:
        text, _ = _log(context, service, fresh)
        if pattern is None:
            found = verify.log_cause(text, daemons.by_name(service).advice.log_programs)
        else:
            lines = [line for line in text.splitlines()[-400:] if pattern.search(line)]
            found = ""
            if lines:
                last = lines[-1]
                for marker in ("fatal: ", "warning: ", "error: ", "Fatal: ", "Error: "):
                    if marker in last:
                        found = marker + last.split(marker, 1)[1].strip()
                        break
                found = tls_client.printable(found or last, 240)
        if found or time.monotonic() >= deadline:
            # Dovecot appends the session's details: not part of the reason.
            return re.sub(r":? user=<[^>]*>, rip=.*$", "", found)
        fresh = True
        time.sleep(0.25)


def log_phrase(service: str, cause: str) -> str:
    """``; Postfix's log says: CAUSE`` (or Dovecot's), "" without a cause."""
    name = daemons.by_name(service).advice.display
    return f"; {name}'s log says: {cause}" if cause else ""
