"""The main.cf/master.cf decisions, on real configuration fixtures read by the real postconf.

Each test copies a fixture pair (Debian 12's stock files, or a heavily
customised pair) into a temp directory and points ``postconf -c`` at it, so
parsing is Postfix's own; nothing is mocked. Applying writes only the copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from certbot import errors
from conftest import FIXTURES

from certbot_postfix_tls._internal import process
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix import policy as postfix_policy
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.state import State

FILES = postfix_policy.CertificateFiles(
    chain_file="/etc/letsencrypt/postfix-tls/lineages/mail/key-fullchain.pem",
    fullchain="/etc/letsencrypt/live/mail/fullchain.pem",
    key="/etc/letsencrypt/live/mail/privkey.pem",
)


@pytest.fixture(autouse=True)
def _postconf() -> None:
    if shutil.which("postconf", path="/usr/sbin:/sbin:/usr/bin") is None:
        pytest.skip("postconf is not installed (apt-get install postfix)")


def instance(tmp_path: Path, fixture: str) -> Postfix:
    """A copy of a fixture pair that reads nothing of the host's /etc.

    Debian's stock main.cf says ``myorigin = /etc/mailname``, a file postconf
    reads (and dies without: "fatal: /etc/mailname: cannot open file"). A fresh
    Debian whose hostname is not fully qualified, and every build chroot, has
    none; the copy points at a mailname file of its own instead.
    """
    target = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, target)
    main_cf = target / "main.cf"
    text = main_cf.read_text()
    if "\nmyorigin = /etc/mailname\n" in text:
        mailname = tmp_path / "mailname"
        mailname.write_text("mail.example.org\n")
        main_cf.write_text(text.replace("\nmyorigin = /etc/mailname\n",
                                        f"\nmyorigin = {mailname}\n"))
    assert not [line for line in main_cf.read_text().splitlines()
                if "/etc/mailname" in line and not line.startswith("#")]
    return Postfix(str(target))


def params(plan: postfix_policy.TLSPlan, service: str) -> dict[str, str]:
    return {p.param: p.value for p in plan.service_params if p.service == service}


def test_debian_stock_plan(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12")
    plan = postfix_policy.plan_tls(pf.read(), FILES, postfix_policy.Options())
    assert plan.main == {
        "smtpd_tls_chain_files": FILES.chain_file,
        "smtpd_tls_cert_file": "",
        "smtpd_tls_key_file": "",
        "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
        "smtpd_tls_loglevel": "1",
    }
    assert any("smtpd_tls_cert_file, smtpd_tls_key_file" in note for note in plan.notes)
    # Debian's submission entry is commented out: a new one is added, not uncommented.
    assert [s.key for s in plan.new_services] == ["submission/inet"]
    assert plan.new_services[0].chroot == "y"
    assert params(plan, "submission/inet") == {
        "syslog_name": "postfix/submission",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_auth_only": "yes",
        "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
    }
    # No SASL backend and no Dovecot wired: SASL stays off, with a warning.
    assert "smtpd_sasl_auth_enable" not in params(plan, "submission/inet")
    assert any("no SASL backend" in w for w in plan.warnings)


def test_apply_then_plan_again_is_empty(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12")
    options = postfix_policy.Options(smtps=True)
    pf.apply(postfix_policy.plan_tls(pf.read(), FILES, options))
    config = pf.read()
    assert config.main["smtpd_tls_chain_files"] == FILES.chain_file
    assert config.main["smtpd_tls_security_level"] == "may"  # port 25 keeps plaintext
    assert config.main["smtp_tls_security_level"] == "may"
    assert len(config.services_on_port(587)) == 1
    smtps = config.services_on_port(465)
    assert len(smtps) == 1 and smtps[0].overrides["smtpd_tls_wrappermode"] == "yes"
    again = postfix_policy.plan_tls(config, FILES, options)
    assert again.empty, again
    # Deploying twice never duplicates a service.
    pf.apply(again)
    assert len(pf.read().services_on_port(587)) == 1


def test_custom_config_is_never_weakened(tmp_path: Path) -> None:
    pf = instance(tmp_path, "custom")
    config = pf.read()
    plan = postfix_policy.plan_tls(config, FILES, postfix_policy.Options(smtps=True))
    # smtpd_enforce_tls=yes (obsolete) stays in force: no level is set over it.
    assert "smtpd_tls_security_level" not in plan.main
    assert "smtp_tls_security_level" not in plan.main  # dane is stronger than may
    assert "smtpd_tls_loglevel" not in plan.main  # 2 is more than 1
    assert "smtpd_tls_session_cache_database" not in plan.main  # lmdb one kept
    assert plan.main["smtpd_tls_eccert_file"] == "" and plan.main["smtpd_tls_eckey_file"] == ""
    # The address-bound submission entry is amended, not duplicated.
    assert plan.new_services == []
    sub = params(plan, "127.0.0.1:submission/inet")
    assert sub["smtpd_tls_security_level"] == "encrypt"  # was may
    assert "syslog_name" not in sub  # operator's postfix/msa stays
    # The existing global Dovecot SASL backend is kept, so no warning.
    assert "smtpd_sasl_auth_enable" not in sub
    assert not plan.warnings
    # Old-style smtps entry matched by port 465; wrappermode already on.
    smtps = params(plan, "smtps/inet")
    assert "smtpd_tls_wrappermode" not in smtps
    assert smtps["smtpd_tls_auth_only"] == "yes"


def test_custom_endpoints_from_master_cf(tmp_path: Path) -> None:
    config = instance(tmp_path, "custom").read()
    found = {(e.address, e.port, e.tls) for e in postfix_listeners.endpoints(config, "127.0.0.1")}
    assert found == {
        ("127.0.0.1", 25, "starttls"),  # postscreen
        ("127.0.0.1", 587, "starttls"),  # bound to 127.0.0.1
        ("127.0.0.1", 465, "implicit"),
        ("127.0.0.1", 2525, "starttls"),  # non-standard port, found by number
    }  # the 10025 reinjection listener has TLS off


def test_endpoints_use_verify_address_for_wildcard_listeners(tmp_path: Path) -> None:
    config = instance(tmp_path, "custom").read()
    addresses = {e.port: e.address for e in postfix_listeners.endpoints(config, "192.0.2.7")}
    assert addresses[25] == "192.0.2.7" and addresses[587] == "127.0.0.1"


def test_old_postfix_gets_cert_and_key_files(tmp_path: Path) -> None:
    config = instance(tmp_path, "debian12").read()
    config.main["mail_version"] = "3.3.2"
    plan = postfix_policy.plan_tls(config, FILES, postfix_policy.Options())
    assert plan.main["smtpd_tls_cert_file"] == FILES.fullchain  # never cert.pem
    assert plan.main["smtpd_tls_key_file"] == FILES.key
    assert "smtpd_tls_chain_files" not in plan.main


def test_dovecot_sasl_is_wired_only_when_asked(tmp_path: Path) -> None:
    config = instance(tmp_path, "debian12").read()
    plan = postfix_policy.plan_tls(
        config, FILES, postfix_policy.Options(sasl="auto", dovecot_sasl_path="private/auth")
    )
    sub = params(plan, "submission/inet")
    assert sub["smtpd_sasl_auth_enable"] == "yes"
    assert sub["smtpd_sasl_type"] == "dovecot" and sub["smtpd_sasl_path"] == "private/auth"
    assert not plan.warnings
    options = postfix_policy.Options(sasl="none", dovecot_sasl_path="x")
    none = postfix_policy.plan_tls(config, FILES, options)
    assert "smtpd_sasl_auth_enable" not in params(none, "submission/inet")


def test_no_submission_when_disabled(tmp_path: Path) -> None:
    config = instance(tmp_path, "debian12").read()
    plan = postfix_policy.plan_tls(config, FILES, postfix_policy.Options(submission=False))
    assert plan.new_services == [] and plan.service_params == []


def test_master_arg_groups_and_ports() -> None:
    service = postfix_config.MasterService.parse(
        "[::1]:2587 inet n - y - - smtpd -o { smtpd_tls_mandatory_protocols = >=TLSv1.2 }"
        " -o smtpd_tls_wrappermode=yes"
    )
    assert service.host == "::1" and service.port == 2587
    assert service.overrides == {
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_wrappermode": "yes",
    }
    assert postfix_config.resolve_port("submissions") == 465
    assert process.version_tuple("3.10.13") == (3, 10, 13)


def test_all_names_are_literal_domains(tmp_path: Path) -> None:
    pf = instance(tmp_path, "custom")
    assert pf.all_names(pf.read()) == {"mx1.example.net", "example.net", "example.com"}


def test_broken_main_cf_is_one_clear_error(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12")
    with open(pf.main_cf, "a") as handle:
        handle.write("this line has no equals sign\n")
    with pytest.raises(errors.MisconfigurationError, match=r"main.cf, line \d+"):
        pf.read()


def test_postfix_not_installed_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The process boundary only: no postconf/postfix on this machine.
    monkeypatch.setattr(process, "find_tool", lambda name: None)
    with pytest.raises(errors.NoInstallationError, match="install the postfix package"):
        Postfix()


def test_policy_table_is_read_and_applied_entry_by_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One table entry is all a new main.cf setting needs: postconf is asked for it and
    # the plan writes it unless the value in force is acceptable.
    extra = postfix_policy.MainSetting(
        "smtpd_tls_received_header", "yes",
        lambda config, name: postfix_config.is_yes(config.main.get(name, "")))
    monkeypatch.setattr(postfix_policy, "MAIN_POLICY", (*postfix_policy.MAIN_POLICY, extra))
    pf = instance(tmp_path, "debian12")
    config = pf.read()
    assert "smtpd_tls_received_header" in config.main  # asked from postconf
    plan = postfix_policy.plan_tls(config, FILES, postfix_policy.Options())
    assert plan.main["smtpd_tls_received_header"] == "yes"
    pf.apply(plan)
    again = postfix_policy.plan_tls(pf.read(), FILES, postfix_policy.Options())
    assert "smtpd_tls_received_header" not in again.main


def test_policy_levels_accept_stronger_and_replace_obsolete_settings() -> None:
    def config(**main: str) -> postfix_config.PostfixConfig:
        return postfix_config.PostfixConfig(main={"mail_version": "3.7.11", **main},
                                            explicit=dict(main), services=[],
                                            map_types={"btree"})

    def planned(cfg: postfix_config.PostfixConfig) -> dict[str, str]:
        return postfix_policy.plan_tls(cfg, FILES, postfix_policy.Options(submission=False)).main

    strong = planned(config(smtpd_tls_security_level="encrypt", smtp_tls_security_level="dane",
                            smtpd_tls_session_cache_database="lmdb:/x",
                            smtp_tls_session_cache_database="lmdb:/y", smtpd_tls_loglevel="2"))
    assert set(strong) == {"smtpd_tls_chain_files"}  # nothing of the policy is weakened
    weak = planned(config(smtpd_use_tls="yes", smtpd_tls_loglevel="x"))
    assert weak["smtpd_tls_security_level"] == "may"  # the obsolete smtpd_use_tls, restated
    assert weak["smtp_tls_security_level"] == "may"
    assert weak["smtpd_tls_session_cache_database"] == "btree:${data_directory}/smtpd_scache"
    assert weak["smtp_tls_session_cache_database"] == "btree:${data_directory}/smtp_scache"
    assert weak["smtpd_tls_loglevel"] == "1"


def _deploy_then_restore_plan(tmp_path: Path, cert: Path, key: Path) -> tuple[
        Postfix, postfix_policy.TLSPlan, State]:
    """Deploy to a Debian 12 copy whose pre-plugin pair is ``cert``/``key``; return it
    and the plan that removes the last lineage."""
    pf = instance(tmp_path, "debian12")
    main_cf = Path(pf.config_dir) / "main.cf"
    main_cf.write_text(main_cf.read_text()
                       .replace("/etc/ssl/certs/ssl-cert-snakeoil.pem", str(cert))
                       .replace("/etc/ssl/private/ssl-cert-snakeoil.key", str(key)))
    state = State()
    config = pf.read()
    plan = postfix_policy.plan_tls(config, FILES, postfix_policy.Options())
    postfix_policy.record_applied(state, config, plan)
    pf.apply(plan)
    return pf, postfix_policy.restore_plan(pf.read(), state), state


def test_last_undeploy_refuses_a_restored_pair_that_is_gone(tmp_path: Path) -> None:
    """The restored smtpd_tls_cert_file must exist: 587 with encrypt would otherwise
    answer "454 TLS not available"."""
    cert, key = tmp_path / "snakeoil.pem", tmp_path / "snakeoil.key"
    key.write_text("key\n")
    with pytest.raises(errors.PluginError, match=rf"{cert} does not exist.*nothing was changed"):
        _deploy_then_restore_plan(tmp_path, cert, key)
    cert.write_text("cert\n")
    shutil.rmtree(tmp_path / "debian12")
    _pf, plan, _state = _deploy_then_restore_plan(tmp_path, cert, key)
    assert plan.main["smtpd_tls_cert_file"] == str(cert)


def test_last_undeploy_keeps_an_added_service_with_operator_lines(tmp_path: Path) -> None:
    """The submission service the plugin added stays when the operator gave it -o lines
    of their own; only the plugin's own -o lines go."""
    cert, key = tmp_path / "snakeoil.pem", tmp_path / "snakeoil.key"
    cert.write_text("cert\n")
    key.write_text("key\n")
    pf, plan, state = _deploy_then_restore_plan(tmp_path, cert, key)
    assert plan.services_remove == ["submission/inet"]  # untouched since: it goes
    pf.postconf("-P", "submission/inet/smtpd_client_restrictions=permit_sasl_authenticated,"
                "reject")
    plan = postfix_policy.restore_plan(pf.read(), state)
    assert plan.services_remove == []
    assert "submission/inet/smtpd_tls_security_level" in plan.params_remove
    assert "submission/inet/smtpd_client_restrictions" not in plan.params_remove
    pf.apply(plan)
    [service] = pf.read().services_on_port(587)
    assert service.overrides == {
        "smtpd_client_restrictions": "permit_sasl_authenticated,reject"}
    assert any("kept master.cf service submission/inet" in note for note in plan.notes)
