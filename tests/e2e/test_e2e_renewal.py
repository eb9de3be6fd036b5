"""Renewal end to end: hooks re-deploy, one reload per service per run, never a restart."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab
from lab.flows import (
    DOVECOT_RELOAD,
    POSTFIX_RELOAD,
    count,
    issue,
    leaf,
    renew,
    run_cli,
    served_leaf,
    wait_for_count,
)

from certbot_postfix_tls._internal import certs, hooks
from certbot_postfix_tls._internal.state import State

NAMES = ("mail.example.org", "mail.a.example", "mail.b.example")
def test_three_lineages_one_reload_per_service(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab
) -> None:
    for name in NAMES:
        issue(certbot, name)
        # `certbot install` writes no installer into the renewal config: only the
        # hooks can re-deploy these lineages.
        certbot.run("install", "-i", "postfix-tls", "--cert-name", name)
    for kind in hooks.KINDS:
        info = os.stat(hooks.hook_path(str(certbot.config_dir), kind))
        assert info.st_uid == 0 and info.st_mode & 0o022 == 0 and info.st_mode & 0o100
    default = State.load(str(certbot.config_dir)).default
    assert default is not None
    old_leaf = leaf(certbot, default)
    postfix_pid, dovecot_pid = postfix_lab.master_pid(), dovecot_lab.master_pid()
    postfix_reloads = count(postfix_lab.log(), POSTFIX_RELOAD)
    dovecot_reloads = count(dovecot_lab.log(), DOVECOT_RELOAD)

    renew(certbot)

    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, postfix_reloads + 1) == (
        postfix_reloads + 1
    )
    assert wait_for_count(dovecot_lab.log, DOVECOT_RELOAD, dovecot_reloads + 1) == (
        dovecot_reloads + 1
    )
    new_leaf = leaf(certbot, default)
    assert new_leaf != old_leaf
    for port, protocol, tls in ((25, "smtp", "starttls"), (587, "smtp", "starttls"),
                                (143, "imap", "starttls"), (993, "imap", "implicit")):
        assert served_leaf(port, default, protocol, tls) == new_leaf, port
    assert postfix_lab.master_pid() == postfix_pid
    assert dovecot_lab.master_pid() == dovecot_pid
    assert State.load(str(certbot.config_dir)).pending == []


def test_installer_lineage_without_directory_hooks_reloads_at_once(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    name = NAMES[0]
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name, *certbot.acme_args())
    reloads = count(postfix_lab.log(), POSTFIX_RELOAD)
    renew(certbot, "--no-directory-hooks")
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, reloads + 1) == reloads + 1
    assert served_leaf(25, name) == leaf(certbot, name)
    assert State.load(str(certbot.config_dir)).pending == []


def snapshot(*directories: str) -> dict[str, bytes]:
    found = {}
    for directory in directories:
        for root, _, names in os.walk(directory):
            for name in names:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    found[path] = Path(path).read_bytes()
    return found


def test_dry_run_changes_nothing(certbot: lab.Certbot, postfix_lab: lab.PostfixLab) -> None:
    name = NAMES[0]
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name, *certbot.acme_args())
    plugin_dir = str(certbot.config_dir / "postfix-tls")
    before = snapshot(plugin_dir, "/etc/postfix", "/etc/dovecot",
                      str(certbot.config_dir / "live"), str(certbot.config_dir / "archive"))
    reloads = count(postfix_lab.log(), POSTFIX_RELOAD)
    certbot.run("renew", "--dry-run", "--no-random-sleep-on-renew", *certbot.acme_args())
    after = snapshot(plugin_dir, "/etc/postfix", "/etc/dovecot",
                     str(certbot.config_dir / "live"), str(certbot.config_dir / "archive"))
    assert after == before
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, reloads + 1, timeout=1) == reloads


def test_failed_reload_stays_pending_and_verify_is_critical(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab
) -> None:
    name = NAMES[0]
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name, *certbot.acme_args())
    assert run_cli(certbot, "verify").returncode == 0
    # The operator breaks main.cf after the deploy: postfix check now fails.
    postfix_lab.postconf("-e", "command_directory = /nonexistent")
    reloads = count(postfix_lab.log(), POSTFIX_RELOAD)
    proc = renew(certbot)  # certbot only logs a failing hook: it still exits 0
    assert "/nonexistent" in proc.stdout + proc.stderr
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, reloads + 1, timeout=1) == reloads
    assert "postfix" in State.load(str(certbot.config_dir)).pending
    check = run_cli(certbot, "verify", "--json")
    assert check.returncode == 2, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["status"] == "CRITICAL"
    assert any(c["name"] == "pending-reload" for c in report["checks"])
    # Once fixed, running the post hook again reloads and clears the mark.
    postfix_lab.postconf("-X", "command_directory")
    assert run_cli(certbot, "hook", "post").returncode == 0
    assert State.load(str(certbot.config_dir)).pending == []
    assert served_leaf(25, name) == leaf(certbot, name)


def test_sigterm_during_deploy_hook_leaves_consistent_state(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    once(request, "the hook is the plugin's own process")
    name = NAMES[0]
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name, *certbot.acme_args())
    renew(certbot, "--no-directory-hooks")  # archive now holds versions 1 and 2
    live = certbot.config_dir / "live" / name
    chain_file = State.load(str(certbot.config_dir)).lineages[name].chain_file
    rng = random.Random(1234)
    for attempt in range(12):
        version = 1 + attempt % 2
        for kind in ("cert", "chain", "fullchain", "privkey"):
            link = live / f"{kind}.pem"
            link.unlink()
            link.symlink_to(f"../../archive/{name}/{kind}{version}.pem")
        hook = subprocess.Popen(
            [sys.executable, "-m", "certbot_postfix_tls", "--config-dir",
             str(certbot.config_dir), "hook", "deploy"],
            env={**os.environ, "RENEWED_LINEAGE": str(live)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.0, 0.6))
        hook.send_signal(signal.SIGTERM)
        hook.wait()
        state = State.load(str(certbot.config_dir))  # parses: never half-written
        assert name in state.lineages
        combined = Path(chain_file).read_bytes()
        # Whatever the moment, the file Postfix reads holds a matching key and chain.
        marker = b"-----END PRIVATE KEY-----\n"
        key_end = combined.index(marker) + len(marker)
        key = certs.serialization.load_pem_private_key(combined[:key_end], password=None)
        leaf = certs.load_pem_chain(combined[key_end:])[0]
        assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    leftovers = [p for p in os.listdir(os.path.dirname(chain_file)) if p.endswith(".tmp~")]
    # At most the one temporary file the last killed write left behind: the next
    # write removes the earlier ones (each holds a copy of the key).
    assert len(leftovers) <= 1


@pytest.mark.parametrize("kind", hooks.KINDS)
def test_hooks_are_noops_without_work(tmp_path: Path, kind: str) -> None:
    """certbot >= 5.3 runs directory hooks on certonly/run too: nothing to do there."""
    result = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(tmp_path), "hook", kind],
        env={**os.environ, "RENEWED_LINEAGE": str(tmp_path / "live" / "other")},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "postfix-tls").exists()
