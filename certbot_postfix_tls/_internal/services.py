"""Reload the daemons the plugin configured, and verify what every endpoint serves.

The pipeline's activation step (reload each service once, then prove by
handshake that every lineage is served) and ``verify``/``doctor`` use these.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Optional

from certbot_postfix_tls._internal import daemons, sni, tls_client, verify
from certbot_postfix_tls._internal.daemons.base import Daemon
from certbot_postfix_tls._internal.daemons.postfix import listeners
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.state import DeployedLineage, State

logger = logging.getLogger(__name__)

Warn = Callable[[str], None]
# Handshakes in flight at once: enough to hide the network waits, few enough not to
# trip Postfix's per-client limits (smtpd_client_connection_count_limit is 50).
PARALLEL_CHECKS = 8


def endpoints(state: State, include_stopped: bool = False) -> list[tls_client.Endpoint]:
    """Every TLS endpoint of the running daemons in the state (a stopped one has a
    WARNING of its own; its endpoints would only refuse), or of all of them with
    ``include_stopped`` (metrics keep a stopped daemon's ports, as down)."""
    found: list[tls_client.Endpoint] = []
    for daemon in daemons.for_state(state):
        if include_stopped or daemon.running() is not False:  # None (not root): handshakes tell
            found += daemon.endpoints(state)
    return found


def unchecked(state: State) -> list[tuple[str, str]]:
    """(label, why) of the listeners verification skips (Postfix: TLS off, PROXY
    protocol, loopback content-filter ports, ports outside --postfix-tls-verify-ports)."""
    return [found for daemon in daemons.for_state(state) for found in daemon.unchecked(state)]


def stopped(state: State) -> list[tuple[str, str]]:
    """(check name, sentence) for every configured daemon whose master is not running:
    all its endpoints refuse connections, which verify and doctor report CRITICAL."""
    return [(f"{daemon.name}-running",
             f"{daemon.label} is not running: start it ({daemon.advice.start})")
            for daemon in daemons.for_state(state) if daemon.running() is False]


def pending_message(state: State, where: str = "") -> str:
    """Why services still await a reload after a renewal, and the one command that
    finishes it (``where``: which Postfix instance, for the non-default ones)."""
    renewed = ", ".join(state.renewed) or "a lineage"
    waiting = ", ".join(state.pending)
    return (f"{renewed} was renewed and deployed but {waiting} not reloaded{where}: the post "
            "hook failed, or never ran (certbot before 5.3 runs it after `certbot renew` only, "
            "not after `certonly` or `run`); run certbot-postfix-tls hook post, which reloads "
            "once or says why it cannot")


def sni_names(expected: verify.ExpectedCert) -> list[str]:
    """The names a client would ask for: the certificate's, wildcards skipped when others exist."""
    names = list(expected.names)
    concrete = [n for n in names if not n.startswith("*.")]
    return concrete or names


def expected_cert(lineage: DeployedLineage, derived: bool = True) -> verify.ExpectedCert:
    """What the lineage should serve: from its fullchain.pem when this user can read it
    (root), else from the fingerprints the state recorded at the last deploy (a
    monitoring user cannot traverse certbot's live/ directory)."""
    # Held back by DANE (dane/gate.py): a daemon serving the plugin's key+chain files
    # (``derived``, Postfix) serves the held version the state records; one reading
    # live/ (Dovecot) serves the renewed one (recorded too, for monitoring users).
    held = bool(lineage.held) and derived
    if not held and (os.access(lineage.fullchain_path, os.R_OK) or not lineage.expected):
        return verify.ExpectedCert.from_fullchain(lineage.fullchain_path)
    recorded = lineage.expected if held or not lineage.held else lineage.held["new"]
    return verify.ExpectedCert(
        leaf_sha256=str(recorded["leaf_sha256"]),
        intermediates_sha256=tuple(recorded["intermediates_sha256"]),
        names=tuple(recorded["names"]),
        not_after=datetime.fromisoformat(str(recorded["not_after"])),
        not_before=(datetime.fromisoformat(str(recorded["not_before"]))
                    if recorded.get("not_before") else None),
        key_type=lineage.key_type,
    )


def served_lineages(state: State) -> list[str]:
    """Every lineage the plugin deployed: each is served by SNI for its names."""
    return sorted(state.lineages)


def check_all(
    state: State,
    lineage_names: Optional[Iterable[str]] = None,
    endpoints_to_check: Optional[Sequence[tls_client.Endpoint]] = None,
    retry_seconds: float = 5.0,
) -> list[verify.EndpointResult]:
    """Handshake with every endpoint, with SNI for every name of every served lineage.

    The checks are independent connections, so they run side by side: with many
    lineages there are hundreds of them, each mostly waiting on the network.
    """
    targets = endpoints(state) if endpoints_to_check is None else list(endpoints_to_check)
    pairs = sni.partners(state)
    default_set = pairs.get(str(state.default), [])
    jobs: list[tuple[tls_client.Endpoint, verify.ExpectedCert, Optional[str], Optional[str]]] = []
    for name in sorted(lineage_names if lineage_names is not None else served_lineages(state)):
        lineage = state.lineages[name]
        expected = expected_cert(lineage)
        # A client without SNI must get the default certificate.
        names: list[Optional[str]] = [None] if name in default_set else []
        names += sni_names(expected)
        # Served as a pair: a client offering only this key type must get this lineage.
        key_type = lineage.key_type if len(pairs.get(name, [])) > 1 else None
        jobs += [(endpoint, expected_cert(lineage, _serves_derived(endpoint)) if lineage.held
                  else expected, sni, key_type) for sni in names for endpoint in targets]
    with ThreadPoolExecutor(max_workers=PARALLEL_CHECKS) as pool:
        return list(pool.map(
            lambda job: verify.check_endpoint(job[0], job[1], job[2], retry_seconds,
                                              key_type=job[3]), jobs
        ))


def _serves_derived(endpoint: tls_client.Endpoint) -> bool:
    """Whether the daemon behind ``endpoint`` serves the plugin's key+chain files."""
    try:
        return daemons.by_name(endpoint.service).serves_derived
    except KeyError:
        return True


def check_foreign(config_dir: str, state: State, retry_seconds: float = 5.0,
                  ) -> list[verify.EndpointResult]:
    """Handshake Postfix's endpoints for each name of the operator's own SNI tables:
    each must still get the certificate its table lists (the plugin's table only
    comes after theirs). Names whose certificate file this user cannot read are
    skipped."""
    if not state.sni_map_type:
        return []
    mta = Postfix(state.postfix_dir)
    if mta.running() is False:
        return []
    config = mta.read()
    ours = f"{state.sni_map_type}:{sni.map_path(config_dir, state.instance)}"
    entries = sni.foreign_entries(
        sni.foreign_tables(config.main.get("tls_server_sni_maps", ""), ours))
    targets = listeners.endpoints(config, state.verify_address, state.verify_ports)
    jobs: list[tuple[tls_client.Endpoint, verify.ExpectedCert, Optional[str]]] = []
    for name, path in sorted(entries.items()):
        try:
            expected = verify.ExpectedCert.from_fullchain(path)
        except tls_client.VerifyError:
            continue
        jobs += [(endpoint, expected, name) for endpoint in targets]
    with ThreadPoolExecutor(max_workers=PARALLEL_CHECKS) as pool:
        return list(pool.map(
            lambda job: verify.check_endpoint(job[0], job[1], job[2], retry_seconds), jobs
        ))


def reload(found: Sequence[Daemon], names: Iterable[str], warn: Warn) -> None:
    """Check and reload each daemon of ``found`` named in ``names`` once, providers first
    (Dovecot before Postfix: its SASL socket must exist before new smtpd processes look
    for it); a stopped one is skipped with a warning."""
    wanted = set(names)
    for daemon in daemons.deploy_order([d for d in found if d.name in wanted]):
        if not daemon.running():
            warn(f"{daemon.label} is not running: its new configuration takes effect when "
                 "you start it; nothing was reloaded.")
            continue
        daemon.check()
        daemon.reload()
