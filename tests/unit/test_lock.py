"""The plugin's one lock: a second writer waits a bounded time, then gives up in one
sentence; the holder is re-entrant within its own process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from certbot import errors

from certbot_postfix_tls._internal.lock import lock_path, plugin_lock

HOLD = """
import sys, time
from certbot_postfix_tls._internal.lock import plugin_lock
with plugin_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(config_dir: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(config_dir), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_gives_up_with_one_sentence(tmp_path: Path) -> None:
    holder = hold(tmp_path, 5)
    try:
        started = time.monotonic()
        with pytest.raises(errors.PluginError) as caught, plugin_lock(str(tmp_path), 0.5):
            pass
        assert 0.4 < time.monotonic() - started < 3
        message = str(caught.value)
        assert lock_path(str(tmp_path)) in message and "run this again" in message
        assert "\n" not in message
    finally:
        holder.kill()
        holder.communicate()


def test_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    holder = hold(tmp_path, 1)
    try:
        started = time.monotonic()
        with plugin_lock(str(tmp_path), 10):
            assert time.monotonic() - started > 0.5
    finally:
        holder.communicate()


def test_reentrant_in_one_process(tmp_path: Path) -> None:
    with plugin_lock(str(tmp_path), 0.5), plugin_lock(str(tmp_path), 0.5):
        pass
    with plugin_lock(str(tmp_path), 0.5):  # released again
        pass
