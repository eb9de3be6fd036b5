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

import grp
import logging
import os
import pwd
import shutil
import stat
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
from certbot_postfix_tls._internal.dane import gate, history
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
    loading = to_load(state, required)
    for name in sorted(set(state.lineages) - set(loading)):
        # Not rebuilt, yet Dovecot reads the lineage's own files (live/): one whose
        # files are gone (a removed archive/) would fail Dovecot's check for every
        # lineage, so it is left out until they are back.
        try:
            certs.check_readable(_lineage(site.config_dir, state.lineages[name]))
        except errors.Error as exc:
            _leave_out(desired, name, exc)
    for name in loading:
        lineage = state.lineages[name]
        try:
            live = _lineage(site.config_dir, lineage)
            # DANE: the live files, or the version served now while TLSA records reject them.
            choice = gate.choose_material(
                live, lineage, certs.load_material(live), config, lookups.get(name),
                others_held=[o.lineages[name].held for o in others if name in o.lineages])
        except errors.Error as exc:
            if name in required:
                raise
            _leave_out(desired, name, exc)
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
    state.default = sni.choose_default(served, config.value("myhostname"))
    served.default = state.default

    desired.remove_dirs = _stale_dirs(site.config_dir, [*others, state])

    if not served.lineages:
        if state.lineages:
            raise errors.PluginError(
                "No deployed lineage can be served: " + "; ".join(desired.warnings)
            )
        _plan_daemons(site, PlanRequest(site.config_dir, state, served, mta_config=config), desired)
        desired.hooks = any(s.lineages for s in others)  # other instances still renew
        return desired

    desired.notes += sni.unpaired_notes(served)
    if state.sni_map_type:
        desired.sni_map = sni.render_map(served)
    _plan_daemons(site, PlanRequest(site.config_dir, state, served, policy, config), desired)
    return desired


def _leave_out(desired: Desired, name: str, exc: errors.Error) -> None:
    """A lineage whose files are unusable: out of every daemon's configuration, kept in
    the state, so the first operation that finds its files back serves it again."""
    desired.broken.append(name)
    desired.warnings.append(
        f"lineage {name} cannot be served ({exc}); it is left out of Postfix and Dovecot "
        f"until its files are back (certbot renew --cert-name {name}) or it is undeployed "
        f"(certbot-postfix-tls undeploy --cert-name {name})"
    )


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

    def changed(self, ignore: Iterable[str] = ()) -> list[str]:
        """The kept files whose bytes differ now from before (created or removed too),
        except ``ignore``: what a reload would make the daemons read anew."""
        skip = set(ignore)
        found = []
        for path, saved in self.saved.items():
            if path in skip:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                now = None
            except OSError:
                found.append(path)  # cannot tell: count it as changed
                continue
            else:
                with os.fdopen(fd, "rb") as handle:
                    now = handle.read()
            if now != (saved.data if saved is not None else None):
                found.append(path)
        return found

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
    history.record(site.config_dir, desired.state)  # outside checkpoints: never rolled back
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
    changed = False
    for path, data in desired.chain_files.items():
        for stale in certs.stale_temps(path):  # a write a kill cut short: a key copy
            os.unlink(stale)
        snapshot.keep(path)
        changed = certs.write_atomic(path, data, 0o600) or changed
    if desired.sni_map is not None and state.sni_map_type:
        snapshot.keep(*_sni_files(config_dir, state.instance))
        sni.write_map(desired.sni_map, sni.map_path(config_dir, state.instance),
                      site.mta.config_dir, state.sni_map_type, rebuild=changed)


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


# --- preview: what write would do, nothing changed (certbot-postfix-tls plan) ----------


@dataclass
class KeyFile:
    """A derived file holding key material: shown by path, mode and owner only."""

    path: str
    action: str  # "create", "replace", "remove"
    mode: int = 0o600
    owner: str = "root:root"


@dataclass
class Preview:
    """What ``write(site, desired)`` would change, computed without changing anything."""

    # Text files (configuration, hooks, the state): path -> (bytes now, bytes after);
    # None: the file does not exist (before) or is removed (after).
    files: dict[str, tuple[Optional[bytes], Optional[bytes]]] = field(default_factory=dict)
    key_files: list[KeyFile] = field(default_factory=list)
    permissions: list[permissions.Change] = field(default_factory=list)
    group: Optional[str] = None  # the key group it would create
    directories: list[tuple[str, int]] = field(default_factory=list)  # created, with mode
    endpoints: list[tls_client.Endpoint] = field(default_factory=list)  # verified after


def _mode_change(preview: Preview, path: str, mode: int, owner: Optional[tuple[int, int]]
                 ) -> None:
    """The chmod/chown ``certs.write_atomic`` makes on a file whose bytes stay."""
    info = os.lstat(path)
    uid, gid = owner if owner is not None else (info.st_uid, info.st_gid)
    if (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) != (mode, uid, gid):
        preview.permissions.append(permissions.Change(
            path, f"{_owner(info.st_uid, info.st_gid)} {stat.S_IMODE(info.st_mode):04o}",
            f"{_owner(uid, gid)} {mode:04o}"))


