"""``certbot-postfix-tls doctor``: the usual mail-TLS failures, each as a check.

It examines the Postfix and Dovecot that are configured and running, whether or not
this plugin deployed anything: certificate and key files, chains, certificates renewed
but never loaded, expiry, TLS versions, submission and SASL, port 25, outbound TLS,
renewal hooks that restart the daemons or that certbot skips. When the plugin did
deploy, its own checks run too: recorded state, the hooks it installed, key
permissions for its key group, pending reloads, and a handshake per lineage name (as
``verify``); otherwise one check says they were skipped because nothing was deployed.
Private keys under archive/ that others can read are always reported. Every problem
is one ``Finding``: what is wrong, where (file, setting, port), and the exact fix.
Checks that need root say they were skipped, and why, for other users.

The checks are listed, in order, in ``registry.CHECKS``.
"""

from __future__ import annotations

from typing import Optional

from certbot_postfix_tls._internal import verify
from certbot_postfix_tls._internal.doctor import ports, registry, servers
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.state import State

__all__ = ["run"]


def run(config_dir: str, postfix_dir: Optional[str] = None,
        dovecot_config: Optional[str] = None
        ) -> tuple[list[verify.EndpointResult], list[Finding]]:
    """Every check. Endpoint results are ``verify``'s per lineage and name when the
    plugin deployed something, else one verdict per TLS port of what is configured."""
    context = servers.find(config_dir, State.load(config_dir), postfix_dir, dovecot_config)
    # Probed first, one port at a time: a process still holding a renewed
    # certificate's predecessor answers the first connection, not later parallel ones.
    context.probes = servers.probe_all(context)
    ports.judge(context)
    # Looked up at each run, so that a check added to the registry (a test) runs too.
    checks = [finding for check in registry.CHECKS for finding in check(context)]
    return context.results, checks
