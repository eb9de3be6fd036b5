"""The renewal hook files: what they contain, whether they are intact, installing them.

certbot runs every executable in <config-dir>/renewal-hooks/{deploy,post}/
through a shell, with no owner check. The plugin installs one file in each,
root-owned and not writable by others, calling this package by absolute path
with --config-dir baked in; no certificate or domain name is ever part of a
command line. What the hooks do is ``renewal``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import re
import shlex
import stat
import sys
from dataclasses import dataclass
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import certs, process
from certbot_postfix_tls._internal.state import State

logger = logging.getLogger(__name__)

HOOK_NAME = "certbot-postfix-tls"
KINDS = ("deploy", "post")

# The first line after the shebang marks a file as ours (also for the Debian
# package's postrm, which has no Python left to ask).
MARKER = "# Installed by certbot-postfix-tls"
HOOK_FORMAT = 2
_RUNNER_PREFIX = "# runner: "
_PACKAGE = "certbot_postfix_tls"
_SNAP_REVISION = re.compile(r"(/snap/[^/]+/)([^/]+)(/.*)\Z")
_DEBIAN_PYTHON = "/usr/bin/python3"


def hook_path(config_dir: str, kind: str) -> str:
    return os.path.join(config_dir, "renewal-hooks", kind, HOOK_NAME)


@dataclass(frozen=True)
class Runner:
    """How a hook starts this package: an interpreter by absolute path, run isolated
    (``-I``), and the directories to put first on its sys.path (only when the
    interpreter cannot import the package on its own, e.g. a plugin snap)."""

    python: str
    sys_path: tuple[str, ...] = ()

    def _prefix(self) -> str:
        if not self.sys_path:
            return ""
        return f"import sys; sys.path[:0] = {json.dumps(list(self.sys_path))}; "

    def check_code(self) -> str:
        """Python that exits 0 when the package can be imported, 1 otherwise."""
        return (f"{self._prefix()}import importlib.util as u, sys; "
                f"sys.exit(u.find_spec(\"{_PACKAGE}\") is None)")

    def argv(self) -> list[str]:
        if not self.sys_path:
            return [self.python, "-I", "-m", _PACKAGE]
        return [self.python, "-I", "-c",
                f"{self._prefix()}import runpy; "
                f"runpy.run_module(\"{_PACKAGE}\", run_name=\"__main__\", alter_sys=True)"]

    def origin(self) -> Optional[str]:
        """Where this runner imports the package from (None: it cannot)."""
        code = (f"{self._prefix()}import importlib.util as u; "
                f"s = u.find_spec(\"{_PACKAGE}\"); print(s.origin if s else \"\")")
        try:
            proc = process.run([self.python, "-I", "-c", code], check=False, timeout=60,
                               what=f"{self.python} could not be asked for {_PACKAGE}")
        except errors.Error:
            return None
        return proc.stdout.strip() or None if proc.returncode == 0 else None


def _stable_path(path: str) -> str:
    """A snap revision path as /snap/NAME/current/...: the revision goes away on refresh."""
    match = _SNAP_REVISION.match(path)
    if match and match.group(2) != "current":
        candidate = f"{match.group(1)}current{match.group(3)}"
        try:
            if os.path.samefile(candidate, path):
                return candidate
        except OSError:
            pass
    return path


def _package_origin() -> str:
    import certbot_postfix_tls

    return os.path.realpath(certbot_postfix_tls.__file__)


def _interpreters() -> list[str]:
    """This interpreter by the most durable name first: /usr/bin/python3 for the system
    Python (survives python3.11 -> 3.12), /snap/NAME/current/... for a snap."""
    exe = sys.executable or _DEBIAN_PYTHON
    candidates = []
    if sys.prefix == sys.base_prefix and re.fullmatch(r"/usr/bin/python3(\.\d+)?", exe):
        candidates.append(_DEBIAN_PYTHON)
    candidates += [_stable_path(exe), exe]
    return list(dict.fromkeys(candidates))


@functools.cache
def current_runner() -> Runner:
    """The runner the hooks get when this process writes them.

    The first interpreter name that imports *this* copy of the package under
    ``-I`` wins; when none does (a plugin found through certbot's plugin path),
    the package's directory is put first on sys.path.
    """
    ours = _package_origin()
    for python in _interpreters():
        origin = Runner(python).origin()
        if origin and os.path.realpath(origin) == ours:
            return Runner(python)
    package_dir = _stable_path(os.path.dirname(os.path.dirname(ours)))
    for python in _interpreters():
        runner = Runner(python, (package_dir,))
        origin = runner.origin()
        if origin and os.path.realpath(origin) == ours:
            return runner
    return Runner(_interpreters()[0], (package_dir,))


def hook_script(config_dir: str, kind: str, python: Optional[str] = None,
                runner: Optional[Runner] = None) -> str:
    """The hook's text: an interpreter by absolute path running this package isolated.

    ``-I`` keeps certbot's working directory (which ``-m`` would put first on
    sys.path), PYTHONPATH and user site-packages out: nothing planted there runs
    as root. The script first checks that its interpreter can still import the
    package; when it cannot (the Debian package removed but not purged, a
    virtualenv or snap revision replaced), it says so and exits 0, as a cron job
    of a removed package must.
    """
    if runner is None:
        runner = Runner(python) if python else current_runner()
    argv = [*runner.argv(), "--config-dir", os.path.abspath(config_dir), "hook", kind]
    record = json.dumps({"python": runner.python, "sys_path": list(runner.sys_path)})
    return (
        "#!/bin/sh\n"
        f"{MARKER}; removed when its last lineage is undeployed.\n"
        f"# certbot-postfix-tls hook format {HOOK_FORMAT}: Python runs isolated (-I), so\n"
        "# nothing in certbot's working directory or PYTHONPATH is imported.\n"
        f"{_RUNNER_PREFIX}{record}\n"
        f"py={shlex.quote(runner.python)}\n"
        f"if ! \"$py\" -I -c {shlex.quote(runner.check_code())} 2>/dev/null; then\n"
        f"    echo \"certbot-postfix-tls: {kind} hook skipped: $py cannot import the"
        f" {_PACKAGE} package (the plugin was removed, or the virtualenv or snap it was"
        " installed in was replaced). If the plugin is still in use, reinstall it and run"
        " certbot install --installer postfix-tls --cert-name NAME (for a lineage it"
        " deployed), which rewrites this hook; if not, delete $0.\" >&2\n"
        "    exit 0\n"
        "fi\n"
        f"exec {shlex.join(argv)}\n"
    )


def _is_ours(text: str) -> bool:
    return text.startswith(f"#!/bin/sh\n{MARKER}")


def _recorded_runner(text: str) -> Optional[Runner]:
    """The runner a hook of ours starts: from its record, or an older hook's exec line."""
    for line in text.splitlines():
        if line.startswith(_RUNNER_PREFIX):
            try:
                record = json.loads(line[len(_RUNNER_PREFIX):])
                return Runner(str(record["python"]),
                              tuple(str(p) for p in record.get("sys_path", ())))
            except (ValueError, KeyError, TypeError):
                return None
    for line in text.splitlines():  # format 1: exec PYTHON -m certbot_postfix_tls ...
        if line.startswith("exec "):
            try:
                words = shlex.split(line[5:])
            except ValueError:
                return None
            if words and os.path.isabs(words[0]):
                return Runner(words[0])
    return None


