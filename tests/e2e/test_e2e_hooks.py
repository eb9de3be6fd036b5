"""Renewal hooks in the lab: the Debian maintainer scripts and a real certbot renew.

A renewal run as root from a directory someone else controls never runs a planted
module; a hook whose interpreter went away is reported by doctor and repaired by
``certbot install``; the package's postrm/postinst touch only the plugin's hooks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lab
import pytest
from conftest import REPO, need, need_lab, once
from lab.flows import leaf, served_leaf
from lab.hooks import format1_hook, install_text, make_venv, plant

from certbot_postfix_tls._internal import hooks
from certbot_postfix_tls._internal.state import State


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A throwaway virtualenv that imports this checkout (lab.hooks.make_venv)."""
    return make_venv(tmp_path / "venv")


POSTINST = REPO / "debian" / "python3-certbot-postfix-tls.postinst"
POSTRM = REPO / "debian" / "python3-certbot-postfix-tls.postrm"


def test_debian_postrm_purge_removes_only_our_hooks() -> None:
    need_lab()  # /etc is the lab's overlay: the machine's own hooks are never touched
    config = "/etc/letsencrypt"
    hooks.write_hooks(config)
    foreign = "/etc/letsencrypt/renewal-hooks/post/certbot-postfix-tls-not-ours"
    install_text(foreign, "#!/bin/sh\n# Installed by certbot-postfix-tls\n")
    try:
        subprocess.run(["sh", str(POSTRM), "remove"], check=True)
        assert hooks.problems(config) == []  # remove: the hooks stay (and degrade gracefully)
        os.unlink(hooks.hook_path(config, "post"))
        install_text(hooks.hook_path(config, "post"), "#!/bin/sh\necho mine\n")
        subprocess.run(["sh", str(POSTRM), "purge"], check=True)
        assert not os.path.exists(hooks.hook_path(config, "deploy"))
        assert Path(hooks.hook_path(config, "post")).read_text() == "#!/bin/sh\necho mine\n"
        assert os.path.exists(foreign)
    finally:
        shutil.rmtree("/etc/letsencrypt/renewal-hooks", ignore_errors=True)


def test_debian_postinst_refreshes_stale_hooks(venv: Path) -> None:
    need_lab()
    config = "/etc/letsencrypt"
    # The packaged script runs /usr/bin/python3, which imports the package from
    # dist-packages; here the checkout is importable through the venv instead.
    python = str(venv / "bin" / "python")
    script = POSTINST.read_text().replace("/usr/bin/python3 -I", f"{python} -I")
    try:
        for kind in hooks.KINDS:
            install_text(hooks.hook_path(config, kind), format1_hook(python, config, kind))
        proc = subprocess.run(["sh", "-c", script, "postinst", "configure", "0.0.1"],
                              capture_output=True, text=True, check=True)
        assert proc.stdout.count("certbot-postfix-tls: updated the renewal hook") == 2
        assert hooks.problems(config) == []
        again = subprocess.run(["sh", "-c", script, "postinst", "configure", "0.0.1"],
                               capture_output=True, text=True, check=True)
        assert again.stdout == again.stderr == ""
    finally:
        shutil.rmtree("/etc/letsencrypt/renewal-hooks", ignore_errors=True)


# --- real certbot ------------------------------------------------------------------------------


def test_real_renew_from_a_planted_cwd(
    tmp_path: Path, certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    """`certbot renew` run as root from a directory someone else controls."""
    name = lab.LAB_HOSTNAME
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name, *certbot.acme_args())
    assert hooks.problems(str(certbot.config_dir)) == []
    cwd = tmp_path / "home-of-someone"
    marker = plant(cwd)
    old_leaf = leaf(certbot, name)
    # certbot itself starts as /usr/bin/certbot does (a script: its own directory, not
    # the cwd, on sys.path; -I here because the lab starts it with -c).
    argv = certbot.argv("renew", "--force-renewal", "--no-random-sleep-on-renew",
                        *certbot.acme_args())
    proc = subprocess.run(  # noqa: S603
        [argv[0], "-I", *argv[1:]],
        cwd=cwd, env={**certbot.env(), "PYTHONPATH": str(cwd)}, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists()
    new_leaf = leaf(certbot, name)
    assert new_leaf != old_leaf
    # The hooks did run (the plugin's own, from its install): deployed and reloaded.
    assert served_leaf(25, name) == new_leaf
    assert State.load(str(certbot.config_dir)).pending == []


def test_real_stale_hook_is_reported_and_repaired(
    request: pytest.FixtureRequest, tmp_path: Path, certbot: lab.Certbot,
    postfix_lab: lab.PostfixLab
) -> None:
    once(request, "hook text and doctor do not depend on certbot's version")
    need("postfix")
    name = lab.LAB_HOSTNAME
    config_dir = str(certbot.config_dir)
    certbot.run("certonly", "-a", "standalone", "-d", name, *certbot.acme_args())
    certbot.run("install", "-i", "postfix-tls", "--cert-name", name)
    # An upgrade replaced the virtualenv the hooks were written from.
    gone = str(tmp_path / "old-venv" / "bin" / "python")
    hooks.write_hooks(config_dir, runner=hooks.Runner(gone))

    proc = certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                       *certbot.acme_args())
    output = proc.stdout + proc.stderr
    assert "deploy hook skipped" in output and "post hook skipped" in output

    doctor = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", config_dir, "doctor",
         "--json"], capture_output=True, text=True, timeout=120, check=False,
    )
    report = json.loads(doctor.stdout)
    hook_checks = [c for c in report["checks"] if c["name"] == "renewal-hooks"]
    assert len(hook_checks) == 2
    for check in hook_checks:
        assert check["status"] == "WARNING"
        assert f"runs {gone}, which no longer exists" in check["message"]
        assert (f"certbot install --installer postfix-tls --cert-name {name} rewrites both "
                "hooks") in check["message"]

    certbot.run("install", "--installer", "postfix-tls", "--cert-name", name)
    assert hooks.problems(config_dir) == []
    assert served_leaf(25, name) == leaf(certbot, name)
