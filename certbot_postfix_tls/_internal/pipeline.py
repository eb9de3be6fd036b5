"""The one deployment pipeline: recorded state -> configuration -> written, checked, live.

Install (``certbot install``/``run``), both renewal hooks, ``undeploy`` and
``certbot rollback`` all go through here, and nothing else writes a daemon's
configuration. The daemons are those of the registry (``daemons``) the state
configures, each behind the ``Daemon`` interface:

- ``render`` turns the state (lineages, options, default rule) into the
  desired configuration: each lineage's key+chain file, the SNI table, and one
  plan per daemon (Postfix: main.cf certificate settings, plus, on install, the
  TLS policy and master.cf overrides; Dovecot: the plugin's file). It is a
  decision only: the caller gathers first what it needs beyond the files of the
  lineages (the other instances' states, the TLSA lookups of the lineages it
  loads: ``ops/render.py``).
- ``write`` puts it on disk in an order where every intermediate state is one
  the daemons accept, keeps an in-memory snapshot of every file it touches,
  runs each daemon's check (``postfix check``, ``doveconf -x``), and restores the
  snapshot on any failure. Configuration files go into certbot's reverter
  checkpoint when the caller gives one; derived files (key+chain, SNI table and
  index) never do: they hold private keys, and after a rollback they are
  rebuilt from each lineage's current archive files (``regenerate``).
- ``activate`` reloads each daemon at most once (providers first: Dovecot's SASL
  socket must exist before new smtpd processes look for it) and verifies by
  handshake. Only the lineages the operation changed decide success; other
  lineages' failures come back as warnings.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import (
    certs,
    constants,
    daemons,
    dialogues,
    hooks,
    permissions,
    services,
    sni,
    tls_client,
    verify,
)
from certbot_postfix_tls._internal.daemons.base import Daemon, DaemonPlan, PlanRequest
from certbot_postfix_tls._internal.daemons.postfix import throttle
from certbot_postfix_tls._internal.daemons.postfix.config import PostfixConfig
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.daemons.postfix.policy import Options
from certbot_postfix_tls._internal.dane import gate
from certbot_postfix_tls._internal.state import DeployedLineage, State

logger = logging.getLogger(__name__)

Warn = Callable[[str], None]
# (existing paths, created paths): puts configuration files into a reverter checkpoint.
Checkpoint = Callable[[set[str], list[str]], None]


@dataclass
class Site:
    """The daemons a state configures (its Postfix instance, the Dovecot if any), in
    registry order."""

    config_dir: str
    daemons: list[Daemon]

    @classmethod
    def from_state(cls, config_dir: str, state: State) -> Site:
        return cls(config_dir, daemons.for_state(state))

    @property
    def mta(self) -> Postfix:
        """The site's Postfix instance: its configuration drives the default choice, DANE
        and the SNI table."""
        for daemon in self.daemons:
            if isinstance(daemon, Postfix):
                return daemon
        raise errors.Error("This operation needs the Postfix instance, which is not configured.")

    def names(self) -> list[str]:
        """The names of its daemons, for a state's ``pending`` list."""
        return [daemon.name for daemon in self.daemons]


@dataclass
class Desired:
    """Everything ``write`` puts on disk, and what to tell the administrator."""

    state: State
    plans: dict[str, DaemonPlan] = field(default_factory=dict)  # daemon name -> its plan
    chain_files: dict[str, bytes] = field(default_factory=dict)  # derived key+chain files
    remove_dirs: list[str] = field(default_factory=list)  # derived dirs of dropped lineages
    sni_map: Optional[str] = None  # table text; None: no table (removed if present)
    secure: list[str] = field(default_factory=list)  # lineages whose key modes to enforce
    hooks: bool = True  # install the renewal hooks (False: remove them)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # lineages left out (unreadable files)
    # DANE, carried out by the caller after render: (record line, TTL) to publish per
    # lineage (--postfix-tls-dane-update), and whether to raise the held flag.
    dane_publish: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    dane_flag: bool = False


# --- render ---------------------------------------------------------------------------


def to_load(state: State, rebuild: Iterable[str] = ()) -> list[str]:
    """The lineages ``render`` loads from their files: those in ``rebuild``, and those
    whose key+chain file is missing."""
    required = set(rebuild)
    return [name for name in sorted(state.lineages)
            if name in required or not os.path.exists(state.lineages[name].chain_file)]


