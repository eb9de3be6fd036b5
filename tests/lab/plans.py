"""What the `plan` tests share: every file's bytes, mode, owner and mtime; the plan's
diffs applied with patch(1); no private key bytes in an output."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import lab
from lab import flows

# Where an install or undeploy may write: Postfix, Dovecot, certbot's directories.
WATCHED = ("/etc/postfix", "/etc/dovecot")


def stat_tree(*roots: str) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``roots``: (sha256 or 'dir'/'link', mode, uid, gid, mtime_ns)."""
    found: dict[str, tuple[Any, ...]] = {}
    for root in roots:
        for directory, dirs, names in os.walk(root):
            for name in [*dirs, *names]:
                path = os.path.join(directory, name)
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    kind = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                else:
                    kind = "dir" if stat.S_ISDIR(info.st_mode) else "other"
                found[path] = (kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
                               info.st_mtime_ns)
    return found


def contents(*roots: str) -> dict[str, bytes]:
    """Every regular file's bytes under ``roots``, by absolute path."""
    return {path: Path(path).read_bytes() for root in roots
            for path in _files(root)}


def _files(root: str) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names
            if os.path.isfile(os.path.join(d, n)) and not os.path.islink(os.path.join(d, n))]


def plan(certbot: lab.Certbot, *args: str) -> tuple[int, dict[str, Any], str]:
    """``plan`` (or ``undeploy --plan``) run twice, JSON then text: (exit code, the JSON
    object, the text). The lab's certbot reads ``--postfix-tls-dane`` from its cli.ini
    (``lab.Certbot.cli_ini``), given with ``--config``: so does an install's plan, as
    certbot install would with the same ``-c FILE``."""
    if args and args[0] == "plan":
        args = (*args, "--config", str(certbot.cli_ini()))
    as_json = flows.run_cli(certbot, *args, "--json")
    text = flows.run_cli(certbot, *args)
    assert as_json.returncode == text.returncode, (as_json.stderr, text.stderr)
    return as_json.returncode, json.loads(as_json.stdout), text.stdout + text.stderr


def patched(before: dict[str, bytes], diffs: list[str]) -> dict[str, bytes]:
    """The files of ``before`` that the diffs touch, after ``patch -p1`` applied them."""
    with tempfile.TemporaryDirectory() as root:
        for path, data in before.items():
            target = Path(root, path.lstrip("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        for diff in diffs:
            proc = subprocess.run(["patch", "-p1", "-d", root, "--batch", "--quiet"],
                                  input=diff, capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stdout + proc.stderr + diff
        return {"/" + os.path.relpath(p, root): Path(p).read_bytes() for p in _files(root)}


def assert_no_key_material(config_dir: Path, *outputs: str) -> None:
    """No line of any private key's base64 body, and no PEM key header, in ``outputs``."""
    keys = list((config_dir / "archive").rglob("privkey*.pem"))
    assert keys
    for output in outputs:
        assert "PRIVATE KEY" not in output
        for key in keys:
            body = [line for line in key.read_text().splitlines() if "-----" not in line]
            assert not any(line in output for line in body if len(line) > 16), key
            der = base64.b64decode("".join(body))
            assert der.hex() not in output and base64.b64encode(der).decode() not in output


def assert_plan_is_what_happens(certbot: lab.Certbot, plan_args: list[str],
                                operation: Any, daemons: Any = lambda: None) -> dict[str, Any]:
    """Run the plan, check it changed nothing (``daemons()``, e.g. their master pids and
    reload log lines, gives the same before and after it), run ``operation()`` (the real install or
    undeploy), and check the plan listed exactly what changed: the text files with diffs
    that patch the old bytes into the new ones, the key files by path, the modes, the
    directories. Returns the plan's JSON."""
    config_dir = str(certbot.config_dir)
    roots = (*WATCHED, config_dir)
    lock = os.path.join(config_dir, "postfix-tls", "lock")
    stats, before = stat_tree(*roots, str(certbot.base / "work")), contents(*roots)
    running = daemons()
    code, shown, text = plan(certbot, *plan_args)
    assert daemons() == running, "the plan reloaded a daemon"
    assert code == 1, text
    assert shown["changes"] and shown["refused"] is None
    assert stat_tree(*roots, str(certbot.base / "work")) == stats, "the plan changed a file"
    assert not os.path.exists(lock) or lock in stats
    assert_no_key_material(certbot.config_dir, json.dumps(shown), text)
    for entry in shown["files"]:
        assert entry["diff"] in text + "\n"

    operation()
    after, after_stats = contents(*roots), stat_tree(*roots)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    changed -= {lock}
    text_files = {f["path"] for f in shown["files"]}
    key_files = {k["path"] for k in shown["key_files"]}
    assert changed == text_files | key_files, (changed ^ (text_files | key_files))
    for entry in shown["key_files"]:
        if entry["action"] != "remove":
            mode = after_stats[entry["path"]][1]
            assert f"{mode:04o}" == entry["mode"], entry
    assert patched({p: before[p] for p in text_files if p in before},
                   [f["diff"] for f in shown["files"]]) == {
        p: after[p] for p in text_files if p in after}
    moded = {p for p in stats.keys() & after_stats.keys()
             if stats[p][1:4] != after_stats[p][1:4]}
    assert moded - {lock} == {p["path"] for p in shown["permissions"]}
    created = {p for p, s in after_stats.items() if s[0] == "dir" and p not in stats}
    assert created == {d["path"] for d in shown["directories"]}
    return shown
