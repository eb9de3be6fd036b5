"""One lock for every writer: install, both renewal hooks, undeploy and rollback.

certbot holds its own lock on the config directory while hooks run, so the
hooks cannot take certbot's: the plugin has its own file under
<config-dir>/postfix-tls/. It is taken per operation, never for a whole
certbot run (a deploy hook started by that run would wait on it forever).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import constants

_held: dict[str, tuple[int, int]] = {}  # path -> (fd, depth): re-entrant in one process


def lock_path(config_dir: str) -> str:
    return os.path.join(config_dir, constants.PLUGIN_DIR, constants.LOCK_FILE)


@contextlib.contextmanager
def plugin_lock(config_dir: str, timeout: Optional[float] = None) -> Iterator[None]:
    """Hold the plugin's lock; wait at most ``timeout`` seconds (default
    ``constants.LOCK_TIMEOUT``) for another holder."""
    timeout = constants.LOCK_TIMEOUT if timeout is None else timeout
    path = lock_path(config_dir)
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[path]
            _held[path] = (fd, depth - 1)
        return
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise errors.PluginError(
                        f"Another certbot-postfix-tls operation (install, renewal hook, undeploy "
                        f"or rollback) has held {path} for more than {timeout:.0f} s: wait for it "
                        "to finish and run this again."
                    ) from None
                time.sleep(0.2)
        _held[path] = (fd, 1)
        try:
            yield
        finally:
            del _held[path]
    finally:
        os.close(fd)  # closing the descriptor releases the lock
