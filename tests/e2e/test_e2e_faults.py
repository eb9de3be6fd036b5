"""Faults around the pipeline, with the real certbot against Pebble and real Postfix
and Dovecot in the lab: an install that waits for the lock reads the state only once
it holds it; a renewal whose deploy hook cannot finish is reported and finished by
the post hook; a Dovecot include in Latin-1 costs no renewal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab
from lab.flows import (
    HOST,
    OTHER,
    debian_snakeoil,
    install,
    issue,
    leaf,
    renew,
    run_cli,
    served,
    served_leaf,
    without_snakeoil,
)

from certbot_postfix_tls._internal.daemons.postfix import throttle
from certbot_postfix_tls._internal.lock import lock_path
from certbot_postfix_tls._internal.state import State

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

# Holds the plugin's lock until told, then changes the state as `dane check` or
# `undeploy` would (here: one lineage's DANE mode), and releases it.
WRITER = """
import sys
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.state import State
config_dir, name = sys.argv[1:3]
with plugin_lock(config_dir):
    print("held", flush=True)
    sys.stdin.readline()
    state = State.load(config_dir)
    state.lineages[name].dane = "ignore"
    state.save(config_dir)
"""


def _waits_on(pid: int, path: str, bound: float = 120) -> None:
    """Until process ``pid`` or a child of it has ``path`` open (it is in the lock's
    wait loop)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                status = (proc / "status").read_text()
                ppid = int(status.split("PPid:")[1].split()[0])
                if int(proc.name) != pid and ppid != pid:
                    continue
                if any(os.readlink(fd) == path for fd in (proc / "fd").iterdir()):
                    return
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.2)
    raise AssertionError(f"process {pid} never opened {path}")


