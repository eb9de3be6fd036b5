"""The one interface every daemon the plugin configures implements.

The pipeline, the services and the operations only ever talk to a daemon through
``Daemon``: they never ask which daemon it is. What differs between Postfix and
Dovecot (where the configuration lives, how a certificate is set, how to reload, what
failure messages advise) lives behind it, in ``daemons/postfix`` and ``daemons/dovecot``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Protocol

from certbot_postfix_tls._internal.state import State
from certbot_postfix_tls._internal.tls_client import Advice, Endpoint


@dataclass
class DaemonPlan:
    """One daemon's part of a rendered configuration: what ``Daemon.apply`` writes.
    Each daemon extends it with its own changes."""

    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Whether the write step runs ``Daemon.check`` after applying it (a removal may
    # leave an operator's configuration the plugin never checked before).
    check: bool = True

    @property
    def empty(self) -> bool:
        """Nothing to write."""
        return True

    def report(self) -> list[str]:
        """One line per setting changed, for the install summary ("" prefix-free)."""
        return []


@dataclass
class Preview:
    """What ``apply(plan)`` would leave, computed without changing anything: the new
    bytes of every file it changes (None: removed), and the TLS endpoints the
    verification after it would check (on the configuration as written)."""

    files: dict[str, Optional[bytes]] = field(default_factory=dict)
    endpoints: list[Endpoint] = field(default_factory=list)


@dataclass
class PlanRequest:
    """What the pipeline renders every daemon's plan from.

    ``state`` is the state as it will be saved (a plan may record what it changed in
    it, e.g. the values it replaced); ``served`` is the same state with only the
    lineages that can be served, its default chosen. With no lineage served the plan
    is the removal: the daemon gets back what it had before the plugin.
    """

    config_dir: str
    state: State
    served: State
    # Install only: the TLS policy options (Postfix's policy.Options); None on renewal
    # and undeploy, which never re-apply the policy over an operator's later edits.
    policy: Optional[Any] = None
    # The MTA's configuration as the operation read it before rendering (Postfix's
    # PostfixConfig; pipeline.render always gives it): read once per operation.
    mta_config: Optional[Any] = None

    @property
    def removing(self) -> bool:
        """No lineage is left to serve."""
        return not self.served.lineages


class Daemon(Protocol):
    """A configured mail daemon (one Postfix instance, one Dovecot)."""

    name: ClassVar[str]
    """Its name in the registry, in a state's ``pending`` list and in ``Endpoint.service``."""
    advice: ClassVar[Advice]
    """What failure messages say about it: reload and start commands, deciding settings,
    the programs whose log lines name a cause."""
    cert_settings: ClassVar[tuple[str, ...]]
    """The names of the settings that decide which certificate it serves."""
    serves_derived: ClassVar[bool]
    """It serves the plugin's key+chain files (so a DANE hold applies to it), not
    certbot's live/ files."""

    @classmethod
    def configured(cls, state: State) -> bool:
        """Whether ``state`` configures this daemon (cheap: reads the state only)."""

    @classmethod
    def for_state(cls, state: State) -> Daemon:
        """The daemon ``state`` configures: finds its configuration (raises
        NoInstallationError when it is gone)."""

    @property
    def label(self) -> str:
        """``Postfix (/etc/postfix)``: the daemon and its configuration, for messages."""

    def plan(self, request: PlanRequest) -> DaemonPlan:
        """What its configuration must become for ``request`` (reads it, writes nothing)."""

    def files(self, plan: DaemonPlan) -> list[str]:
        """The configuration files ``apply(plan)`` may change or remove: snapshotted
        before and put into a reverter checkpoint."""

    def apply(self, plan: DaemonPlan) -> None:
        """Write ``plan`` (the pipeline's write step; it snapshots ``files`` first)."""

    def preview(self, plan: DaemonPlan, state: State) -> Preview:
        """What ``apply(plan)`` would write, and the endpoints verified after it for
        ``state``, changing nothing (``certbot-postfix-tls plan``)."""

    def check(self) -> None:
        """Its own configuration check; raises MisconfigurationError with its reason."""

    def reload(self) -> None:
        """Load the configuration on disk without a restart (established sessions are
        its own business); raises MisconfigurationError when it refuses."""

    def running(self) -> Optional[bool]:
        """Whether it runs; None when this user cannot tell."""

    def endpoints(self, state: State) -> list[Endpoint]:
        """The TLS endpoints a deploy verifies, reached at ``state.verify_address``
        (only those on ``state.verify_ports`` when it names some)."""

    def unchecked(self, state: State) -> list[tuple[str, str]]:
        """(label, why) of the listeners verification deliberately skips."""