def render(
    site: Site,
    state: State,
    config: PostfixConfig,
    others: Sequence[State],
    lookups: Mapping[str, gate.Lookups],
    rebuild: Iterable[str] = (),
    policy: Optional[Options] = None,
) -> Desired:
    """The configuration ``state`` calls for.

    ``rebuild`` names the lineages whose key+chain file is rebuilt from the archive
    (and whose key permissions are enforced); the others keep theirs, rebuilt only
    when missing. A lineage in ``rebuild`` whose files are unusable is an error; any
    other is left out of the SNI table and Dovecot with a warning. ``policy`` (install
    only) adds the TLS policy and master.cf overrides; renewal and undeploy never
    re-apply those over the operator's later edits. ``others``: the other instances'
    states; ``lookups``: the TLSA lookups of each lineage of ``to_load`` the DANE gate
    decides on (``gate.needs_lookup``).
    """
    desired = Desired(state=state)
    required = set(rebuild)
    for name in to_load(state, required):
        lineage = state.lineages[name]
        try:
            live = _lineage(site.config_dir, lineage)
            # DANE: the live files, or the version served now while TLSA records reject them.
            choice = gate.choose_material(live, lineage, certs.load_material(live), config,
                                          lookups.get(name))
        except errors.Error as exc:
            if name in required:
                raise
            desired.broken.append(name)
            desired.warnings.append(
                f"lineage {name} cannot be served ({exc}); it is left out until its files are "
                f"back (certbot renew --cert-name {name}) or it is undeployed "
                f"(certbot-postfix-tls undeploy --cert-name {name})"
            )
            continue
        material = choice.material
        desired.notes += choice.notes
        desired.warnings += choice.warnings
        if choice.publish:
            desired.dane_publish[name] = choice.publish
        desired.dane_flag = desired.dane_flag or choice.flag
        desired.chain_files[lineage.chain_file] = material.combined()
        lineage.names = material.names
        lineage.expected = material.fingerprints()
        lineage.key_type = material.key_type
        if name in required:
            desired.secure.append(name)
    served = State(**{**state.__dict__})
    served.lineages = {n: lin for n, lin in state.lineages.items() if n not in desired.broken}
    state.default = sni.choose_default(served, config.main.get("myhostname", ""))
    served.default = state.default

    desired.remove_dirs = _stale_dirs(site.config_dir, [*others, state])

    if not served.lineages:
        if state.lineages:
            raise errors.PluginError(
                "No deployed lineage can be served: " + "; ".join(desired.warnings)
            )
        _plan_daemons(site, PlanRequest(site.config_dir, state, served), desired)
        desired.hooks = any(s.lineages for s in others)  # other instances still renew
        return desired

    desired.notes += sni.unpaired_notes(served)
    if state.sni_map_type:
        desired.sni_map = sni.render_map(served)
    _plan_daemons(site, PlanRequest(site.config_dir, state, served, policy), desired)
    return desired


def _plan_daemons(site: Site, request: PlanRequest, desired: Desired) -> None:
    """Every daemon's plan, in registry order."""
    for daemon in site.daemons:
        plan = daemon.plan(request)
        desired.plans[daemon.name] = plan
        desired.notes += plan.notes
        desired.warnings += plan.warnings


def _lineage(config_dir: str, deployed: DeployedLineage) -> certs.Lineage:
    return certs.Lineage.from_paths(deployed.name, deployed.key_path, deployed.fullchain_path,
                                    config_dir)


def _stale_dirs(config_dir: str, states: Sequence[State]) -> list[str]:
    """Derived-file directories of lineages none of ``states`` (every instance's, as
    they are about to be saved) has any more."""
    lineages_dir = os.path.join(config_dir, constants.PLUGIN_DIR, constants.LINEAGES_DIR)
    if not os.path.isdir(lineages_dir):
        return []
    wanted = {os.path.basename(os.path.dirname(lin.chain_file))
              for s in states for lin in s.lineages.values()}
    return sorted(os.path.join(lineages_dir, entry)
                  for entry in os.listdir(lineages_dir) if entry not in wanted)


# --- write ----------------------------------------------------------------------------


@dataclass
class _Saved:
    data: bytes
    mode: int
    uid: int
    gid: int


