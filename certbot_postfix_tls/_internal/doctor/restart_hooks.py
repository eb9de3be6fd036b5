"""The operator's own renewal hooks: commands that restart or stop Postfix or Dovecot
at every renewal, and hook scripts certbot skips."""

from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Iterable

from certbot_postfix_tls._internal import daemons, hooks
from certbot_postfix_tls._internal.doctor.certificates import read_file
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.doctor.settings import install_fix
from certbot_postfix_tls._internal.findings import Finding

_STOPPING = ("restart", "stop", "try-restart", "kill", "force-reload")
_WRAPPERS = ("sudo", "env", "command", "exec", "nice", "nohup", "timeout")
_COST = ("every renewal then refuses connections while the daemon restarts (the README's "
         "benchmark: failed handshakes on 25, 587 and 993 at each renewal, and 587 down for "
         "60 s when Postfix starts before Dovecot's auth socket is back)")


def _stopping(command: str) -> set[str]:
    """The names of the daemons one shell command restarts or stops (each daemon's
    ``Advice`` says which units run it and which of its own commands stop it)."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    while words and (os.path.basename(words[0]) in _WRAPPERS or
                     ("=" in words[0] and not words[0].startswith("/"))):
        words = words[1:]
    if not words:
        return set()
    tool = os.path.basename(words[0])
    args = [w for w in words[1:] if not w.startswith("-")]

    def named(units: Iterable[str]) -> set[str]:
        return {daemon.name for daemon in daemons.REGISTRY for unit in units
                if os.path.basename(unit).startswith(daemon.advice.units)}

    if tool == "systemctl" and args and args[0] in _STOPPING:
        return named(args[1:])
    if tool in ("service", "invoke-rc.d", "rc-service") and len(args) >= 2 \
            and args[1] in _STOPPING:
        return named(args[:1])
    if tool == "rcctl" and len(args) >= 2 and args[0] in _STOPPING:
        return named(args[1:])
    if ("/init.d/" in words[0] or "/rc.d/" in words[0]) and args and args[0] in _STOPPING:
        return named([tool])
    return {daemon.name for daemon in daemons.REGISTRY
            for stop in daemon.advice.stop_commands
            if stop.split()[0] == tool and stop.split()[1] in args}


def restart_commands(script: str) -> list[tuple[str, set[str]]]:
    """(command, daemons) of every command in a hook that restarts or stops a daemon."""
    found = []
    for line in script.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for part in re.split(r";|&&|\|\|?|\n", line):
            command = part.strip()
            stopped = _stopping(command) if command else set()
            if stopped:
                found.append((command, stopped))
    return found


def _reload_for(names: set[str]) -> str:
    return "; ".join(daemon.advice.reload for daemon in daemons.REGISTRY
                     if daemon.name in names)


def hook_file_checks(context: Context) -> list[Finding]:
    """Scripts under renewal-hooks/ and hooks in renewal/*.conf that restart or stop
    Postfix or Dovecot (WARNING), and hook scripts certbot skips (CRITICAL)."""
    config_dir = context.config_dir
    ours = {hooks.hook_path(config_dir, kind) for kind in ("deploy", "post")}
    replacement = (f"or delete it and run {install_fix(context)}, whose hooks reload once "
                   "and verify")
    checks = []
    for kind in ("pre", "deploy", "post"):
        directory = os.path.join(config_dir, "renewal-hooks", kind)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if path in ours or name.endswith("~") or not os.path.isfile(path):
                continue
            if not os.stat(path).st_mode & 0o111:
                checks.append(Finding(
                    "renewal-hook-skipped", "CRITICAL",
                    f"{path} is not executable, so certbot skips it at every renewal; fix: "
                    f"chmod 755 {path} (or delete it if it is not needed)"))
            try:
                text = read_file(path).decode("utf-8", "replace")
            except OSError:
                continue
            commands = restart_commands(text)
            if not commands:
                continue
            runs = " and ".join(f"`{command}`" for command, _ in commands)
            if context.deployed:
                fix = f"rm {path} (the postfix-tls hooks already reload and verify)"
            else:
                fix = ", ".join(f"replace `{command}` by `{_reload_for(stopped)}`"
                                for command, stopped in commands)
                fix += f" in {path} ({replacement})"
            checks.append(Finding("restart-hook", "WARNING",
                                  f"{path} runs {runs}: {_COST}; fix: {fix}"))
    for conf in sorted(glob.glob(os.path.join(config_dir, "renewal", "*.conf"))):
        try:
            text = read_file(conf).decode("utf-8", "replace")
        except OSError:
            continue
        for key, value in re.findall(r"^\s*(pre_hook|post_hook|renew_hook|deploy_hook)\s*=\s*"
                                     r"(.*?)\s*$", text, re.MULTILINE):
            new = value
            commands = restart_commands(value)
            for command, stopped in commands:
                new = new.replace(command, _reload_for(stopped))
            if commands:
                checks.append(Finding(
                    "restart-hook", "WARNING",
                    f"{conf} has `{key} = {value}`: {_COST}; fix: set `{key} = {new}` in {conf}"
                    + ("" if not context.deployed else
                       " (or remove the line: the postfix-tls hooks already reload)")))
    if not checks:
        checks.append(Finding("restart-hook", "OK",
                              "no renewal hook restarts or stops Postfix or Dovecot, and "
                              "certbot can run every hook script"))
    return checks
