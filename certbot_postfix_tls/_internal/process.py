"""The one place where external commands are run.

Every command is an argv list (never a shell string), so names taken from
certificates or configuration can never be interpreted by a shell.
"""

from __future__ import annotations

import logging
import os
import pty
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Optional

from certbot import errors

logger = logging.getLogger(__name__)

# Daemons and their tools live in sbin, which is not always on a cron/timer PATH.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_tool(name: str) -> Optional[str]:
    """Absolute path of an executable, also looking in the sbin directories."""
    path = os.environ.get("PATH", os.defpath)
    search = os.pathsep.join([path, *(p for p in _EXTRA_PATH if p not in path.split(os.pathsep))])
    return shutil.which(name, path=search)


def run(
    argv: Sequence[str],
    *,
    what: str,
    check: bool = True,
    env: Optional[Mapping[str, str]] = None,
    input_text: Optional[str] = None,
    timeout: float = 120,
    error: type[errors.Error] = errors.PluginError,
    stderr_tty: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return the completed process.

    ``what`` names the action for error messages ("postconf could not read
    /etc/postfix/main.cf"). With ``check`` a non-zero exit raises ``error``
    whose message is one sentence: ``what``, then the command's own last line.
    ``stderr_tty`` gives the command a terminal as stderr: Postfix's commands
    only print their "fatal:" reasons there (otherwise just to the mail log).
    """
    tool = find_tool(argv[0]) if not os.path.isabs(argv[0]) else argv[0]
    if tool is None:
        raise errors.NoInstallationError(f"{what}: the command {argv[0]} is not installed.")
    full = [tool, *argv[1:]]
    logger.debug("running %s", full)
    run_env = None if env is None else {**os.environ, **env}
    tty_reader, tty_writer = pty.openpty() if stderr_tty else (-1, -1)
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, no shell
            full,
            input=input_text,
            stdout=subprocess.PIPE,
            stderr=tty_writer if stderr_tty else subprocess.PIPE,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            text=True,
            env=run_env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what}: {argv[0]} did not finish within {timeout:.0f} s.") from exc
    except OSError as exc:
        raise error(f"{what}: {argv[0]} could not be run ({exc.strerror}).") from exc
    finally:
        if stderr_tty:
            os.close(tty_writer)
    if stderr_tty:
        proc.stderr = _drain(tty_reader).replace("\r\n", "\n")
    if check and proc.returncode != 0:
        reason = last_line(proc.stderr or proc.stdout) or f"exit {proc.returncode}"
        raise error(f"{what}: {reason}")
    return proc


def pid_alive(pidfile: str) -> Optional[int]:
    """The pid in a daemon's pid file when that process exists, else None."""
    try:
        with open(pidfile, encoding="ascii") as handle:
            pid = int(handle.read().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _drain(fd: int) -> str:
    """Everything written to a pty whose writers have all exited."""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:  # EIO once the last writer is gone
        pass
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def last_line(text: str) -> str:
    """The last non-empty line of a command's output, the one that usually says why."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