class Snapshot:
    """The bytes, mode and owner of every file before ``write`` touched it, in memory
    only (derived files hold private keys: they never go to disk elsewhere)."""

    def __init__(self) -> None:
        self.saved: dict[str, Optional[_Saved]] = {}

    def keep(self, *paths: str) -> None:
        for path in paths:
            if path in self.saved:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                self.saved[path] = None
                continue
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                self.saved[path] = _Saved(handle.read(), info.st_mode & 0o7777,
                                          info.st_uid, info.st_gid)

    def restore(self) -> None:
        """Put every file back as it was (created ones are removed)."""
        for path, saved in reversed(list(self.saved.items())):
            try:
                if saved is None:
                    if os.path.lexists(path):
                        os.unlink(path)
                    continue
                certs.write_atomic(path, saved.data, saved.mode)
                os.chown(path, saved.uid, saved.gid, follow_symlinks=False)
            except OSError as exc:  # keep restoring the others
                logger.error("could not restore %s: %s", path, exc)


def config_files(site: Site, desired: Desired) -> list[str]:
    """The configuration files a write may change: what a reverter checkpoint holds."""
    paths = [path for daemon, plan in _planned(site, desired) for path in daemon.files(plan)]
    paths += [desired.state.file(site.config_dir)]
    paths += [hooks.hook_path(site.config_dir, kind) for kind in hooks.KINDS]
    return list(dict.fromkeys(paths))


def _planned(site: Site, desired: Desired) -> list[tuple[Daemon, DaemonPlan]]:
    """Each daemon with its plan, in registry order."""
    return [(daemon, desired.plans[daemon.name]) for daemon in site.daemons
            if daemon.name in desired.plans]


def write(
    site: Site, desired: Desired, checkpoint: Optional[Checkpoint] = None,
    check: bool = True,
) -> Snapshot:
    """Write ``desired``, check it, and return the snapshot (restored on failure)."""
    snapshot = Snapshot()
    if checkpoint is not None:
        paths = config_files(site, desired)
        existing = {path for path in paths if os.path.exists(path)}
        checkpoint(existing, [path for path in paths if path not in existing])
    try:
        _write(site, desired, snapshot)
        if check:
            for daemon, plan in _planned(site, desired):
                if plan.check:
                    daemon.check()
    except BaseException:
        snapshot.restore()
        raise
    return snapshot


def _write(site: Site, desired: Desired, snapshot: Snapshot) -> None:
    """Every write in an order where each intermediate state is valid: new key+chain
    files first, then what points at them (SNI table, Dovecot, main.cf/master.cf),
    then files nothing points at any more, then the state."""
    config_dir, state = site.config_dir, desired.state
    for name in desired.secure:
        lineage = state.lineages[name]
        group = lineage.key_group
        _, created = permissions.ensure_group(group)
        if created:
            desired.notes.append(f"key permissions: created the system group {group}")
        desired.notes += [f"key permissions: {change}" for change in
                          permissions.secure_lineage(_lineage(config_dir, lineage), group,
                                                     deployed=_all_lineages(config_dir, state))]
    _write_derived(site, desired, snapshot)

    # A daemon may use what a later one provides (Dovecot's file declares the SASL
    # socket Postfix's submission uses): providers come first when deploying, and go
    # after their users stopped using them when removing.
    order = daemons.deploy_order(site.daemons) if state.lineages else daemons.ordered(
        site.daemons)
    for daemon in order:
        plan = desired.plans.get(daemon.name)
        if plan is not None and not plan.empty:
            snapshot.keep(*daemon.files(plan))
            daemon.apply(plan)

    hook_paths = [hooks.hook_path(config_dir, kind) for kind in hooks.KINDS]
    snapshot.keep(*hook_paths)
    if desired.hooks:
        hooks.write_hooks(config_dir)
    else:
        hooks.remove_hooks(config_dir)
    _remove_stale(site, desired, snapshot)
    # The state last: a run killed before this point is run again from the old
    # state, and every step above is idempotent.
    state_path = state.file(config_dir)
    snapshot.keep(state_path)
    if state.lineages:
        state.save(config_dir)
    elif os.path.lexists(state_path):
        os.unlink(state_path)


def _all_lineages(config_dir: str, state: State) -> list[str]:
    """Every lineage any instance serves, with ``state`` as it is about to be saved."""
    names = set(state.lineages)
    for other in State.load_all(config_dir):
        if other.instance != state.instance:
            names |= set(other.lineages)
    return sorted(names)


