"""The Debian timer's condition: <config-dir>/postfix-tls/dane-held exists while some
lineage is held (or has a retired record to remove); the package's hourly timer (and
cron entry) runs ``certbot-postfix-tls dane check`` only then."""

from __future__ import annotations

import os

from certbot_postfix_tls._internal import certs, constants
from certbot_postfix_tls._internal.state import State

HELD_FLAG = "dane-held"


def flag_path(config_dir: str) -> str:
    """Where the flag is."""
    return os.path.join(config_dir, constants.PLUGIN_DIR, HELD_FLAG)


def raise_flag(config_dir: str) -> None:
    """Some lineage is held, or has records to retire: the timer runs dane check."""
    certs.write_atomic(flag_path(config_dir), b"a lineage is held: certbot-postfix-tls dane "
                       b"check activates it once DNS is ready\n", 0o644)


def sync_flag(config_dir: str) -> None:
    """The flag exists exactly while some instance's state holds a lineage (or has a
    retired record to remove)."""
    held = any(lineage.held or lineage.dane_retire for state in State.load_all(config_dir)
               for lineage in state.lineages.values())
    if held:
        raise_flag(config_dir)
    elif os.path.lexists(flag_path(config_dir)):
        os.unlink(flag_path(config_dir))
