"""``certbot-postfix-tls verify`` and ``doctor`` against a real deployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab

from certbot_postfix_tls._internal import hooks

NAME = lab.LAB_HOSTNAME
JSON_KEYS = {"service", "address", "port", "tls", "sni", "status", "served_sha256",
             "expected_sha256", "chain_complete", "name_matches", "days_left", "message",
             "algorithm"}


def cli(certbot: lab.Certbot, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir),
         *args],
        capture_output=True, text=True, timeout=180, check=False,
    )


def test_usage_errors_are_unknown(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "certbot_postfix_tls", "verify", "--bogus"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3
    nothing = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(tmp_path), "verify"],
        capture_output=True, text=True, timeout=60, check=False)
    # Nothing deployed: verify checks what the configured servers serve (issue #13).
    assert "not deployed by postfix-tls" in nothing.stdout


def test_verify_and_doctor_on_a_real_deployment(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "the CLI does not depend on certbot's version")
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME, *certbot.acme_args())

    proc = cli(certbot, "verify", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "OK"
    ports = {(e["port"], e["sni"]) for e in report["endpoints"]}
    assert {(25, NAME), (587, NAME), (143, NAME), (993, NAME), (110, NAME), (995, NAME),
            (25, None)} <= ports
    assert all(set(e) == JSON_KEYS for e in report["endpoints"])
    assert all(e["chain_complete"] and e["name_matches"] for e in report["endpoints"])

    human = cli(certbot, "verify")
    assert human.returncode == 0 and "OK: postfix 127.0.0.1:587" in human.stdout

    doctor = cli(certbot, "doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["submission-auth"]["status"] == "OK"  # Dovecot SASL, after TLS only
    assert checks["submission-tls"]["status"] == "OK"
    assert checks["port25-plaintext"]["status"] == "OK"
    assert checks["renewal-hooks"]["status"] == "OK"

    # The classic slip: a world-readable key. And hooks someone deleted.
    key = os.path.realpath(certbot.config_dir / "live" / NAME / "privkey.pem")
    os.chmod(key, 0o644)
    os.unlink(hooks.hook_path(str(certbot.config_dir), "post"))
    doctor = cli(certbot, "doctor", "--json")
    assert doctor.returncode == 2
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks[f"key-permissions {NAME}"]["status"] == "CRITICAL"
    assert "chmod o=" in checks[f"key-permissions {NAME}"]["message"]
    assert checks["renewal-hooks"]["status"] == "WARNING"

    postfix_lab.stop()
    stopped = cli(certbot, "verify")
    assert stopped.returncode == 2 and "not running" in stopped.stdout


def test_stopped_dovecot_is_critical(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "the CLI does not depend on certbot's version")
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME, *certbot.acme_args())
    dovecot_lab.stop()
    proc = cli(certbot, "verify", "--json")
    assert proc.returncode == 2
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["dovecot-running"]["status"] == "CRITICAL"