def _fix(config_dir: str) -> str:
    try:
        state = State.load(config_dir)
        name = state.default or next(iter(sorted(state.lineages)), None)
    except errors.Error:
        name = None
    return (f"certbot install --installer postfix-tls --cert-name {name or 'NAME'} "
            "rewrites both hooks")


def hook_problems(config_dir: str, kind: str) -> list[str]:
    """Why the ``kind`` hook would not run this plugin safely at the next renewal."""
    path = hook_path(config_dir, kind)
    fix = _fix(config_dir)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return [f"The {kind} hook {path} is missing, so renewed certificates are not "
                f"deployed or reloaded: {fix}."]
    except OSError as exc:
        return [f"The {kind} hook {path} cannot be examined ({exc.strerror}): run as root."]
    if not stat.S_ISREG(info.st_mode):
        return [f"The {kind} hook {path} is not a regular file (a symbolic link?): remove it; "
                f"{fix}."]
    problems = []
    if info.st_uid != 0 or info.st_mode & 0o022:
        problems.append(
            f"The {kind} hook {path} (owner {_owner(info.st_uid)}, mode "
            f"{stat.S_IMODE(info.st_mode):04o}) can be changed by someone other than root, and "
            f"certbot runs it as root: run chown root:root {path} && chmod 0755 {path}."
        )
    if not info.st_mode & stat.S_IXUSR:
        problems.append(f"The {kind} hook {path} is not executable, so certbot skips it: "
                        f"{fix}.")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        return [*problems, f"The {kind} hook {path} cannot be read ({exc}): {fix}."]
    if not _is_ours(text):
        return [*problems, f"The {kind} hook {path} was not written by certbot-postfix-tls: "
                           f"move it away; {fix}."]
    runner = _recorded_runner(text)
    if runner is None or text != hook_script(config_dir, kind, runner=runner):
        old = runner is not None and not any(
            line.startswith(_RUNNER_PREFIX) for line in text.splitlines())
        why = ("was written by an older version of the plugin and runs Python without -I, "
               "so a certbot_postfix_tls module planted in certbot's working directory "
               "would run as root" if old else
               "differs from what the plugin writes (altered, or written for another "
               "--config-dir)")
        problems.append(f"The {kind} hook {path} {why}: {fix}.")
    if runner is not None:
        if not os.access(runner.python, os.X_OK):
            problems.append(
                f"The {kind} hook {path} runs {runner.python}, which no longer exists (a "
                "virtualenv or snap revision replaced by an upgrade?), so renewals are not "
                f"deployed: {fix}.")
        elif runner.origin() is None:
            problems.append(
                f"The {kind} hook {path} runs {runner.python}, which cannot import "
                f"{_PACKAGE} any more (the plugin was removed or installed elsewhere), so "
                f"renewals are not deployed: {fix}.")
    return problems


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def problems(config_dir: str) -> list[str]:
    """One sentence per problem with either hook, each naming the fix; empty when both
    will run this plugin, isolated, at the next renewal."""
    return [p for kind in KINDS for p in hook_problems(config_dir, kind)]


