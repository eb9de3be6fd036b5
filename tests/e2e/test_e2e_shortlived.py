"""Six-day certificates end to end: Pebble issues 160-hour certificates (Let's Encrypt's
shortlived profile); a fresh deployment is OK in verify, the metrics and doctor; renewals
through certonly, run and renew reload each service once, with certbot 5.x (which runs the
deploy and post hook directories on certonly and run too) and Debian 12's certbot 2.1."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab
from lab.flows import (
    DOVECOT_RELOAD,
    HOST,
    OTHER,
    PORTS,
    POSTFIX_RELOAD,
    count,
    leaf,
    run_cli,
    served,
    wait_for_count,
)

from certbot_postfix_tls._internal import certs
from certbot_postfix_tls._internal.state import State

LIFETIME = datetime.timedelta(seconds=lab.SHORTLIVED_SECONDS)


def deploy(certbot: lab.Certbot, name: str = HOST) -> None:
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name,
                *certbot.acme_args())


def reloads(postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab) -> tuple[int, int]:
    return count(postfix_lab.log(), POSTFIX_RELOAD), count(dovecot_lab.log(), DOVECOT_RELOAD)


def assert_reloaded_once(postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab,
                         before: tuple[int, int]) -> None:
    """Exactly one more reload of each: wait for the first, then make sure of no second."""
    postfix_before, dovecot_before = before
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, postfix_before + 1) >= (
        postfix_before + 1), "Postfix was not reloaded"
    assert wait_for_count(dovecot_lab.log, DOVECOT_RELOAD, dovecot_before + 1) >= (
        dovecot_before + 1), "Dovecot was not reloaded"
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, postfix_before + 2,
                          timeout=1) == postfix_before + 1
    assert wait_for_count(dovecot_lab.log, DOVECOT_RELOAD, dovecot_before + 2,
                          timeout=1) == dovecot_before + 1


def assert_served_everywhere(certbot: lab.Certbot, name: str = HOST) -> None:
    for protocol, port, tls in PORTS:
        assert served(protocol, port, tls, name) == leaf(certbot, name), port


def test_fresh_shortlived_deployment_is_ok(
    request: pytest.FixtureRequest, shortlived_certbot: lab.Certbot,
    postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab, tmp_path: Path,
) -> None:
    once(request, "the verdict does not depend on certbot's version")
    certbot = shortlived_certbot
    deploy(certbot)
    live = certbot.config_dir / "live" / HOST
    cert = certs.load_pem_chain((live / "cert.pem").read_bytes())[0]
    # Pebble, like Let's Encrypt, counts the last second in: 160 hours less one second.
    assert abs(certs.not_after(cert) - certs.not_before(cert) - LIFETIME).total_seconds() <= 1

    check = run_cli(certbot, "verify", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["status"] == "OK"
    assert {e["status"] for e in report["endpoints"]} == {"OK"}

    metrics_file = tmp_path / "certbot-postfix-tls.prom"
    check = run_cli(certbot, "verify", "--prometheus", str(metrics_file))
    assert check.returncode == 0, check.stdout + check.stderr
    text = metrics_file.read_text()
    assert "certbot_postfix_tls_verify_status 0\n" in text
    starts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("certbot_postfix_tls_cert_not_before_seconds{")]
    assert starts and set(starts) == {certs.not_before(cert).timestamp()}
    assert f'certbot_postfix_tls_lineage_not_before_seconds{{lineage="{HOST}"}}' in text

    check = run_cli(certbot, "doctor", "--json")
    findings = json.loads(check.stdout)["checks"]
    expiry = [c for c in findings if c["name"] in ("expiry", "ports")
              and c["status"] != "OK"]
    assert not expiry, expiry
    assert [c["status"] for c in findings if c["name"] == "expiry"] == ["OK"], findings


@pytest.mark.tier2
def test_certonly_renews_a_deployed_lineage_with_one_reload(
    shortlived_certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab,
) -> None:
    certbot = shortlived_certbot
    deploy(certbot)
    old = leaf(certbot, HOST)
    before = reloads(postfix_lab, dovecot_lab)
    certbot.run("certonly", "--force-renewal", "--cert-name", HOST, "-a", "standalone",
                *certbot.acme_args())
    assert leaf(certbot, HOST) != old
    version = certbot.version()
    if int(version.split(".")[0]) >= 5:
        # certbot >= 5.3 runs renewal-hooks/deploy and post on certonly: one reload each.
        assert_reloaded_once(postfix_lab, dovecot_lab, before)
        assert_served_everywhere(certbot)
        assert State.load(str(certbot.config_dir)).pending == []
        assert run_cli(certbot, "verify").returncode == 0
        return
    # certbot 2.1 runs the deploy hook directory on a renewal but no post hook outside
    # `renew`: the renewal is deployed, not reloaded, and verify says so.
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, before[0] + 1, timeout=1) == (
        before[0])
    check = run_cli(certbot, "verify", "--json")
    assert check.returncode == 2, check.stdout + check.stderr
    report = json.loads(check.stdout)
    [pending] = [c["message"] for c in report["checks"] if c["name"] == "pending-reload"]
    assert pending.startswith(f"{HOST} was renewed and deployed but ") and (
        "certbot before 5.3 runs it after `certbot renew` only" in pending), pending
    # What the message says to do finishes the job with one reload each.
    assert run_cli(certbot, "hook", "post").returncode == 0
    assert_reloaded_once(postfix_lab, dovecot_lab, before)
    assert_served_everywhere(certbot)


@pytest.mark.tier2
def test_run_on_a_deployed_lineage_reloads_once(
    shortlived_certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab,
) -> None:
    certbot = shortlived_certbot
    deploy(certbot)
    old = leaf(certbot, HOST)
    before = reloads(postfix_lab, dovecot_lab)
    certbot.run("run", "--force-renewal", "-a", "standalone", "-i", "postfix-tls", "-d", HOST,
                *certbot.acme_args())
    assert leaf(certbot, HOST) != old
    assert_reloaded_once(postfix_lab, dovecot_lab, before)
    assert_served_everywhere(certbot)
    assert State.load(str(certbot.config_dir)).pending == []
    assert run_cli(certbot, "verify").returncode == 0


@pytest.mark.tier2
def test_renew_reloads_once(
    shortlived_certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab,
) -> None:
    certbot = shortlived_certbot
    deploy(certbot)
    before = reloads(postfix_lab, dovecot_lab)
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    assert_reloaded_once(postfix_lab, dovecot_lab, before)
    assert_served_everywhere(certbot)


@pytest.mark.tier2
def test_certonly_for_a_lineage_never_deployed_does_nothing(
    shortlived_certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab,
) -> None:
    certbot = shortlived_certbot
    deploy(certbot)
    state_file = certbot.config_dir / "postfix-tls" / "state.json"
    state = state_file.read_bytes()
    before = reloads(postfix_lab, dovecot_lab)
    proc = certbot.run("certonly", "-a", "standalone", "-d", OTHER, *certbot.acme_args(),
                       check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = certbot.run("certonly", "--force-renewal", "--cert-name", OTHER, "-a",
                       "standalone", *certbot.acme_args(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wait_for_count(postfix_lab.log, POSTFIX_RELOAD, before[0] + 1, timeout=1) == (
        before[0])
    assert wait_for_count(dovecot_lab.log, DOVECOT_RELOAD, before[1] + 1, timeout=1) == (
        before[1])
    assert state_file.read_bytes() == state
    assert run_cli(certbot, "verify").returncode == 0
