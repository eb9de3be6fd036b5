"""One lineage whose files are gone never blocks the others' deploys and renewals."""

from __future__ import annotations

import os

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab
from lab.flows import install, issue, leaf, renew, served

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

FIRST, SECOND = "mail.example.org", "mail.b.example"


def test_missing_lineage_left_out_then_brought_back(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "the render decides; certbot only runs install and the hooks")
    for name in (FIRST, SECOND):
        issue(certbot, name)
        install(certbot, name)
    assert served("imap", 993, "implicit", SECOND) == leaf(certbot, SECOND)
    # A failed migration or half-restored backup: the second lineage's archive/ is gone,
    # its live/ links dangle (Dovecot's local_name block reads them directly).
    archive = certbot.config_dir / "archive" / SECOND
    aside = certbot.config_dir / "archive-aside"
    os.rename(archive, aside)

    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", FIRST)
    output = proc.stdout + proc.stderr
    assert f"lineage {SECOND} cannot be served" in output
    assert "left out of Postfix and Dovecot" in output
    plugin_file = "/etc/dovecot/conf.d/99-certbot-postfix-tls.conf"
    with open(plugin_file, encoding="utf-8") as handle:
        assert SECOND not in handle.read()
    proc = renew(certbot, "--cert-name", FIRST)
    assert f"lineage {SECOND} cannot be served" in proc.stdout + proc.stderr
    for protocol, port, tls in (("smtp", 25, "starttls"), ("smtp", 587, "starttls"),
                                ("imap", 993, "implicit")):
        assert served(protocol, port, tls, FIRST) == leaf(certbot, FIRST), port

    # Its files are back: the next deploy serves it again, by SNI on every port.
    os.rename(aside, archive)
    proc = renew(certbot, "--cert-name", FIRST)
    assert "cannot be served" not in proc.stdout + proc.stderr
    with open(plugin_file, encoding="utf-8") as handle:
        assert f"local_name {SECOND}" in handle.read()
    for protocol, port, tls in (("smtp", 25, "starttls"), ("imap", 993, "implicit")):
        assert served(protocol, port, tls, SECOND) == leaf(certbot, SECOND), port
