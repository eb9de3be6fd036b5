"""Tests for certbot_postfix_tls._internal.process: the one subprocess wrapper.

Unit tests: no root, no lab, only /bin/sh and coreutils.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from certbot import errors

from certbot_postfix_tls._internal import process


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def settle(before: set[str], timeout: float = 2) -> set[str]:
    """The descriptors opened since ``before`` (a GC'd pipe may close a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        extra = open_fds() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


def test_plain_run_captures_both_streams() -> None:
    proc = process.run(["sh", "-c", "echo out; echo err >&2; exit 3"], what="t", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


def test_check_raises_with_the_last_line() -> None:
    with pytest.raises(errors.PluginError, match=r"^postfix check: fatal: bad thing$"):
        process.run(["sh", "-c", "echo 'fatal: bad thing' >&2; exit 1"], what="postfix check",
                    stderr_tty=True)


def test_stderr_is_a_terminal() -> None:
    proc = process.run(
        ["sh", "-c", "if [ -t 2 ]; then echo tty >&2; else echo notty >&2; fi; echo out"],
        what="t", stderr_tty=True,
    )
    assert proc.stderr == "tty\n"  # \r\n from the terminal's line discipline undone
    assert proc.stdout == "out\n"
    assert proc.returncode == 0


def test_input_reaches_stdin_with_a_tty() -> None:
    proc = process.run(["cat"], what="t", input_text="a\nb\n", stderr_tty=True)
    assert proc.stdout == "a\nb\n"


@needs_proc
def test_much_stderr_on_the_tty_returns_promptly() -> None:
    """More than a pty buffers (a few KB): read while the command runs, not after."""
    before = open_fds()
    script = "i=0; while [ $i -lt 1000 ]; do printf '%099d\\n' $i >&2; i=$((i+1)); done; echo done"
    started = time.monotonic()
    proc = process.run(["sh", "-c", script], what="t", stderr_tty=True, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert proc.stdout == "done\n"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1000 and len(proc.stderr) == 100_000
    assert lines[-1] == f"{999:099d}"
    assert not settle(before)


@needs_proc
def test_much_stdout_and_stderr_at_once() -> None:
    python = sys.executable
    code = ("import sys\nfor i in range(2000):\n"
            "    sys.stdout.write('o' * 99 + '\\n'); sys.stderr.write('e' * 99 + '\\n')\n")
    proc = process.run([python, "-c", code], what="t", stderr_tty=True, timeout=30)
    assert len(proc.stdout) == len(proc.stderr) == 200_000


@needs_proc
def test_timeout_kills_and_leaks_no_descriptor() -> None:
    before = open_fds()
    started = time.monotonic()
    with pytest.raises(errors.PluginError, match=r"^t: sleep did not finish within 1 s\.$"):
        process.run(["sleep", "30"], what="t", stderr_tty=True, timeout=1)
    assert time.monotonic() - started < 10
    assert not settle(before)


@needs_proc
def test_timeout_with_a_full_pty_leaks_no_descriptor() -> None:
    """The command blocks on a full pty and never exits by itself."""
    before = open_fds()
    with pytest.raises(errors.PluginError, match="did not finish within"):
        process.run(["sh", "-c", "yes >&2"], what="t", stderr_tty=True, timeout=1)
    assert not settle(before)


@needs_proc
def test_a_left_behind_process_holding_the_tty_does_not_block() -> None:
    """A daemon the command started keeps the pty open: give up on its EOF soon."""
    before = open_fds()
    started = time.monotonic()
    proc = process.run(
        ["sh", "-c", "echo started >&2; sleep 20 >/dev/null & echo $!"],
        what="t", stderr_tty=True, timeout=30,
    )
    try:
        assert time.monotonic() - started < 10
        assert proc.stderr == "started\n"
    finally:
        os.kill(int(proc.stdout), 15)
    assert not settle(before)


@needs_proc
def test_missing_and_unrunnable_commands_leak_nothing(tmp_path) -> None:
    before = open_fds()
    with pytest.raises(errors.NoInstallationError, match="not installed"):
        process.run(["certbot-postfix-tls-no-such-tool"], what="t", stderr_tty=True)
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(errors.PluginError, match="could not be run"):
        process.run([str(script)], what="t", stderr_tty=True)
    assert not settle(before)
