"""The main.cf/master.cf decisions, on real configuration fixtures read by the real postconf.

Each test copies a fixture pair (Debian 12's stock files, or a heavily
customised pair) into a temp directory and points ``postconf -c`` at it, so
parsing is Postfix's own; nothing is mocked. Applying writes only the copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from certbot import errors
from conftest import FIXTURES

from certbot_postfix_tls._internal import process
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix import policy as postfix_policy
from certbot_postfix_tls._internal.daemons.postfix import sasl
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.state import DeployedLineage, State

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
        # Postfix's own >=TLSv1 would override Debian's system minimum where passwords
        # travel; anonymous suites are excluded there (port 25 keeps main.cf's).
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_exclude_ciphers": "aNULL",
    }
    assert "smtpd_tls_mandatory_protocols" not in plan.main
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


def test_submission_hardening_never_loosens(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12")
    # Stricter than the policy in main.cf (TLS 1.3 only; more suites excluded): kept.
    pf.postconf("-e", "smtpd_tls_mandatory_protocols=>=TLSv1.3",
                "smtpd_tls_mandatory_exclude_ciphers=aNULL, CAMELLIA")
    options = postfix_policy.Options(smtps=True)
    plan = postfix_policy.plan_tls(pf.read(), FILES, options)
    for service in ("submission/inet", "submissions/inet"):
        assert "smtpd_tls_mandatory_protocols" not in params(plan, service)
        assert "smtpd_tls_mandatory_exclude_ciphers" not in params(plan, service)
    # Weaker ones: protocols replaced, exclusions kept with aNULL added.
    pf.postconf("-e", "smtpd_tls_mandatory_protocols=!SSLv2, !SSLv3",
                "smtpd_tls_mandatory_exclude_ciphers=CAMELLIA RC4")
    plan = postfix_policy.plan_tls(pf.read(), FILES, options)
    assert params(plan, "submission/inet")["smtpd_tls_mandatory_protocols"] == ">=TLSv1.2"
    assert params(plan, "submissions/inet")["smtpd_tls_mandatory_exclude_ciphers"] == (
        "CAMELLIA,RC4,aNULL")
    pf.apply(plan)
    config = pf.read()
    assert postfix_policy.plan_tls(config, FILES, options).empty
    service = config.services_on_port(587)[0]
    # An operator's later -o that is stricter stays (TLS 1.3 only on 587).
    pf.postconf("-P", f"{service.key}/smtpd_tls_mandatory_protocols=TLSv1.3")
    assert postfix_policy.plan_tls(pf.read(), FILES, options).empty
    # Port 25 keeps main.cf's opportunistic policy.
    assert not config.services_on_port(25)[0].overrides


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


def test_a_sasl_backend_that_cannot_work_is_replaced_and_named(tmp_path: Path) -> None:
    # The how-to's 587: SASL on, no type, so Cyrus, which has no smtpd.conf.
    pf = instance(tmp_path, "debian12")
    with open(pf.master_cf, "a") as handle:
        handle.write("submission inet n - y - - smtpd -o smtpd_tls_security_level=encrypt "
                     "-o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes\n")
    config = pf.read()
    [service] = config.services_on_port(587)
    cyrus = postfix_config.PostfixConfig(
        main={**config.main, "cyrus_sasl_config_path": str(tmp_path / "nowhere")},
        explicit=config.explicit, services=config.services, map_types=config.map_types)
    problem = sasl.backend_problem(cyrus, service)
    assert problem.startswith(f"Cyrus SASL has no smtpd.conf in {tmp_path / 'nowhere'}")
    kept = postfix_policy.plan_tls(config, FILES, postfix_policy.Options(
        dovecot_sasl_path="private/auth"))
    assert "smtpd_sasl_type" not in params(kept, "submission/inet")  # a working backend
    plan = postfix_policy.plan_tls(config, FILES, postfix_policy.Options(
        dovecot_sasl_path="private/auth", broken_sasl={service.key: problem}))
    sub = params(plan, "submission/inet")
    assert sub["smtpd_sasl_type"] == "dovecot" and sub["smtpd_sasl_path"] == "private/auth"
    assert any(note.startswith("master.cf service submission/inet (port 587): replaced its "
                               "SASL backend (smtpd_sasl_type=cyrus), which cannot work")
               for note in plan.notes)
    alone = postfix_policy.plan_tls(config, FILES, postfix_policy.Options(
        broken_sasl={service.key: problem}))  # no Dovecot to wire: said, not hidden
    assert any("has a SASL backend that cannot work (Cyrus SASL has no smtpd.conf" in w
               for w in alone.warnings)


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


NESTED = "{ smtpd_client_restrictions = check_client_access inline:{ 1.2.3.4=OK }, reject }"


def test_nested_braces_in_master_args_are_one_argument(tmp_path: Path) -> None:
    # Postfix nests braces (mystrtokq): cutting at the first } corrupted the baselines
    # an undeploy puts back.
    service = postfix_config.MasterService.parse(
        f"submission inet n - y - - smtpd -o {NESTED} -o x=inline:{{ a=b }}")
    assert service.args == ("-o", NESTED, "-o", "x=inline:{ a=b }")
    assert service.overrides == {
        "smtpd_client_restrictions": "check_client_access inline:{ 1.2.3.4=OK }, reject",
        "x": "inline:{ a=b }",
    }
    pf = instance(tmp_path, "debian12")
    with open(pf.master_cf, "a") as handle:
        handle.write(f"2525 inet n - y - - smtpd\n  -o {NESTED}\n")
    (entry,) = [s for s in pf.read().services if s.port == 2525]
    assert entry.overrides["smtpd_client_restrictions"] == (
        "check_client_access inline:{ 1.2.3.4=OK }, reject")


def test_instance_keys_are_one_per_directory(tmp_path: Path) -> None:
    # /etc/postfix-out and /etc/postfix/out had one key, so one state, between them.
    base = Path(f"/tmp/cpt{os.getpid()}")  # letters and digits only: the keys are known
    try:
        for where in ("conf", "conf/postfix"):
            instance(base / where, "debian12")
        (base / "conf/debian12").rename(base / "conf/postfix-out")
        (base / "conf/postfix/debian12").rename(base / "conf/postfix/out")
        dash = Postfix(str(base / "conf/postfix-out"))
        nested = Postfix(str(base / "conf/postfix/out"))
        prefix = str(base).strip("/").replace("/", "-")
        assert dash.instance_key == f"{prefix}-conf-postfix_2dout"
        assert nested.instance_key == f"{prefix}-conf-postfix-out"
        # A state an earlier version recorded under the old key (nested's new one) is
        # still found by the directory it records; the other directory is refused.
        config_dir = str(tmp_path)
        old = State(instance=nested.instance_key, postfix_dir=dash.config_dir)
        old.add(DeployedLineage(name="a", key_path="/k", fullchain_path="/f",
                                chain_file="/c", names=["a.example"]))
        old.save(config_dir)
        assert dash.state_key(config_dir) == nested.instance_key
        with pytest.raises(errors.PluginError,
                           match=f"records Postfix {dash.config_dir}, not {nested.config_dir}"):
            nested.state_key(config_dir)
        State(instance=dash.instance_key, postfix_dir=dash.config_dir).save(config_dir)
        assert dash.state_key(config_dir) == dash.instance_key
    finally:
        shutil.rmtree(base, ignore_errors=True)


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