def intact(config_dir: str, kind: str) -> bool:
    """The hook is ours, current, root-owned, not writable by others, and its interpreter
    still imports the package. A stale hook is not intact (install rewrites it)."""
    return not hook_problems(config_dir, kind)


def all_intact(config_dir: str) -> bool:
    return all(intact(config_dir, kind) for kind in KINDS)


def _write_hook(path: str, text: str) -> bool:
    """Write one hook atomically, root-owned 0755; False when it was already so.

    The temporary file is not executable until it is complete: certbot runs every
    executable file in the hooks directory, dot-files included.
    """
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    return certs.write_atomic(path, text.encode(), 0o755, owner=(0, 0))


def write_hooks(config_dir: str, runner: Optional[Runner] = None) -> list[str]:
    """Install (or repair) both hooks; returns the paths written.

    Every install rewrites them with this process's interpreter, so a hook left
    pointing at a replaced virtualenv or snap revision is repaired by
    ``certbot install``.
    """
    written = []
    for kind in KINDS:
        path = hook_path(config_dir, kind)
        if _write_hook(path, hook_script(config_dir, kind, runner=runner)):
            written.append(path)
    return written


def refresh_hooks(config_dir: str) -> list[str]:
    """Repair existing hooks of ours that are stale (what a package upgrade runs).

    A hook whose recorded interpreter still imports the package keeps it (only
    the script is brought up to date); otherwise it gets this process's runner.
    Hooks that are missing or not ours are left alone. Returns the paths written.
    """
    written = []
    for kind in KINDS:
        path = hook_path(config_dir, kind)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            continue
        if not _is_ours(text) or intact(config_dir, kind):
            continue
        runner = _recorded_runner(text)
        if runner is None or runner.origin() is None:
            runner = current_runner()
        if _write_hook(path, hook_script(config_dir, kind, runner=runner)):
            written.append(path)
    return written


def is_ours(path: str) -> bool:
    """Whether the file at ``path`` is a hook the plugin wrote (what remove_hooks removes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(MARKER) + 16)
    except OSError:
        return False
    return _is_ours(head.decode(errors="replace"))


def remove_hooks(config_dir: str) -> None:
    """Remove both hooks; a file of that name not written by the plugin is left alone."""
    for kind in KINDS:
        path = hook_path(config_dir, kind)
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(MARKER) + 16)
        except FileNotFoundError:
            continue
        except OSError:
            head = b""
        if not _is_ours(head.decode(errors="replace")):
            logger.warning("Leaving %s in place: it was not written by certbot-postfix-tls.",
                           path)
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
