"""The daemons the plugin configures, in one ordered registry.

Order matters: a daemon may use what a later one provides (Postfix's submission
authenticates through the SASL socket Dovecot's file declares). So a deploy writes and
reloads from the last registered daemon to the first (Dovecot, then Postfix), and a
removal writes from the first to the last. A test registers another daemon with
``register``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from certbot_postfix_tls._internal.daemons.base import Daemon
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.state import State

REGISTRY: list[type[Daemon]] = [Postfix, Dovecot]


@contextmanager
def register(daemon: type[Daemon], only: bool = False) -> Iterator[None]:
    """Add ``daemon`` at the end of the registry for the ``with`` block (tests); with
    ``only``, it is the only daemon meanwhile."""
    saved = list(REGISTRY)
    REGISTRY[:] = [daemon] if only else [*saved, daemon]
    try:
        yield
    finally:
        REGISTRY[:] = saved


def by_name(name: str) -> type[Daemon]:
    """The registered daemon called ``name``; KeyError when none is."""
    for daemon in REGISTRY:
        if daemon.name == name:
            return daemon
    raise KeyError(name)


def names() -> list[str]:
    """Every registered daemon's name, in registry order."""
    return [daemon.name for daemon in REGISTRY]


def configured_names(state: State) -> list[str]:
    """The names of the daemons ``state`` configures, in registry order."""
    return [daemon.name for daemon in REGISTRY if daemon.configured(state)]


def for_state(state: State) -> list[Daemon]:
    """The daemon objects ``state`` configures, in registry order."""
    return [daemon.for_state(state) for daemon in REGISTRY if daemon.configured(state)]


def ordered(found: Iterable[Daemon]) -> list[Daemon]:
    """``found`` in registry order."""
    order = names()
    return sorted(found, key=lambda daemon: order.index(daemon.name))


def deploy_order(found: Sequence[Daemon]) -> list[Daemon]:
    """The order a deploy writes and reloads in: providers (later daemons) first."""
    return list(reversed(ordered(found)))
