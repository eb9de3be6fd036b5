"""The newest archive version of each lineage Postfix has served, kept outside certbot's
reverter checkpoints: ``certbot rollback`` restores a state that may say "held at an
older version", and serving that key again (after its TLSA record was removed) would cut
DANE senders off. ``pipeline.regenerate`` never serves a version older than this one."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from certbot_postfix_tls._internal import certs, constants
from certbot_postfix_tls._internal.dane import archive
from certbot_postfix_tls._internal.state import State


def path(config_dir: str) -> str:
    return os.path.join(config_dir, constants.PLUGIN_DIR, constants.DANE_HISTORY_FILE)


def load(config_dir: str) -> dict[str, Any]:
    try:
        fd = os.open(path(config_dir), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def served_version(config_dir: str, state: State, name: str) -> Optional[int]:
    """The archive version Postfix serves for ``name`` per ``state`` (held, else live)."""
    deployed = state.lineages[name]
    if deployed.held:
        return int(deployed.held["version"])
    return archive.live_version(archive.lineage_of(config_dir, deployed))


def record(config_dir: str, state: State) -> None:
    """Raise each lineage's newest served version to what ``state`` serves."""
    text = updated(config_dir, state)
    if text is not None:
        certs.write_atomic(path(config_dir), text, 0o644)


def updated(config_dir: str, state: State) -> Optional[bytes]:
    """The history's new text once ``state`` is served, or None when it does not change
    (``record`` writes it; ``plan`` shows it)."""
    history = load(config_dir)
    changed = False
    for name in sorted(state.lineages):
        try:
            version = served_version(config_dir, state, name)
        except (OSError, ValueError):
            continue
        if version is None:
            continue
        if version > int(history.get(name, {}).get("version", 0)):
            history[name] = {"version": version}
            changed = True
    if not changed:
        return None
    return (json.dumps(history, indent=2, sort_keys=True) + "\n").encode()


def newest(config_dir: str, name: str) -> Optional[int]:
    """The newest archive version of ``name`` that was in service, if recorded."""
    entry = load(config_dir).get(name)
    return int(entry["version"]) if isinstance(entry, dict) and "version" in entry else None
