"""--postfix-tls-sasl auto on the configuration mail how-tos leave behind: 587 enables
SASL without a type, so Postfix uses Cyrus, which has no smtpd.conf (AUTH advertised,
nobody can log in). The install replaces that backend with Dovecot's auth socket, says
so, and ``certbot rollback`` puts it back."""

from __future__ import annotations

import json
import subprocess
import sys

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab
from lab.flows import issue

from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

NAME = "mail.example.org"
HOWTO = ("submission inet n - y - - smtpd -o smtpd_tls_security_level=encrypt "
         "-o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes")


def doctor_critical(certbot: lab.Certbot) -> list[dict[str, str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir),
         "doctor", "--json"], capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(proc.stdout)
    return [c for c in report["checks"] + report["endpoints"] if c["status"] == "CRITICAL"]


def submission_overrides(postfix_lab: lab.PostfixLab) -> dict[str, str]:
    services = postfix_config.parse_master(postfix_lab.postconf("-M"))
    [service] = [s for s in services if s.port == 587]
    return service.overrides


def test_auto_replaces_a_cyrus_backend_that_cannot_work(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "the plan decides; certbot only runs install and rollback")
    postfix_lab.postconf("-M", f"submission/inet={HOWTO}")
    lab.process.run(["postfix", "reload"], what="postfix reload")
    issue(certbot, NAME)
    critical = doctor_critical(certbot)
    assert "sasl-backend" in [c.get("name") for c in critical], critical

    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", NAME)
    output = proc.stdout + proc.stderr
    assert ("master.cf service submission/inet (port 587): replaced its SASL backend "
            "(smtpd_sasl_type=cyrus), which cannot work (Cyrus SASL has no smtpd.conf in ") in (
        output), output
    overrides = submission_overrides(postfix_lab)
    assert (overrides["smtpd_sasl_type"], overrides["smtpd_sasl_path"]) == (
        "dovecot", "private/auth")
    assert doctor_critical(certbot) == []

    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "1")
    overrides = submission_overrides(postfix_lab)
    assert "smtpd_sasl_type" not in overrides and "smtpd_sasl_path" not in overrides
    assert overrides["smtpd_sasl_auth_enable"] == "yes"