def _write_derived(site: Site, desired: Desired, snapshot: Snapshot) -> None:
    """The key+chain files and the SNI table (never in a reverter checkpoint)."""
    config_dir, state = site.config_dir, desired.state
    plugin_dir = os.path.join(config_dir, constants.PLUGIN_DIR)
    os.makedirs(plugin_dir, mode=0o755, exist_ok=True)
    lineages_dir = os.path.join(plugin_dir, constants.LINEAGES_DIR)
    os.makedirs(lineages_dir, mode=0o700, exist_ok=True)
    os.chmod(lineages_dir, 0o700)  # key material below
    for path, data in desired.chain_files.items():
        for stale in certs.stale_temps(path):  # a write a kill cut short: a key copy
            os.unlink(stale)
        snapshot.keep(path)
        certs.write_atomic(path, data, 0o600)
    if desired.sni_map is not None and state.sni_map_type:
        snapshot.keep(*_sni_files(config_dir, state.instance))
        sni.write_map(desired.sni_map, sni.map_path(config_dir, state.instance),
                      site.mta.config_dir, state.sni_map_type)


def _sni_files(config_dir: str, instance: str) -> list[str]:
    return [sni.map_path(config_dir, instance)] + [sni.index_path(config_dir, kind, instance)
                                                   for kind in sorted(sni.INDEX_SUFFIX)]


def _remove_stale(site: Site, desired: Desired, snapshot: Snapshot) -> None:
    """Derived files nothing points at any more."""
    if desired.sni_map is None:
        for path in _sni_files(site.config_dir, desired.state.instance):
            snapshot.keep(path)
            if os.path.lexists(path):
                os.unlink(path)
    for directory in desired.remove_dirs:
        for entry in sorted(os.listdir(directory)):
            snapshot.keep(os.path.join(directory, entry))
        shutil.rmtree(directory)


# --- activate -------------------------------------------------------------------------


def activate(
    site: Site,
    state: State,
    reload: Sequence[str],
    judged: Optional[Iterable[str]],
    warn: Warn,
) -> list[str]:
    """Reload ``reload`` (each once), then verify. Returns one sentence per failure of
    the ``judged`` lineages (None: all); the others' failures go to ``warn``."""
    services.reload(site.daemons, reload, warn)
    if not state.verify:
        return []
    if not state.lineages:  # the last undeploy verifies with verify_removal
        return []
    _wait_for_throttle(site, warn)
    judged_set = set(state.lineages) if judged is None else set(judged) & set(state.lineages)
    problems: list[str] = []
    for name in sorted(state.lineages):
        try:
            results = services.check_all(state, [name])
        except (tls_client.VerifyError, errors.Error) as exc:
            results = []
            failures = [f"lineage {name}: {exc}"]
        else:
            failures = verify.summarize(results)
            for line in verify.summarize(results, ("WARNING",)):
                warn(line)
        if name in judged_set:
            problems += failures
        else:
            for failure in failures:
                warn(f"{failure} (lineage {name}, not changed by this operation)")
    # The operator's own SNI entries must keep their certificates.
    foreign = services.check_foreign(site.config_dir, state)
    problems += [f"{line} (a name of your own SNI table)" for line in verify.summarize(foreign)]
    return problems


def _wait_for_throttle(site: Site, warn: Warn) -> None:
    """Postfix's master accepts no connection on a service it throttles (a daemon that
    failed to start, e.g. smtpd without its SASL backend before this install): wait
    for the throttle to end, at most THROTTLE_WAIT_MAX seconds, and say so."""
    for daemon in site.daemons:
        if not isinstance(daemon, Postfix):
            continue
        ends, log = daemon.throttle()
        if ends is None:
            continue
        wait = (ends - datetime.now(timezone.utc)).total_seconds() + 1
        if wait > constants.THROTTLE_WAIT_MAX:
            warn(f"Postfix's master throttles a service until {ends.astimezone():%H:%M:%S} "
                 f"(a daemon failed to start; {log} says why): its port refuses connections "
                 "until then, so verification may fail; run certbot-postfix-tls verify after "
                 "that time")
            continue
        warn(f"Postfix's master throttles a service after a daemon failed to start ({log}: "
             f"{throttle.THROTTLE_LINE}): waiting {wait:.0f} s for it to accept connections "
             "again before verifying")
        time.sleep(wait)


def verify_removal(site: Site, state: State, warn: Warn,
                   retry_seconds: float = 5.0) -> list[str]:
    """After the last undeploy's reload: every TLS endpoint of the daemons still
    completes a handshake, with whatever certificate their restored settings name (there
    is no lineage to compare with). One sentence per endpoint that fails."""
    if not state.verify:
        return []
    _wait_for_throttle(site, warn)
    problems = []
    for endpoint in services.endpoints(state):
        deadline = time.monotonic() + retry_seconds
        while True:
            try:
                dialogues.handshake(endpoint, None)
                break
            except tls_client.VerifyError as exc:
                if exc.retryable and time.monotonic() < deadline:
                    time.sleep(0.2)  # an old process may still answer after the reload
                    continue
                problems.append(
                    f"{endpoint.service} port {endpoint.port} ({endpoint.address}) no longer "
                    f"completes a TLS handshake with the settings it had before "
                    f"certbot-postfix-tls: {exc}")
                break
    return problems


