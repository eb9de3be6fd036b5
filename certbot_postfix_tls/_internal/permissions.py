"""Private-key permissions: readable by root and the key group, nobody else.

certbot makes live/ and archive/ 0700 and each new key 0600, then copies the
previous key's group bits *and its world-read bit* to the renewed key, so a
key that was ever world-readable stays so forever. Here the lineage's keys
become root:<key group> 0640 at most with no "other" bit, the lineage's own
directories (live/NAME, archive/NAME) root:<key group> 0750, and live/ and
archive/ root:<key group> with group *traverse* only (0710; their "other" bits
are left as they were). A key given by path (not from certbot's live/) keeps its
owner: only its group and mode change.

Group traverse on live/ and archive/ must not open anything else: certbot
makes every archive/OTHER 0755 and carries an old key's world-read bit
forward, so a key group member who can pass archive/ could read another
lineage's 0644 key. Every lineage directory below them that the plugin did
not deploy therefore loses the bits that would let the key group in (its
"other" bits when live/ or archive/ give others nothing, its group bits when
it belongs to the key group): other lineages stay exactly as unreachable as
certbot left them. This is re-done on every deploy and renewal, so lineages
created later are covered too.

Nothing here follows a symbolic link when changing an owner or a mode: every
path component below certbot's config dir is opened relative to its parent
with O_NOFOLLOW, checked (type, inode) and changed through the descriptor
(fchown/fchmod). A symlink where certbot keeps a real file or directory, or a
live/ key link resolving outside the lineage's archive/ directory, is refused
before anything is changed.
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import logging
import os
import pwd
import re
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import certs, constants, process

logger = logging.getLogger(__name__)

DEFAULT_KEY_GROUP = constants.CLI_DEFAULTS["key_group"]
KEY_MAX_MODE = 0o640
KEY_MIN_MODE = 0o440  # the key group must be able to read the key, or the group is pointless
DIR_MODE = 0o750  # a deployed lineage's dirs: owner rwx, key group traverse + list, no other
TOP_MIN_MODE = 0o710  # live/, archive/: owner rwx, key group traverse only (no listing)
TOP_MAX_MODE = 0o715  # ... and whatever read/traverse "other" already had
KEY_PATTERN = "privkey*.pem"

# A plain group name as shadow-utils accepts it; no leading '-' (option
# injection into groupadd), no '/', no whitespace, not all digits (a gid).
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY


# --- changes shown, not made (certbot-postfix-tls plan) ---------------------------

# The gid a dry run gives a key group it would create (no real gid is negative).
PLANNED_GID = -1


@dataclass
class Change:
    """One owner/mode change: ``before``/``after`` as ``user:group mode``."""

    path: str
    before: str
    after: str


@dataclass
class DryRun:
    """Passed as ``dry``: the changes are collected here instead of being made.
    ``new_group`` names the key group a dry run treats as created (``PLANNED_GID``)."""

    new_group: Optional[str] = None
    changes: list[Change] = field(default_factory=list)

    def group_name(self, gid: int) -> str:
        return self.new_group if gid == PLANNED_GID and self.new_group else _group_name(gid)


# --- names ------------------------------------------------------------------------


def _gid_of(group: str) -> Optional[int]:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _check_group_name(name: str) -> None:
    if not _GROUP_NAME.match(name) or name.isdigit():
        raise errors.PluginError(
            f"The key group name {name!r} is not a plain group name: pass a name such as "
            f"{DEFAULT_KEY_GROUP} to --postfix-tls-key-group."
        )


def group_add_argv(name: str) -> list[str]:
    """The command that creates the system group ``name`` here: shadow-utils'
    ``groupadd --system`` (Debian, RHEL/Fedora, SUSE), else FreeBSD's ``pw groupadd``
    (no system/user distinction there); groupadd when neither is found, so that
    the failure names the usual tool."""
    if process.find_tool("groupadd") is None and process.find_tool("pw") is not None:
        return ["pw", "groupadd", name]
    return ["groupadd", "--system", name]


def _group_add_hint(name: str) -> str:
    return " ".join(group_add_argv(name))


def ensure_group(name: str) -> tuple[int, bool]:
    """Return ``(gid, created)`` for the key group, creating it as a system group if missing."""
    _check_group_name(name)
    gid = _gid_of(name)
    if gid is not None:
        return gid, False
    argv = group_add_argv(name)
    proc = process.run(
        argv,
        what=f"The key group {name} does not exist and {argv[0]} could not create it "
             f"(create it yourself with {' '.join(argv)})",
        check=False,
    )
    gid = _gid_of(name)
    if gid is None:
        raise errors.PluginError(
            f"The key group {name} does not exist and {' '.join(argv)} failed "
            f"({process.last_line(proc.stderr or proc.stdout) or 'exit ' + str(proc.returncode)}): "
            "create the group yourself or choose an existing one with --postfix-tls-key-group."
        )
    if proc.returncode != 0:
        # Someone else created it between our look-up and groupadd.
        return gid, False
    logger.info("Created the system group %s (gid %d) for private-key access.", name, gid)
    return gid, True


def group_missing(name: str) -> bool:
    """Whether the key group ``name`` (a valid name, else refused) does not exist yet:
    ``ensure_group`` would create it."""
    _check_group_name(name)
    return _gid_of(name) is None


def _require_gid(group: str) -> int:
    _check_group_name(group)
    gid = _gid_of(group)
    if gid is None:
        raise errors.PluginError(
            f"The key group {group} does not exist: create it with {_group_add_hint(group)} "
            "or choose an existing one with --postfix-tls-key-group."
        )
    return gid


# --- the O_NOFOLLOW primitive -----------------------------------------------------------


def _refuse_link(path: str, kind: str) -> errors.PluginError:
    return errors.PluginError(
        f"Refusing to change {path}: it is a symbolic link where certbot keeps a real {kind}, "
        "so nothing was changed; find out who planted it and restore the lineage "
        "(certbot renew --force-renewal recreates its files)."
    )


def _open_nofollow(dir_fd: Optional[int], name: str, path: str, want_dir: bool) -> int:
    """Open ``name`` (relative to ``dir_fd``) without following a final symlink.

    ``path`` is only used in messages. The entry must be a real directory or a
    regular file as asked; the lstat before and fstat after must agree, so an
    entry swapped in between is refused too.
    """
    kind = "directory" if want_dir else "file"
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise errors.PluginError(
            f"The {kind} {path} does not exist: check the certificate name "
            "(certbot certificates) and that the lineage is complete."
        ) from None
    if stat.S_ISLNK(before.st_mode):
        raise _refuse_link(path, kind)
    if not (stat.S_ISDIR if want_dir else stat.S_ISREG)(before.st_mode):
        raise errors.PluginError(
            f"Refusing to change {path}: it is not a {kind} as certbot makes it, "
            "so nothing was changed; restore the lineage."
        )
    try:
        fd = os.open(name, _DIR_FLAGS if want_dir else _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink after the lstat
            raise _refuse_link(path, kind) from None
        raise errors.PluginError(
            f"The {kind} {path} cannot be opened ({exc.strerror}): run certbot as root."
        ) from None
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise errors.PluginError(
            f"Refusing to change {path}: it was replaced while being checked, "
            "so nothing was changed; run the command again."
        )
    return fd


def _apply(fd: int, path: str, label: str, uid: Optional[int], gid: int,
           min_mode: int, max_mode: int, dry: Optional[DryRun] = None) -> Optional[str]:
    """Set owner (``uid`` None: kept) and mode through ``fd``; return a change line or
    None. With ``dry``, the change is recorded there instead of made."""
    st = os.fstat(fd)
    uid = st.st_uid if uid is None else uid
    old_mode = stat.S_IMODE(st.st_mode)
    new_mode = (old_mode & max_mode) | min_mode
    if dry is not None:
        names = dry.group_name
        if (old_mode, st.st_uid, st.st_gid) == (new_mode, uid, gid):
            return None
        dry.changes.append(Change(
            path, f"{_user_name(st.st_uid)}:{names(st.st_gid)} {old_mode:04o}",
            f"{_user_name(uid)}:{names(gid)} {new_mode:04o}"))
        return f"{label}: {dry.changes[-1].before} -> {dry.changes[-1].after}"
    changes = []
    try:
        # Take bits away first, then change the owner, then add bits: at no
        # moment does anyone get more access than before or after.
        if old_mode & max_mode != old_mode:
            os.fchmod(fd, old_mode & max_mode)
        if st.st_uid != uid or st.st_gid != gid:
            os.fchown(fd, uid if st.st_uid != uid else -1, gid if st.st_gid != gid else -1)
        if stat.S_IMODE(os.fstat(fd).st_mode) != new_mode:
            os.fchmod(fd, new_mode)
    except PermissionError:
        raise errors.PluginError(
            f"The owner or mode of {path} cannot be changed by this user: run certbot as root."
        ) from None
    if new_mode != old_mode:
        changes.append(f"mode {old_mode:04o} -> {new_mode:04o}")
    if st.st_uid != uid:
        changes.append(f"owner {_user_name(st.st_uid)} -> {_user_name(uid)}")
    if st.st_gid != gid:
        changes.append(f"group {_group_name(st.st_gid)} -> {_group_name(gid)}")
    return f"{label}: {', '.join(changes)}" if changes else None


def secure_file(path: str, uid: Optional[int], gid: int, max_mode: int, *,
                min_mode: int = 0) -> Optional[str]:
    """Make the regular file ``path`` uid:gid with mode ``(mode & max_mode) | min_mode``
    (``uid`` None: its owner is kept).

    A symlink at ``path`` is refused (O_NOFOLLOW) and nothing behind it is
    touched; directories above ``path`` are resolved normally. Returns the
    change line ("PATH: mode 0644 -> 0640, group root -> ssl-cert") or None.
    """
    fd = _open_nofollow(None, path, path, want_dir=False)
    try:
        return _apply(fd, path, path, uid, gid, min_mode, max_mode)
    finally:
        os.close(fd)


# --- lineages ------------------------------------------------------------------------


@dataclass
class _Opened:
    label: str  # relative to the config dir, for change lines
    path: str
    fd: int
    is_dir: bool


def _live_key_target(lineage: certs.Lineage, archive_dir: str) -> str:
    """Basename of the archive key the live key link resolves to, refusing anything else."""
    target = os.path.realpath(lineage.key_path)
    if os.path.dirname(target) != archive_dir:
        raise errors.PluginError(
            f"Refusing to change permissions for {lineage.key_path}: it resolves to {target}, "
            f"outside the lineage's archive directory {archive_dir}; restore the link "
            "(certbot update_symlinks) or the lineage."
        )
    if not os.path.isfile(target):
        raise errors.PluginError(
            f"The private key {lineage.key_path} points to {target}, which is not a file: "
            "restore the lineage (certbot update_symlinks)."
        )
    return os.path.basename(target)


def secure_lineage(lineage: certs.Lineage, group: str,
                   deployed: Optional[Collection[str]] = None,
                   dry: Optional[DryRun] = None) -> list[str]:
    """Give the key group read access to the lineage's private keys and nobody else.

    For a lineage in certbot's tree: every archive/NAME/privkey*.pem becomes
    root:GROUP with mode 0640 at most (group-readable, no other bit);
    live/NAME and archive/NAME become root:GROUP 0750; every other lineage
    directory under live/ and archive/ is closed to the key group (see the
    module docstring; ``deployed`` names the lineages that keep access, by
    default those in the plugin's state); then live/ and archive/ become
    root:GROUP 0710 (other bits kept). For a key given by path (not in live/),
    only that file is changed. All of the lineage's entries are opened and
    checked before the first change, and access is taken away before it is
    given. Returns one line per changed entry, empty when everything was
    already right. ``group`` must exist (see ensure_group), unless ``dry`` treats it as
    created. With ``dry``, every check is made and the changes are recorded, not made.
    """
    if dry is not None and dry.new_group == group:
        gid = PLANNED_GID
    else:
        gid = _require_gid(group)
    if not lineage.in_live:
        # A key given by path belongs to whoever made it (another ACME client, an
        # operator's service): its owner keeps it, only group and mode change.
        fd = _open_nofollow(None, lineage.key_path, lineage.key_path, want_dir=False)
        try:
            line = _apply(fd, lineage.key_path, lineage.key_path, None, gid, KEY_MIN_MODE,
                          KEY_MAX_MODE, dry)
        finally:
            os.close(fd)
        return [line] if line else []

    name = _check_lineage_name(lineage.name)
    config_dir = os.path.realpath(lineage.config_dir)
    archive_dir = os.path.join(config_dir, "archive", name)
    keep = set(_deployed_names(lineage.config_dir) if deployed is None else deployed) | {name}
    tops: list[_Opened] = []
    subs: list[_Opened] = []
    keys: list[_Opened] = []
    try:
        # The config dir itself may be a symlink (an admin's choice, e.g. a
        # moved /etc/letsencrypt); below it, certbot's own layout is enforced.
        config_fd = os.open(config_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            for top in ("live", "archive"):
                top_path = os.path.join(config_dir, top)
                top_fd = _open_nofollow(config_fd, top, top_path, want_dir=True)
                tops.append(_Opened(top, top_path, top_fd, True))
                sub_path = os.path.join(top_path, name)
                sub_fd = _open_nofollow(top_fd, name, sub_path, want_dir=True)
                subs.append(_Opened(f"{top}/{name}", sub_path, sub_fd, True))
        finally:
            os.close(config_fd)
        archive_fd = subs[-1].fd
        names = sorted(n for n in os.listdir(archive_fd) if fnmatch.fnmatchcase(n, KEY_PATTERN))
        current = _live_key_target(lineage, archive_dir)
        if current not in names:  # an oddly named key the live link uses: secure it too
            names.append(current)
        for key in names:
            key_path = os.path.join(archive_dir, key)
            fd = _open_nofollow(archive_fd, key, key_path, want_dir=False)
            keys.append(_Opened(f"archive/{name}/{key}", key_path, fd, False))

        changes = []
        for entry in keys:
            changes.append(_apply(entry.fd, entry.path, entry.label, 0, gid,
                                  KEY_MIN_MODE, KEY_MAX_MODE, dry))
        for entry in subs:
            changes.append(_apply(entry.fd, entry.path, entry.label, 0, gid, DIR_MODE, DIR_MODE,
                                  dry))
        for entry in tops:
            others_pass = bool(os.fstat(entry.fd).st_mode & TOP_MAX_MODE & 0o001)
            changes += _confine_children(entry, keep, gid, others_pass, dry)
        for entry in tops:
            changes.append(_apply(entry.fd, entry.path, entry.label, 0, gid,
                                  TOP_MIN_MODE, TOP_MAX_MODE, dry))
        result = [line for line in changes if line]
        for line in result if dry is None else []:
            logger.info("Permissions for %s: %s", name, line)
        return result
    finally:
        for entry in (*tops, *subs, *keys):
            os.close(entry.fd)


def confine_lineages(config_dir: str, group: str, deployed: Collection[str],
                     dry: Optional[DryRun] = None) -> list[str]:
    """Close every lineage not in ``deployed`` to the key group (e.g. after an undeploy).

    With no deployed lineage left, live/ and archive/ also go back to what
    certbot makes (root:root, no group bits; "other" bits kept). Returns one
    line per changed entry (with ``dry``: recorded there, not made).
    """
    gid = _gid_of(group)
    if gid is None:
        return []
    for name in deployed:
        _check_lineage_name(name)
    config_dir = os.path.realpath(config_dir)
    changes: list[Optional[str]] = []
    try:
        config_fd = os.open(config_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    try:
        for top in ("live", "archive"):
            top_path = os.path.join(config_dir, top)
            try:
                top_fd = _open_nofollow(config_fd, top, top_path, want_dir=True)
            except errors.PluginError:
                continue
            entry = _Opened(top, top_path, top_fd, True)
            try:
                st = os.fstat(top_fd)
                others_pass = bool(st.st_mode & 0o001)
                changes += _confine_children(entry, set(deployed), gid, others_pass, dry)
                if not deployed and st.st_gid == gid:
                    changes.append(_apply(top_fd, top_path, top, 0, 0, 0o700, 0o705, dry))
            finally:
                os.close(top_fd)
    finally:
        os.close(config_fd)
    return [line for line in changes if line]


def _confine_children(top: _Opened, keep: Collection[str], gid: int,
                      others_pass: bool, dry: Optional[DryRun] = None) -> list[Optional[str]]:
    """Take the key group's way into every lineage directory under ``top`` not in ``keep``.

    A key group member reaches such a directory through its group bits when it
    belongs to the key group, else through its "other" bits; those go (the
    "other" bits only when ``top`` gives others nothing, so nobody loses access
    they had before). Symbolic links and files are left alone.
    """
    changes: list[Optional[str]] = []
    for child in sorted(os.listdir(top.fd)):
        if child in keep:
            continue
        path = os.path.join(top.path, child)
        try:
            info = os.stat(child, dir_fd=top.fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        max_mode = 0o7777
        if info.st_gid == gid:
            max_mode &= ~0o070
        if not others_pass:
            max_mode &= ~0o007
        if stat.S_IMODE(info.st_mode) & max_mode == stat.S_IMODE(info.st_mode):
            continue
        try:
            fd = _open_nofollow(top.fd, child, path, want_dir=True)
        except errors.PluginError as exc:
            logger.warning("Not confining %s: %s", path, exc)
            continue
        try:
            line = _apply(fd, path, f"{top.label}/{child}", os.fstat(fd).st_uid,
                          os.fstat(fd).st_gid, 0, max_mode, dry)
        finally:
            os.close(fd)
        if line:
            changes.append(f"{line} (not deployed by postfix-tls: closed to the key group)")
    return changes


def _check_lineage_name(name: str) -> str:
    if name in ("", ".", "..") or "/" in name:
        raise errors.PluginError(
            f"The lineage name {name!r} is not a directory name: give the certificate name "
            "shown by certbot certificates."
        )
    return name


def _deployed_names(config_dir: str) -> list[str]:
    """The lineages the plugin's state says it deployed (their names in live/)."""
    from certbot_postfix_tls._internal.state import State

    names = {name for state in State.load_all(config_dir) for name in state.lineages}
    return sorted(name for name in names if name not in ("", ".", "..") and "/" not in name)


# --- doctor ------------------------------------------------------------------------


def _ancestors(directory: str) -> list[str]:
    result = []
    while True:
        result.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            return list(reversed(result))
        directory = parent


def key_problems(key_path: str, group: str) -> list[str]:
    """Sentences describing why ``key_path`` is not "root:GROUP, 0640 at most, reachable".

    Reports a key that other users can access, one the key group cannot read,
    one with more than 0640 or not owned by root, and every directory on the
    way (through the live link and to its target) the key group cannot
    traverse. Empty when the key is fine.
    """
    gid = _gid_of(group)
    if gid is None:
        return [
            f"The key group {group} does not exist, so no group can read {key_path}: "
            f"create it with {_group_add_hint(group)} and deploy the certificate again."
        ]
    real = os.path.realpath(key_path)
    try:
        st = os.stat(real)
    except OSError as exc:
        return [f"The private key {key_path} cannot be examined ({exc.strerror}): "
                "check the path and run as root."]
    shown = key_path if real == os.path.abspath(key_path) else f"{key_path} (-> {real})"
    mode = stat.S_IMODE(st.st_mode)
    problems = []
    if mode & 0o007:
        problems.append(
            f"The private key {shown} has mode {mode:04o}, so every user on the machine can "
            f"{'read' if mode & 0o004 else 'access'} it: run chmod o= {real} "
            "(certbot copies this bit to every renewed key)."
        )
    if mode & ~KEY_MAX_MODE & 0o7770:
        problems.append(
            f"The private key {shown} has mode {mode:04o}, more than 0640 allows: "
            f"run chmod {mode & KEY_MAX_MODE:04o} {real}."
        )
    if st.st_uid != 0:
        problems.append(
            f"The private key {shown} is owned by {_user_name(st.st_uid)}, not root: "
            f"run chown root {real}."
        )
    if st.st_gid != gid:
        problems.append(
            f"The private key {shown} belongs to group {_group_name(st.st_gid)}, not the key "
            f"group {group}: run chgrp {group} {real}."
        )
    elif not mode & 0o040:
        problems.append(
            f"The private key {shown} (mode {mode:04o}) is not readable by the key group "
            f"{group}: run chmod g+r {real}."
        )
    # Directories a group member walks through: where the link is, where the key is.
    link_dir = os.path.realpath(os.path.dirname(os.path.abspath(key_path)))
    dirs = sorted(set(_ancestors(link_dir)) | set(_ancestors(os.path.dirname(real))))
    for directory in dirs:
        try:
            dst = os.stat(directory)
        except OSError as exc:
            problems.append(f"The directory {directory} cannot be examined ({exc.strerror}): "
                            "run as root.")
            continue
        dmode = stat.S_IMODE(dst.st_mode)
        if dmode & 0o001 or (dst.st_gid == gid and dmode & 0o010):
            continue
        problems.append(
            f"The directory {directory} (mode {dmode:04o}, group {_group_name(dst.st_gid)}) "
            f"does not let the key group {group} reach {key_path}: "
            f"run chgrp {group} {directory} && chmod g+x {directory}."
        )
    return problems


# --- every key under the config dir -------------------------------------------------


@dataclass
class KeyExposure:
    """A private key under certbot's archive/ that more than root can read."""

    path: str
    readers: list[str]  # "every user", "the key group ssl-cert"
    world: bool
    fix: str

    def sentence(self) -> str:
        return (f"{self.path} can be read by {' and '.join(self.readers)}: run {self.fix}"
                + (" (certbot copies this mode to every renewed key)." if self.world else "."))


def _can_pass(info: os.stat_result, gid: Optional[int], bit: int) -> bool:
    """Whether a non-owner, non-root user (in group ``gid``, or in no relevant group
    when None) gets ``bit`` (as an "other" bit: 1 = x, 4 = r) on this inode."""
    mode = stat.S_IMODE(info.st_mode)
    if gid is not None and info.st_gid == gid:
        return bool(mode & (bit << 3))
    return bool(mode & bit)


def exposed_keys(config_dir: str, deployed: Mapping[str, str]) -> list[KeyExposure]:
    """Private keys (archive/*/privkey*.pem) readable by others or by a key group.

    ``deployed`` maps each lineage the plugin deployed to its key group: those
    keys may be read by that group (and nothing else). Access is what the
    kernel would grant, path included: a 0644 key behind a 0700 directory is
    read by nobody. The key groups checked are those of ``deployed`` (the
    default one when nothing is deployed).
    """
    real = os.path.realpath(config_dir)
    archive = os.path.join(real, "archive")
    try:
        lineages = sorted(os.listdir(archive))
    except OSError:
        return []
    groups = {g: _gid_of(g) for g in (set(deployed.values()) or {DEFAULT_KEY_GROUP})}
    ancestors: list[os.stat_result] = []
    try:
        ancestors = [os.stat(d) for d in _ancestors(archive)]
    except OSError:
        return []
    found = []
    for lineage in lineages:
        lineage_dir = os.path.join(archive, lineage)
        try:
            dir_info = os.lstat(lineage_dir)
            if not stat.S_ISDIR(dir_info.st_mode):
                continue
            names = sorted(n for n in os.listdir(lineage_dir)
                           if fnmatch.fnmatchcase(n, KEY_PATTERN))
        except OSError:
            continue
        path_infos = [*ancestors, dir_info]
        for key in names:
            key_path = os.path.join(lineage_dir, key)
            try:
                info = os.lstat(key_path)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            readers = []
            world = all(_can_pass(d, None, 1) for d in path_infos) and _can_pass(info, None, 4)
            if world:
                readers.append("every user")
            for group, gid in sorted(groups.items()):
                if world or gid is None or deployed.get(lineage) == group:
                    continue
                if all(_can_pass(d, gid, 1) for d in path_infos) and _can_pass(info, gid, 4):
                    readers.append(f"the key group {group}")
            if not readers:
                continue
            fix = f"chmod 0600 {key_path}"
            if lineage in deployed:
                fix = f"chmod o= {key_path}"
            found.append(KeyExposure(key_path, readers, world, fix))
    return found