def test_install_reads_the_state_under_the_lock(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    """A writer that holds the lock while `certbot install` starts: its change survives,
    because install reads and renders only once it holds the lock (it used to read
    first and overwrite the change at save)."""
    issue(certbot, HOST, OTHER)
    install(certbot, HOST)
    config_dir = str(certbot.config_dir)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, config_dir, HOST],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "held"
        installing = subprocess.Popen(
            certbot.argv("install", "-i", "postfix-tls", "--cert-name", OTHER),
            env=certbot.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _waits_on(installing.pid, lock_path(config_dir))
        writer.communicate("go\n", timeout=60)
        output, _ = installing.communicate(timeout=300)
        assert installing.returncode == 0, output
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    state = State.load(config_dir)
    assert state.lineages[HOST].dane == "ignore"  # the writer's change was kept
    assert sorted(state.lineages) == sorted([HOST, OTHER])


def test_renewal_survives_a_busy_lock_and_a_latin1_include(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab
) -> None:
    """The deploy hook that cannot get the lock records the renewal; verify says so
    (CRITICAL); the post hook deploys it. A Latin-1 Dovecot include is read and kept
    byte for byte (it raised UnicodeDecodeError in every hook)."""
    issue(certbot, HOST)
    install(certbot, HOST)
    latin1 = Path("/etc/dovecot/conf.d/15-latin1.conf")
    latin1.write_bytes(b"# Bo\xeete aux lettres de l'\xe9quipe\n")
    try:
        old = leaf(certbot, HOST)
        config_dir = str(certbot.config_dir)
        env = {**os.environ, "RENEWED_LINEAGE": str(certbot.config_dir / "live" / HOST)}
        certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                    "--no-directory-hooks", *certbot.acme_args())
        writer = subprocess.Popen([sys.executable, "-c", WRITER, config_dir, HOST],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "held"
            hook = subprocess.run(
                [sys.executable, "-c", "from certbot_postfix_tls._internal import constants; "
                 "constants.LOCK_TIMEOUT = 1; from certbot_postfix_tls._internal.cli import "
                 "main; import sys; sys.exit(main(sys.argv[1:]))",
                 "--config-dir", config_dir, "hook", "deploy"],
                env=env, capture_output=True, text=True, timeout=120, check=False)
        finally:
            writer.communicate("go\n", timeout=60)
        assert hook.returncode == 2 and "hook post" in hook.stderr, hook.stderr
        verdict = run_cli(certbot, "verify")
        assert verdict.returncode == 2, verdict.stdout + verdict.stderr
        assert "deploy hook did not finish" in verdict.stdout + verdict.stderr
        post = run_cli(certbot, "hook", "post")
        assert post.returncode == 0, post.stdout + post.stderr
        assert leaf(certbot, HOST) != old
        for port in (25, 587):
            assert served_leaf(port, HOST) == leaf(certbot, HOST)
        assert served("imap", 993, "implicit", HOST) == leaf(certbot, HOST)
        assert run_cli(certbot, "verify").returncode == 0
        assert latin1.read_bytes() == b"# Bo\xeete aux lettres de l'\xe9quipe\n"
        renew(certbot)  # the hooks through certbot, with the include in place
        assert served("imap", 993, "implicit", HOST) == leaf(certbot, HOST)
        assert run_cli(certbot, "verify").returncode == 0
    finally:
        latin1.unlink()


def test_last_undeploy_is_checked_and_keeps_operator_lines(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab
) -> None:
    """Undeploying the last lineage refuses, naming the file, when the pre-plugin
    certificate it would give Postfix back is gone (nothing changes, the lineage stays
    served); with the file back it restores, keeps the submission service the plugin
    added because the operator gave it an -o line since, and verifies by handshake."""
    issue(certbot, HOST)
    install(certbot, HOST)
    work = ["--work-dir", str(certbot.base / "work")]
    with without_snakeoil():
        refused = run_cli(certbot, "undeploy", *work, "--cert-name", HOST)
    assert refused.returncode != 0
    assert "/etc/ssl/certs/ssl-cert-snakeoil.pem does not exist" in refused.stderr, refused.stderr
    assert "nothing was changed" in refused.stderr
    assert list(State.load(str(certbot.config_dir)).lineages) == [HOST]
    assert served_leaf(587, HOST) == leaf(certbot, HOST)

    postfix_lab.postconf("-P", "submission/inet/smtpd_client_restrictions="
                         "permit_sasl_authenticated,reject")
    with debian_snakeoil():
        done = run_cli(certbot, "undeploy", *work, "--cert-name", HOST)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "kept master.cf service submission/inet" in done.stdout
        master = postfix_lab.postconf("-M")
        assert "submission/inet" in master or "submission inet" in master
        params = postfix_lab.postconf("-P")
        assert ("submission/inet/smtpd_client_restrictions = permit_sasl_authenticated,reject"
                in params)
        assert "submission/inet/smtpd_tls_security_level" not in params
        # 587 answers STARTTLS with the restored (snakeoil) certificate.
        assert served_leaf(587, HOST) != leaf(certbot, HOST)


def test_install_waits_out_a_throttled_submission_port(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """587 authenticates through a Dovecot socket nothing declares: its smtpd dies at the
    first client and the master throttles 587 (service_throttle_time). The install
    declares the socket, recognises the throttle in Postfix's log and waits it out
    before verifying, instead of failing its 587 check and rolling back."""
    once(request, "the wait is the plugin's, inside its verification")
    issue(certbot, HOST)
    postfix_lab.postconf("-M", "submission/inet=submission inet n - y - - smtpd")
    postfix_lab.postconf("-P", "submission/inet/smtpd_sasl_auth_enable=yes",
                         "submission/inet/smtpd_sasl_type=dovecot",
                         "submission/inet/smtpd_sasl_path=private/auth")
    subprocess.run(["postfix", "reload"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 60
    while throttle.THROTTLE_LINE not in Path(postfix_lab.log_file).read_text():
        assert time.monotonic() < deadline, Path(postfix_lab.log_file).read_text()[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", 587), timeout=5) as client:
                client.sendall(b"EHLO client.example\r\n")
                while client.recv(4096):
                    pass
        except OSError:
            pass
        time.sleep(0.5)
    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", HOST)
    assert "throttles a service" in proc.stdout + proc.stderr
    assert served_leaf(587, HOST) == leaf(certbot, HOST)
