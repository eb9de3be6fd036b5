"""The one place where external commands are run.

Every command is an argv list (never a shell string), so names taken from
certificates or configuration can never be interpreted by a shell.
"""

from __future__ import annotations

import locale
import logging
import os
import pty
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Optional

from certbot import errors
from certbot import util as certbot_util

logger = logging.getLogger(__name__)

# Daemons and their tools live in sbin, which is not always on a cron/timer PATH.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_tool(name: str) -> Optional[str]:
    """Absolute path of an executable, also looking in the sbin directories."""
    path = certbot_util.env_no_snap_for_external_calls().get("PATH", os.defpath)
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
    # certbot from a snap puts its own libraries first on PATH/LD_LIBRARY_PATH:
    # the system's postfix, doveadm and groupadd must not load them.
    run_env = {**certbot_util.env_no_snap_for_external_calls(), **(env or {})}
    if stderr_tty:
        proc = _run_with_tty(full, what, argv[0], run_env, input_text, timeout, error)
    else:
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                full,
                input=input_text,
                capture_output=True,
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
    if check and proc.returncode != 0:
        reason = last_line(proc.stderr or proc.stdout) or f"exit {proc.returncode}"
        raise error(f"{what}: {reason}")
    return proc


# After the command exits, how long a pty still held open by a process it left
# behind is read before giving up on the end-of-file.
_TTY_GRACE = 1.0


def _run_with_tty(
    full: list[str],
    what: str,
    name: str,
    env: Optional[Mapping[str, str]],
    input_text: Optional[str],
    timeout: float,
    error: type[errors.Error],
) -> subprocess.CompletedProcess[str]:
    """Run with a pty as stderr, reading stdout and the pty while the command runs.

    A pty buffers only a few KB: a command writing more than that blocks until
    someone reads, so the reading cannot wait for the exit. Every descriptor
    opened here is closed on every path (exit, timeout, failure to start).
    """
    deadline = time.monotonic() + timeout
    tty_reader, tty_writer = pty.openpty()
    proc: Optional[subprocess.Popen[bytes]] = None
    try:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                full,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=tty_writer,
                env=env,
            )
        except OSError as exc:
            raise error(f"{what}: {name} could not be run ({exc.strerror}).") from exc
        finally:
            os.close(tty_writer)
        out, err = _collect(proc, tty_reader, input_text, deadline)
        if out is None or err is None:
            proc.kill()
            proc.wait()
            raise error(f"{what}: {name} did not finish within {timeout:.0f} s.")
        returncode = proc.wait()
    finally:
        os.close(tty_reader)
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:  # a broken stdin pipe
                        pass
    return subprocess.CompletedProcess(
        full, returncode, _text(out), _text(err).replace("\r\n", "\n")
    )


def _collect(
    proc: subprocess.Popen[bytes], tty: int, input_text: Optional[str], deadline: float
) -> tuple[Optional[bytes], Optional[bytes]]:
    """Feed stdin, read stdout and the pty until both end (or None, None at the deadline).

    The pty ends with EIO when the last writer is gone; a process the command
    left running with the pty open gets ``_TTY_GRACE`` seconds after the exit.
    """
    assert proc.stdout is not None
    out: list[bytes] = []
    err: list[bytes] = []
    pending = (input_text or "").encode()
    stdout_fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(stdout_fd, selectors.EVENT_READ, out)
        selector.register(tty, selectors.EVENT_READ, err)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        exited_at: Optional[float] = None
        while selector.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            limit = deadline
            if exited_at is not None and stdout_fd not in selector.get_map():
                limit = min(deadline, exited_at + _TTY_GRACE)
            if now >= limit:
                if now >= deadline:
                    return None, None
                break  # only the pty is left, held by someone else
            # Wake up now and then to notice the exit (the pty has no EOF while
            # another process holds it).
            events = selector.select(min(limit - now, 0.1))
            for key, _ in events:
                if key.data is None:  # stdin
                    try:
                        written = os.write(key.fd, pending[:65536])
                    except BrokenPipeError:
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(key.fd)
                        assert proc.stdin is not None
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:  # EIO: the pty's last writer is gone
                    chunk = b""
                if chunk:
                    key.data.append(chunk)
                else:
                    selector.unregister(key.fd)
    # The command may have closed its stdout early: wait for the exit too.
    remaining = deadline - time.monotonic()
    try:
        proc.wait(timeout=max(remaining, 0))
    except subprocess.TimeoutExpired:
        return None, None
    return b"".join(out), b"".join(err)


def _text(data: bytes) -> str:
    """Bytes a command wrote, as text (universal newlines, like ``text=True``)."""
    text = data.decode(locale.getpreferredencoding(False), errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def daemon_pid(pidfile: str, comm_prefix: str = "") -> Optional[int]:
    """The pid in a daemon's pid file when that process is alive (and, with
    ``comm_prefix``, is that daemon: a stale pid file may name another process);
    None when none runs. Raises PermissionError when this user cannot read the
    pid file (Postfix's and Dovecot's are 0600 root): whether it runs is unknown.
    """
    try:
        with open(pidfile, encoding="ascii") as handle:
            pid = int(handle.read().split()[0])
    except PermissionError:
        raise
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, owned by someone else
    if comm_prefix:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
                if not handle.read().strip().startswith(comm_prefix):
                    return None
        except OSError:
            pass
    return pid


def last_line(text: str) -> str:
    """The last non-empty line of a command's output, the one that usually says why."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def version_tuple(text: str) -> tuple[int, ...]:
    """A tool's version as numbers: ``3.7.11`` -> (3, 7, 11), ``2.3.19.1 (9b53102964)``
    -> (2, 3, 19, 1), ``2.4.1-4 (7d8c0e5759)`` -> (2, 4, 1); (0,) when there is none."""
    token = text.strip().split()[0] if text.strip() else ""
    return tuple(int(n) for n in re.findall(r"\d+", token.split("-")[0])) or (0,)