# --- after certbot rollback -----------------------------------------------------------


def regenerate(config_dir: str, warn: Warn) -> None:
    """After the reverter restored configuration files: rebuild every derived file
    from the restored states and the lineages' *current* archive files, and remove
    those no restored state refers to. Writes no Postfix or Dovecot configuration."""
    states = State.load_all(config_dir)
    for state in states:
        desired = Desired(state=state, remove_dirs=_stale_dirs(config_dir, states))
        for name in sorted(state.lineages):
            lineage = state.lineages[name]
            try:
                # A lineage held back by DANE keeps its held version (no DNS lookup here).
                material = gate.held_material(_lineage(config_dir, lineage), lineage)
            except errors.Error as exc:
                warn(f"lineage {name}: {exc}")
                continue
            desired.chain_files[lineage.chain_file] = material.combined()
            lineage.expected = material.fingerprints()
        if state.lineages and state.sni_map_type:
            desired.sni_map = sni.render_map(state)
        site = Site.from_state(config_dir, state)
        snapshot = Snapshot()
        try:
            _write_derived(site, desired, snapshot)
            _remove_stale(site, desired, snapshot)
            if state.lineages:  # the fingerprints of the certificates now served
                snapshot.keep(state.file(config_dir))
                state.save(config_dir)
        except BaseException:
            snapshot.restore()
            raise
    # Instances whose state the rollback removed: their SNI tables and derived files go.
    kept = {state.instance for state in states}
    candidates = [""] + _instance_dirs(config_dir)
    for instance in candidates:
        if instance not in kept:
            for path in _sni_files(config_dir, instance):
                if os.path.lexists(path):
                    os.unlink(path)
    if not states:
        for directory in _stale_dirs(config_dir, []):
            shutil.rmtree(directory)


def _instance_dirs(config_dir: str) -> list[str]:
    root = os.path.join(config_dir, constants.PLUGIN_DIR, constants.INSTANCES_DIR)
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


# --- key copies in certbot's backups --------------------------------------------------


def purge_key_backups(config_dir: str, checkpoint_dirs: Iterable[str]) -> list[str]:
    """Remove the copies of derived files (they hold private keys) that earlier versions
    put into certbot's reverter checkpoints, keeping each checkpoint usable. Returns
    the checkpoint directories that held some."""
    derived_root = os.path.join(os.path.abspath(config_dir), constants.PLUGIN_DIR) + os.sep
    state_files = {State.path(config_dir, key) for key in ["", *_instance_dirs(config_dir)]}
    cleaned = []
    for cp_dir in checkpoint_dirs:
        filepaths = os.path.join(cp_dir, "FILEPATHS")
        try:
            with open(filepaths, encoding="utf-8") as handle:
                paths = handle.read().splitlines()
        except OSError:
            continue
        keep = [(i, p) for i, p in enumerate(paths)
                if not p.startswith(derived_root) or p in state_files]
        if len(keep) == len(paths):
            continue
        for i, path in enumerate(paths):
            if (i, path) not in keep:
                backup = os.path.join(cp_dir, f"{os.path.basename(path)}_{i}")
                if os.path.lexists(backup):
                    os.unlink(backup)
        # Backups are named <basename>_<line index>: renumber what stays.
        staged = []
        for new, (old, path) in enumerate(keep):
            source = os.path.join(cp_dir, f"{os.path.basename(path)}_{old}")
            temp = os.path.join(cp_dir, f".renumber_{new}")
            os.rename(source, temp)
            staged.append((temp, os.path.join(cp_dir, f"{os.path.basename(path)}_{new}")))
        for temp, final in staged:
            os.rename(temp, final)
        certs.write_atomic(filepaths, "".join(p + "\n" for _, p in keep).encode(), 0o644)
        cleaned.append(cp_dir)
    return cleaned


def checkpoint_dirs(backup_dir: str, in_progress_dir: str, temp_dir: str) -> list[str]:
    """Every reverter checkpoint directory certbot keeps."""
    found = [in_progress_dir, temp_dir]
    if os.path.isdir(backup_dir):
        found += [os.path.join(backup_dir, entry) for entry in sorted(os.listdir(backup_dir))]
    return [path for path in found if os.path.isdir(path)]
