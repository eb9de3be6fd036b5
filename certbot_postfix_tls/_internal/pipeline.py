"""The one deployment pipeline: recorded state -> configuration -> written, checked, live.

Install (``certbot install``/``run``), both renewal hooks, ``undeploy`` and
``certbot rollback`` all go through here, and nothing else writes Postfix or
Dovecot configuration:

- ``render`` turns the state (lineages, options, default rule) into the
  desired configuration: main.cf certificate settings (plus, on install, the
  TLS policy and master.cf overrides), each lineage's key+chain file, the SNI
  table, the plugin's Dovecot file. It is a decision only: the caller gathers
  first what it needs beyond the files of the lineages (the other instances'
  states, the TLSA lookups of the lineages it loads: ``ops/render.py``).
- ``write`` puts it on disk in an order where every intermediate state is one
  Postfix and Dovecot accept, keeps an in-memory snapshot of every file it
  touches, runs ``postfix check`` and ``doveconf -x``, and restores the
  snapshot on any failure. Configuration files go into certbot's reverter
  checkpoint when the caller gives one; derived files (key+chain, SNI table and
  index) never do: they hold private keys, and after a rollback they are
  rebuilt from each lineage's current archive files (``regenerate``).
- ``activate`` reloads each service at most once (Dovecot first: its SASL
  socket must exist before new smtpd processes look for it) and verifies by
  handshake. Only the lineages the operation changed decide success; other
  lineages' failures come back as warnings.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import (
    certs,
    constants,
    dovecot,
    hooks,
    permissions,
    postfix,
    services,
    sni,
    tls_client,
    verify,
)
from certbot_postfix_tls._internal.dane import gate
from certbot_postfix_tls._internal.state import DeployedLineage, State

logger = logging.getLogger(__name__)

Warn = Callable[[str], None]
# (existing paths, created paths): puts configuration files into a reverter checkpoint.
Checkpoint = Callable[[set[str], list[str]], None]


@dataclass
class Site:
    """The Postfix instance and the Dovecot (if any) a state configures."""

    config_dir: str
    mta: postfix.Postfix
    imap: Optional[dovecot.Dovecot]

    @classmethod
    def from_state(cls, config_dir: str, state: State) -> Site:
        imap = dovecot.Dovecot(state.dovecot_config) if state.dovecot_config else None
        return cls(config_dir, postfix.Postfix(state.postfix_dir), imap)


@dataclass
class Desired:
    """Everything ``write`` puts on disk, and what to tell the administrator."""

    state: State
    main: dict[str, str] = field(default_factory=dict)  # main.cf: value ("" clears)
    main_remove: list[str] = field(default_factory=list)  # main.cf: postconf -X
    new_services: list[postfix.MasterService] = field(default_factory=list)
    service_params: list[postfix.ServiceParam] = field(default_factory=list)
    params_remove: list[str] = field(default_factory=list)  # "name/type/param": postconf -PX
    services_remove: list[str] = field(default_factory=list)  # "name/type": postconf -MX
    chain_files: dict[str, bytes] = field(default_factory=dict)  # derived key+chain files
    remove_dirs: list[str] = field(default_factory=list)  # derived dirs of dropped lineages
    sni_map: Optional[str] = None  # table text; None: no table (removed if present)
    dovecot_writes: dict[str, str] = field(default_factory=dict)
    dovecot_remove: list[str] = field(default_factory=list)
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
    config: postfix.PostfixConfig,
    others: Sequence[State],
    lookups: Mapping[str, gate.Lookups],
    rebuild: Iterable[str] = (),
    policy: Optional[postfix.Options] = None,
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
        _render_removal(site, state, config, desired)
        desired.hooks = any(s.lineages for s in others)  # other instances still renew
        return desired

    default = served.lineages[str(served.default)]
    desired.notes += sni.unpaired_notes(served)
    files = postfix.CertificateFiles(
        # One key+chain file per key type: Postfix picks what the client supports.
        chain_file=", ".join(sni.chain_files(served, default.name)),
        fullchain=default.fullchain_path,
        key=default.key_path,
        sni_map=sni.merged_maps(
            config.main.get("tls_server_sni_maps", ""),
            f"{state.sni_map_type}:{sni.map_path(site.config_dir, state.instance)}",
        ) if state.sni_map_type else None,
    )
    if policy is not None:
        plan = postfix.plan_tls(config, files, policy)
        desired.main = plan.main
        desired.new_services = plan.new_services
        desired.service_params = plan.service_params
        desired.notes += plan.notes
        desired.warnings += plan.warnings
    else:
        desired.main = postfix.cert_settings(config, files)
    if state.sni_map_type:
        desired.sni_map = sni.render_map(served)
    if site.imap is not None:
        imap_plan = site.imap.plan(
            sni.dovecot_files(served, default.name),
            sasl_listener=state.sasl_listener,
            sni=sni.dovecot_sni(served),
            sessions=state.dovecot_sessions,
        )
        desired.dovecot_writes = imap_plan.writes
        desired.notes += [f"dovecot: {note}" for note in imap_plan.notes]
    record_applied(state, config, desired)
    return desired


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


def _render_removal(
    site: Site, state: State, config: postfix.PostfixConfig, desired: Desired
) -> None:
    """The last lineage goes: Postfix and Dovecot get back the TLS settings they had
    before the plugin's first deploy, or the removal is refused naming the setting
    the operator changed since."""
    explicit = config.explicit
    for name, before in sorted(state.baseline_main.items()):
        current = explicit.get(name)
        applied = state.applied_main.get(name)
        if current == before or (current or "") == (before or ""):
            continue
        if applied is not None and (current or "") != applied:
            raise errors.PluginError(
                f"main.cf sets {name} = {current or '(unset)'}, which is neither what "
                f"certbot-postfix-tls set ({applied or '(empty)'}) nor what it was before "
                f"({before or '(unset)'}): nothing was changed; set it back, or keep the "
                "lineage deployed."
            )
        if before is None:
            desired.main_remove.append(name)
        else:
            desired.main[name] = before
    services_by_key = {s.key: s for s in config.services}
    for key, before in sorted(state.baseline_params.items()):
        service_key, _, param = key.rpartition("/")
        if service_key in state.added_services or service_key not in services_by_key:
            continue
        current = services_by_key[service_key].overrides.get(param)
        applied = state.applied_params.get(key)
        if current == before:
            continue
        if applied is not None and current != applied:
            raise errors.PluginError(
                f"master.cf service {service_key} sets -o {param}={current or '(unset)'}, "
                f"which is neither what certbot-postfix-tls set ({applied}) nor what it was "
                f"before ({before or '(unset)'}): nothing was changed; set it back, or keep "
                "the lineage deployed."
            )
        if before is None:
            desired.params_remove.append(key)
        else:
            desired.service_params.append(postfix.ServiceParam(service_key, param, before))
    desired.services_remove = [key for key in state.added_services if key in services_by_key]
    if site.imap is not None:
        plan = site.imap.removal_plan()
        desired.dovecot_writes = plan.writes
        desired.dovecot_remove = [site.imap.plugin_file]
        desired.notes += [f"dovecot: {note}" for note in plan.notes]
    desired.notes.append("restored the TLS settings Postfix had before certbot-postfix-tls")


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
    paths = [site.mta.main_cf, site.mta.master_cf, desired.state.file(site.config_dir)]
    paths += [hooks.hook_path(site.config_dir, kind) for kind in hooks.KINDS]
    paths += list(desired.dovecot_writes) + desired.dovecot_remove
    return list(dict.fromkeys(paths))


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
            site.mta.check()
            if site.imap is not None and desired.state.lineages:
                site.imap.check()
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

    # Dovecot's file declares the SASL socket submission uses: it comes before Postfix
    # when deploying, and goes after Postfix stopped using it when removing.
    if desired.dovecot_remove:
        _write_postfix(site, desired, snapshot)
        _write_dovecot(site, desired, snapshot)
    else:
        _write_dovecot(site, desired, snapshot)
        _write_postfix(site, desired, snapshot)

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


def _write_postfix(site: Site, desired: Desired, snapshot: Snapshot) -> None:
    if desired.main or desired.new_services or desired.service_params or (
        desired.main_remove or desired.params_remove or desired.services_remove
    ):
        snapshot.keep(site.mta.main_cf, site.mta.master_cf)
        _apply_postfix(site.mta, desired)


def _write_dovecot(site: Site, desired: Desired, snapshot: Snapshot) -> None:
    if site.imap is None:
        return
    snapshot.keep(*desired.dovecot_writes, *desired.dovecot_remove)
    site.imap.apply(dovecot.DovecotPlan(writes=desired.dovecot_writes))
    for path in desired.dovecot_remove:
        if os.path.lexists(path):
            os.unlink(path)


def _write_derived(site: Site, desired: Desired, snapshot: Snapshot) -> None:
    """The key+chain files and the SNI table (never in a reverter checkpoint)."""
    config_dir, state = site.config_dir, desired.state
    plugin_dir = os.path.join(config_dir, constants.PLUGIN_DIR)
    os.makedirs(plugin_dir, mode=0o755, exist_ok=True)
    lineages_dir = os.path.join(plugin_dir, constants.LINEAGES_DIR)
    os.makedirs(lineages_dir, mode=0o700, exist_ok=True)
    os.chmod(lineages_dir, 0o700)  # key material below
    for path, data in desired.chain_files.items():
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


def _apply_postfix(mta: postfix.Postfix, desired: Desired) -> None:
    """master.cf first when adding (new services are complete entries), main.cf in one
    ``postconf -e``; removals (undeploy) take master.cf's overrides away first."""
    for key in desired.services_remove:
        mta.postconf("-MX", key)
    if desired.params_remove:
        mta.postconf("-PX", *desired.params_remove)
    plan = postfix.TLSPlan(main=desired.main, new_services=desired.new_services,
                           service_params=desired.service_params)
    mta.apply(plan)
    if desired.main_remove:
        mta.postconf("-X", *desired.main_remove)


def record_applied(state: State, config: postfix.PostfixConfig, desired: Desired) -> None:
    """Remember what Postfix had before the plugin first changed a setting, and what
    the plugin set, so that undeploying the last lineage can put it back."""
    for name, value in desired.main.items():
        state.baseline_main.setdefault(name, config.explicit.get(name))
        state.applied_main[name] = value
    services_by_key = {s.key: s for s in config.services}
    for service in desired.new_services:
        if service.key not in state.added_services:
            state.added_services.append(service.key)
    for param in desired.service_params:
        key = f"{param.service}/{param.param}"
        existing = services_by_key.get(param.service)
        state.baseline_params.setdefault(
            key, existing.overrides.get(param.param) if existing else None
        )
        state.applied_params[key] = param.value


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
    services.reload(state, reload, warn)
    if not state.verify or not state.lineages:
        return []
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
