"""certbot renewal hooks: re-deploy renewed lineages, then reload once per run.

certbot runs every executable in <config-dir>/renewal-hooks/{deploy,post}/
through a shell, with no owner check. The plugin installs one file in each,
root-owned and not writable by others, calling this package by absolute path
with --config-dir baked in; no certificate or domain name is ever part of a
command line (SPEC section 6).

- deploy hook, once per renewed lineage (RENEWED_LINEAGE): if the plugin
  deployed that lineage, rebuild its files atomically and mark the services
  pending. Certbot's directory hooks also run on certonly/run (5.3+) and post
  hooks under --dry-run, so both hooks do nothing unless the state says so.
- post hook, once per run: when something is pending, check the
  configuration, reload each pending service once, verify, and clear the
  marks only on success.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from certbot import errors

from certbot_postfix_tls._internal import certs, permissions, sni
from certbot_postfix_tls._internal.state import State

logger = logging.getLogger(__name__)

HOOK_NAME = "certbot-postfix-tls"
KINDS = ("deploy", "post")


def hook_path(config_dir: str, kind: str) -> str:
    return os.path.join(config_dir, "renewal-hooks", kind, HOOK_NAME)


def hook_script(config_dir: str, kind: str, python: Optional[str] = None) -> str:
    """The hook's text: this interpreter running this package, by absolute path."""
    argv = [python or sys.executable, "-m", "certbot_postfix_tls",
            "--config-dir", os.path.abspath(config_dir), "hook", kind]
    return (
        "#!/bin/sh\n"
        "# Installed by certbot-postfix-tls; removed when its last lineage is undeployed.\n"
        f"exec {shlex.join(argv)}\n"
    )


def intact(config_dir: str, kind: str) -> bool:
    """The hook exists with our content, owned by root and not writable by others."""
    path = hook_path(config_dir, kind)
    try:
        info = os.lstat(path)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        return False
    if not info.st_mode & stat.S_IXUSR:
        return False
    return text.startswith("#!/bin/sh\n# Installed by certbot-postfix-tls") and (
        f" hook {kind}\n" in text
    )


def all_intact(config_dir: str) -> bool:
    return all(intact(config_dir, kind) for kind in KINDS)


def write_hooks(config_dir: str) -> list[str]:
    """Install (or repair) both hooks; returns the paths written."""
    written = []
    for kind in KINDS:
        path = hook_path(config_dir, kind)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if certs.write_atomic(path, hook_script(config_dir, kind).encode(), mode=0o755):
            written.append(path)
        os.chown(path, 0, 0, follow_symlinks=False)
    return written


def remove_hooks(config_dir: str) -> None:
    for kind in KINDS:
        try:
            os.unlink(hook_path(config_dir, kind))
        except FileNotFoundError:
            pass


@dataclass
class HookResult:
    """What a hook did: its exit code and one line for certbot's log."""

    code: int
    message: str


def run_deploy_hook(config_dir: str, renewed_lineage: Optional[str]) -> HookResult:
    """Rebuild a renewed lineage's files and mark its services pending."""
    state = State.load(config_dir)
    if not renewed_lineage:
        return HookResult(0, "no RENEWED_LINEAGE: nothing to do")
    name = os.path.basename(os.path.normpath(renewed_lineage))
    deployed = state.lineages.get(name)
    if deployed is None:
        return HookResult(0, f"{name} was not deployed by postfix-tls: nothing to do")
    lineage = certs.Lineage.from_live_dir(renewed_lineage, config_dir)
    permissions.secure_lineage(lineage, deployed.key_group)
    material = certs.load_material(lineage)
    certs.write_atomic(deployed.chain_file, material.combined(), 0o600)
    deployed.names = material.names
    if state.sni_map_type and state.postfix_dir:
        # postmap -F copied the old key and chain into the index: rebuild it.
        sni.write_map(state, config_dir, state.postfix_dir, state.sni_map_type)
    for service in state.services():
        if service not in state.pending:
            state.pending.append(service)
    state.save(config_dir)
    return HookResult(0, f"rebuilt {name}; pending reload: {', '.join(state.pending)}")


def run_post_hook(
    config_dir: str, reload_and_verify: Callable[[State], list[str]]
) -> HookResult:
    """Reload each pending service once and verify; clear marks only on success.

    ``reload_and_verify`` does the service work and returns the problems found
    (empty on success); it lives in the configurator so that the installer's
    restart() and this hook share one implementation.
    """
    state = State.load(config_dir)
    if not state.pending:
        return HookResult(0, "nothing pending: no reload")
    try:
        problems = reload_and_verify(state)
    except errors.Error as exc:
        problems = [str(exc)]
    if problems:
        return HookResult(
            2, "postfix-tls: renewal deployed but not confirmed: " + "; ".join(problems)
        )
    reloaded = ", ".join(state.pending)
    state = State.load(config_dir)
    state.pending = []
    state.save(config_dir)
    return HookResult(0, f"reloaded {reloaded} and verified every endpoint")
