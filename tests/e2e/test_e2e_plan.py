"""`certbot-postfix-tls plan` and `undeploy --plan` (issue #26), against the real
certbot, Postfix and Dovecot of the lab: the plan changes nothing (bytes, modes,
owners, mtimes; no lock file; no reload), shows no key material, and lists exactly what
the real install or undeploy with the same options then changes, its diffs patching the
old files into the new ones byte for byte; run again afterwards it says "no changes".
"""

from __future__ import annotations

import json

import lab
import pytest
from conftest import once
from lab import flows, plans
from lab.dovecot import DovecotLab

HOST, OTHER = flows.HOST, flows.OTHER


def _reloads(postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab) -> tuple[object, ...]:
    return (postfix_lab.master_pid(), dovecot_lab.master_pid(),
            flows.count(postfix_lab.log(), flows.POSTFIX_RELOAD),
            flows.count(dovecot_lab.log(), flows.DOVECOT_RELOAD))


def test_plan_is_the_install_then_no_changes(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, snakeoil_pair: None,
) -> None:
    once(request, "plan runs the installer's own code, whatever certbot's version")
    flows.issue(certbot, HOST, OTHER)

    def probe() -> tuple[object, ...]:
        return _reloads(postfix_lab, dovecot_lab)

    # Debian's stock configuration: main.cf, master.cf (587 added), Dovecot's file.
    shown = plans.assert_plan_is_what_happens(
        certbot, ["plan", "--cert-name", HOST], lambda: flows.install(certbot, HOST), probe)
    paths = {f["path"] for f in shown["files"]}
    assert {"/etc/postfix/main.cf", "/etc/postfix/master.cf",
            "/etc/dovecot/conf.d/99-certbot-postfix-tls.conf"} <= paths
    assert shown["reload"] == ["postfix", "dovecot"]
    assert {(25, "postfix"), (587, "postfix"), (143, "dovecot"), (993, "dovecot")} <= {
        (v["port"], v["service"]) for v in shown["verify"]}
    assert any(k["path"].endswith(f"lineages/{HOST}/key-fullchain.pem") and
               k["mode"] == "0600" for k in shown["key_files"])
    assert any(p["path"].endswith(f"/archive/{HOST}") for p in shown["permissions"])
    flows.assert_serving(certbot, [HOST], HOST)

    again = flows.run_cli(certbot, "plan", "--cert-name", HOST)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().endswith(f"install {HOST}: no changes")
    assert json.loads(flows.run_cli(certbot, "plan", "--cert-name", HOST, "--json").stdout)[
        "files"] == []

    # A second lineage: served by SNI (the SNI table, its index, the Dovecot local_name).
    shown = plans.assert_plan_is_what_happens(
        certbot, ["plan", "--lineage", str(certbot.config_dir / "live" / OTHER)],
        lambda: flows.install(certbot, OTHER), probe)
    assert any(k["path"].endswith("sni-map") for k in shown["key_files"])
    flows.assert_serving(certbot, [HOST, OTHER], HOST)

    # Taking it out again: undeploy --plan is what undeploy does.
    shown = plans.assert_plan_is_what_happens(
        certbot, ["undeploy", "--cert-name", OTHER, "--plan",
                  "--work-dir", str(certbot.base / "work")],
        lambda: flows.run_cli(certbot, "undeploy", "--cert-name", OTHER,
                              "--work-dir", str(certbot.base / "work")), probe)
    assert any(k["action"] == "remove" for k in shown["key_files"])
    flows.assert_serving(certbot, [HOST], HOST)

    # The last lineage: Postfix and Dovecot get back what they had, the hooks go.
    shown = plans.assert_plan_is_what_happens(
        certbot, ["undeploy", "--cert-name", HOST, "--plan",
                  "--work-dir", str(certbot.base / "work")],
        lambda: flows.run_cli(certbot, "undeploy", "--cert-name", HOST,
                              "--work-dir", str(certbot.base / "work")), probe)
    removed = {f["path"] for f in shown["files"] if f["action"] == "remove"}
    assert str(certbot.config_dir / "postfix-tls" / "state.json") in removed
    assert "/etc/dovecot/conf.d/99-certbot-postfix-tls.conf" in removed
    assert any(f["path"] == "/etc/postfix/main.cf" for f in shown["files"])


def test_plan_refuses_with_the_install_sentence(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "refusals are the installer's own")
    flows.issue(certbot, HOST)
    roots = (*plans.WATCHED, str(certbot.config_dir))
    before = plans.stat_tree(*roots)
    daemons = _reloads(postfix_lab, dovecot_lab)
    bad = ["--postfix-tls-services", "postfix,imapd"]
    code, shown, text = plans.plan(certbot, "plan", "--cert-name", HOST, *bad)
    assert code == 2, text
    install = certbot.run("install", "-i", "postfix-tls", "--cert-name", HOST, *bad,
                          check=False)
    assert install.returncode != 0
    sentence = shown["refused"]
    assert sentence and sentence in install.stdout + install.stderr
    assert sentence in text and shown["files"] == [] and shown["reload"] == []
    assert plans.stat_tree(*roots) == before
    assert _reloads(postfix_lab, dovecot_lab) == daemons

    missing = flows.run_cli(certbot, "plan", "--cert-name", "nothing.example")
    assert missing.returncode == 2 and "No certificate found" in missing.stdout
    undeploy = flows.run_cli(certbot, "undeploy", "--cert-name", HOST, "--plan")
    assert undeploy.returncode == 2 and "was not deployed" in undeploy.stdout
    for usage in (["plan"], ["plan", "--cert-name", HOST, "--postfix-tls-smtps", "maybe"]):
        assert flows.run_cli(certbot, *usage).returncode == 3