def _owner(uid: int, gid: int) -> str:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def _text_file(preview: Preview, path: str, new: Optional[bytes],
               mode: Optional[int] = None, owner: Optional[tuple[int, int]] = None) -> None:
    old = certs.current_bytes(path)
    if old != new:
        preview.files[path] = (old, new)
    elif new is not None and mode is not None:
        _mode_change(preview, path, mode, owner)


def _key_file(preview: Preview, path: str, new: Optional[bytes]) -> bool:
    """Record a derived file's change (never its content); True when it changes."""
    old = certs.current_bytes(path)
    if new is None:
        if old is None:
            return False
        preview.key_files.append(KeyFile(path, "remove"))
        return True
    if old == new:
        _mode_change(preview, path, 0o600, None)
        return False
    preview.key_files.append(KeyFile(path, "create" if old is None else "replace", 0o600,
                                     _owner(os.geteuid(), os.getegid())))
    return True


def _directory(preview: Preview, path: str, mode: int) -> None:
    if not os.path.isdir(path) and (path, mode) not in preview.directories:
        preview.directories.append((path, mode))


def preview(site: Site, desired: Desired) -> Preview:
    """What ``write(site, desired)`` would change, step by step as ``_write`` makes it,
    changing nothing: no file, mode, group or checkpoint; daemons not reloaded.
    Configuration files come with their new bytes (Postfix's from the same postconf
    runs on a copy), files holding key material by path, mode and owner only."""
    config_dir, state = site.config_dir, desired.state
    result = Preview()
    dry = permissions.DryRun()
    for name in desired.secure:
        group = state.lineages[name].key_group
        if permissions.group_missing(group):
            result.group = dry.new_group = group
        permissions.secure_lineage(_lineage(config_dir, state.lineages[name]), group,
                                   deployed=_all_lineages(config_dir, state), dry=dry)
    result.permissions += dry.changes

    plugin_dir = os.path.join(config_dir, constants.PLUGIN_DIR)
    lineages_dir = os.path.join(plugin_dir, constants.LINEAGES_DIR)
    _directory(result, plugin_dir, 0o755)
    _directory(result, lineages_dir, 0o700)
    if os.path.isdir(lineages_dir):
        _mode_change(result, lineages_dir, 0o700, None)
    changed = False
    for path, data in desired.chain_files.items():
        _directory(result, os.path.dirname(path), 0o700)
        changed = _key_file(result, path, data) or changed
    if desired.sni_map is not None and state.sni_map_type:
        table = sni.map_path(config_dir, state.instance)
        index = sni.index_path(config_dir, state.sni_map_type, state.instance)
        _directory(result, os.path.dirname(table), 0o755)
        table_changed = _key_file(result, table, desired.sni_map.encode())
        if changed or table_changed or not sni.index_current(table, state.sni_map_type):
            result.key_files.append(KeyFile(
                index, "replace" if os.path.exists(index) else "create", 0o600, "root:root"))

    order = daemons.deploy_order(site.daemons) if state.lineages else daemons.ordered(
        site.daemons)
    for daemon in order:
        plan = desired.plans.get(daemon.name)
        if plan is None:
            if state.verify and state.lineages:
                result.endpoints += daemon.endpoints(state)
            continue
        shown = daemon.preview(plan, state)
        for path, new in shown.files.items():
            _text_file(result, path, new)
        if state.verify and state.lineages:
            result.endpoints += shown.endpoints

    for kind in hooks.KINDS:
        path = hooks.hook_path(config_dir, kind)
        if desired.hooks:
            _text_file(result, path, hooks.hook_script(config_dir, kind).encode(), 0o755, (0, 0))
        elif hooks.is_ours(path):
            _text_file(result, path, None)

    if desired.sni_map is None:
        for path in _sni_files(config_dir, state.instance):
            _key_file(result, path, None)
    for directory in desired.remove_dirs:
        for entry in sorted(os.listdir(directory)):
            _key_file(result, os.path.join(directory, entry), None)

    state_path = state.file(config_dir)
    _text_file(result, state_path, state.text().encode() if state.lineages else None,
               0o644 if state.lineages else None)
    # The DANE history write records the version served (outside checkpoints).
    served = history.updated(config_dir, state)
    if served is not None:
        _text_file(result, history.path(config_dir), served, 0o644)
    return result


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
                # A lineage held back by DANE keeps its held version (no DNS lookup here),
                # never older than one already served (the history outlives checkpoints).
                material = gate.held_material(_lineage(config_dir, lineage), lineage,
                                              history.newest(config_dir, name))
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
