"""Dovecot: planning on real Debian 12 (2.3) / Debian 13 (2.4) trees, and a real Dovecot.

The fixtures are the stock configuration files the packages install
(dovecot23/: Debian 12's /usr/share/dovecot copies, dovecot24/: Debian 13's
/etc/dovecot) plus the ``doveconf`` output the endpoint parser reads. The
end-to-end tests run the installed Dovecot (Debian 12's 2.3 or Debian 13's 2.4) in the
lab's private namespace.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from certbot import errors
from conftest import FIXTURES, installed_dovecot_tree
from lab.dovecot import RHEL_CERT, RHEL_KEY, cert_lines, installed_version, rhel_ssl_conf

from certbot_postfix_tls._internal import process
from certbot_postfix_tls._internal.daemons.dovecot import conftree as dovecot_conftree
from certbot_postfix_tls._internal.daemons.dovecot import doveconf
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.dovecot.plan import CertFiles
from certbot_postfix_tls._internal.tls_client import Endpoint

FIX23 = FIXTURES / "dovecot23"
FIX24 = FIXTURES / "dovecot24"
V23 = (2, 3, 19, 1)
V24 = (2, 4, 1)
LE = CertFiles("/etc/letsencrypt/live/mail.a.example/fullchain.pem",
               "/etc/letsencrypt/live/mail.a.example/privkey.pem")
LE_B = CertFiles("/etc/letsencrypt/live/mail.b.example/fullchain.pem",
                 "/etc/letsencrypt/live/mail.b.example/privkey.pem")
SASL = "/var/spool/postfix/private/auth"


def copy_tree(src: Path, dst: Path) -> Path:
    """A fixture tree without the doveconf output files; returns its dovecot.conf."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.txt"))
    return dst / "dovecot.conf"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def plan_for(
    conf: Path, version: tuple[int, ...], cert: CertFiles = LE, **kw
) -> dovecot_plan.DovecotPlan:
    plugin, include_from = dovecot_plan.plugin_layout(str(conf), conf.read_text())
    extra = [plugin] + ([include_from] if include_from else [])
    tree = dovecot_conftree.read_config(str(conf), extra)
    return dovecot_plan.plan_config(tree, version, plugin, include_from, cert, **kw)


def apply(plan: dovecot_plan.DovecotPlan) -> None:
    for path, text in plan.writes.items():
        Path(path).write_text(text)


# --- layout ------------------------------------------------------------------------------


def test_debian_layout_puts_the_file_in_conf_d(tmp_path: Path) -> None:
    conf = copy_tree(FIX23, tmp_path / "dovecot")
    plugin, include_from = dovecot_plan.plugin_layout(str(conf), conf.read_text())
    assert plugin == str(tmp_path / "dovecot/conf.d/99-certbot-postfix-tls.conf")
    assert include_from is None


def test_single_file_layout_includes_the_file_from_dovecot_conf(tmp_path: Path) -> None:
    conf = tmp_path / "dovecot.conf"
    original = "protocols = imap\nssl_cert = </etc/ssl/old.pem\nssl_key = </etc/ssl/old.key"
    conf.write_text(original)  # no final newline: the include must still start a line
    plan = plan_for(conf, V23)
    plugin = str(tmp_path / "certbot-postfix-tls.conf")
    assert plan.creates == [plugin]
    assert plan.writes[str(conf)] == (
        "protocols = imap\n"
        "#certbot-postfix-tls# ssl_cert = </etc/ssl/old.pem\n"
        "#certbot-postfix-tls# ssl_key = </etc/ssl/old.key\n"
        "# certbot-postfix-tls: the certificate for IMAP/POP3 (certbot rollback removes this)\n"
        "!include certbot-postfix-tls.conf\n"
    )
    assert any("!include certbot-postfix-tls.conf" in note for note in plan.notes)
    apply(plan)
    assert plan_for(conf, V23).empty


def test_local_conf_layout_includes_from_local_conf(tmp_path: Path) -> None:
    conf = tmp_path / "dovecot.conf"
    conf.write_text("protocols = imap\n!include_try local.conf\n")
    plan = plan_for(conf, V23)
    local = str(tmp_path / "local.conf")
    assert sorted(plan.creates) == sorted([local, str(tmp_path / "certbot-postfix-tls.conf")])
    assert str(conf) not in plan.writes
    assert plan.writes[local].endswith("!include certbot-postfix-tls.conf\n")
    apply(plan)
    assert plan_for(conf, V23).empty


# --- rendering -----------------------------------------------------------------------------


def test_render_23_and_24() -> None:
    text23 = dovecot_plan.render_plugin_file(V23, LE)
    assert "\nssl_cert = </etc/letsencrypt/live/mail.a.example/fullchain.pem\n" in text23
    assert "\nssl_key = </etc/letsencrypt/live/mail.a.example/privkey.pem\n" in text23
    text24 = dovecot_plan.render_plugin_file(V24, LE)
    assert "\nssl_server_cert_file = /etc/letsencrypt/live/mail.a.example/fullchain.pem\n" in text24
    assert "\nssl_server_key_file = /etc/letsencrypt/live/mail.a.example/privkey.pem\n" in text24
    assert "ssl_cert" not in text24 and "<" not in text24
    for text in (text23, text24):  # policy is the operator's
        assert "\nssl =" not in text and "protocols" not in text


def test_render_sni_block_does_not_inherit_the_default_pair() -> None:
    """A local_name block inherits what it does not set: beside a default pair (ECDSA +
    RSA), a single lineage's block clears the alternative certificate, or RSA-only
    clients asking for its names would get the default's RSA certificate."""
    pair = dataclasses.replace(LE, alt_fullchain="/etc/letsencrypt/live/rsa/fullchain.pem",
                               alt_key="/etc/letsencrypt/live/rsa/privkey.pem")
    text = dovecot_plan.render_plugin_file(V23, pair, sni=[(["mail.b.example"], LE_B)])
    assert text.endswith(
        "local_name mail.b.example {\n"
        "  ssl_cert = </etc/letsencrypt/live/mail.b.example/fullchain.pem\n"
        "  ssl_key = </etc/letsencrypt/live/mail.b.example/privkey.pem\n"
        "  ssl_alt_cert =\n  ssl_alt_key =\n}\n"), text
    text24 = dovecot_plan.render_plugin_file(V24, pair, sni=[(["mail.b.example"], LE_B)])
    assert "  ssl_server_alt_cert_file =\n  ssl_server_alt_key_file =\n}\n" in text24
    # Without a default pair there is nothing to clear.
    assert "alt" not in dovecot_plan.render_plugin_file(V23, LE, sni=[(["mail.b.example"], LE_B)])


def test_render_sni_blocks_sorted_one_per_name() -> None:
    text = dovecot_plan.render_plugin_file(
        V23, LE, sni=[(["mail.b.example", "*.b.example"], LE_B), (["mail.b.example"], LE)]
    )
    assert text.index("local_name *.b.example {") < text.index("local_name mail.b.example {")
    assert text.count("local_name mail.b.example {") == 1  # first lineage keeps a name
    block = text[text.index("local_name mail.b.example {"):]
    assert block.startswith(
        "local_name mail.b.example {\n"
        "  ssl_cert = </etc/letsencrypt/live/mail.b.example/fullchain.pem\n"
        "  ssl_key = </etc/letsencrypt/live/mail.b.example/privkey.pem\n}\n"
    )
    text24 = dovecot_plan.render_plugin_file(V24, LE, sni=[(["mail.b.example"], LE_B)])
    assert (
        "local_name mail.b.example {\n"
        "  ssl_server_cert_file = /etc/letsencrypt/live/mail.b.example/fullchain.pem\n"
    ) in text24


def test_render_sasl_listener() -> None:
    text = dovecot_plan.render_plugin_file(V23, LE, sasl_listener=SASL)
    assert text.endswith(
        "service auth {\n"
        "  unix_listener /var/spool/postfix/private/auth {\n"
        "    mode = 0660\n    user = postfix\n    group = postfix\n  }\n}\n"
    )


@pytest.mark.parametrize(
    "cert",
    [
        CertFiles("/etc/le/live/a b/fullchain.pem", "/k.pem"),  # would need quotes: no `<`
        CertFiles("relative/fullchain.pem", "/k.pem"),
        CertFiles("/etc/le/%{user}/fullchain.pem", "/k.pem"),  # 2.4 would expand it
        CertFiles("/f.pem", "/etc/le/x#y/privkey.pem"),  # '#' starts a comment
    ],
)
def test_render_refuses_paths_dovecot_cannot_hold(cert: CertFiles) -> None:
    with pytest.raises(errors.PluginError):
        dovecot_plan.render_plugin_file(V23, cert)


def test_render_refuses_odd_sni_names() -> None:
    with pytest.raises(errors.PluginError, match="local_name"):
        dovecot_plan.render_plugin_file(V23, LE, sni=[(["mail.b.example {"], LE_B)])


# --- planning on the stock trees ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "version", "lines"),
    [
        (FIX23, V23, (12, 13)),  # ssl_cert / ssl_key = </etc/dovecot/private/dovecot.*
        (FIX24, V24, (18, 20)),  # ssl_server_cert_file / ssl_server_key_file
    ],
)
def test_stock_plan_comments_out_competitors_byte_exactly(
    tmp_path: Path, fixture: Path, version: tuple[int, ...], lines: tuple[int, int]
) -> None:
    conf = copy_tree(fixture, tmp_path / "dovecot")
    before = snapshot(tmp_path)
    plan = plan_for(conf, version, sasl_listener=SASL, sni=[(["mail.b.example"], LE_B)])
    ssl_conf = str(tmp_path / "dovecot/conf.d/10-ssl.conf")
    plugin = str(tmp_path / "dovecot/conf.d/99-certbot-postfix-tls.conf")
    assert set(plan.writes) == {ssl_conf, plugin}
    assert plan.creates == [plugin]

    old = before[ssl_conf].decode().splitlines(keepends=True)
    new = plan.writes[ssl_conf].splitlines(keepends=True)
    assert len(old) == len(new)
    changed = [i + 1 for i, (a, b) in enumerate(zip(old, new)) if a != b]
    assert tuple(changed) == lines
    for n in lines:
        assert new[n - 1] == dovecot_plan.MARKER + old[n - 1]
    assert dovecot_plan.uncomment(plan.writes[ssl_conf]).encode() == before[ssl_conf]

    apply(plan)
    assert plan_for(conf, version, sasl_listener=SASL, sni=[(["mail.b.example"], LE_B)]).empty
    # Another certificate only rewrites the plugin's file.
    again = plan_for(conf, version, cert=LE_B)
    assert set(again.writes) == {plugin} and again.creates == []


def test_include_following(tmp_path: Path) -> None:
    conf = copy_tree(FIX23, tmp_path / "dovecot")
    extra = tmp_path / "dovecot/extra"
    extra.mkdir()
    # Relative to the including file (local.conf), glob sorted, nested includes.
    (tmp_path / "dovecot/local.conf").write_text(
        "!include extra/*.conf\n"
        "protocol imap {\n  !include in-block.inc\n}\n"
        "local_name mail.x.example {\n  ssl_cert = </etc/ssl/x.pem\n}\n"
    )
    (extra / "b.conf").write_text(
        "  ssl_key=</etc/ssl/b.key   # old key\n!include_try nope/*.conf\n"
    )
    (extra / "a.conf").write_text("ssl_alt_cert = </etc/ssl/ecdsa.pem\nssl_alt_key = \\\n </k\n")
    (tmp_path / "dovecot/in-block.inc").write_text("ssl_cert = </etc/ssl/imap-only.pem\n")
    tree = dovecot_conftree.read_config(str(conf))
    files = list(tree.files)
    assert files.index(str(extra / "a.conf")) < files.index(str(extra / "b.conf"))
    plan = plan_for(conf, V23)
    assert plan.writes[str(extra / "b.conf")] == (
        "#certbot-postfix-tls#   ssl_key=</etc/ssl/b.key   # old key\n!include_try nope/*.conf\n"
    )
    # ssl_alt_* is a second certificate Dovecot would also serve; continuation lines too.
    assert plan.writes[str(extra / "a.conf")] == (
        "#certbot-postfix-tls# ssl_alt_cert = </etc/ssl/ecdsa.pem\n"
        "#certbot-postfix-tls# ssl_alt_key = \\\n#certbot-postfix-tls#  </k\n"
    )
    # Inside protocol {} / local_name {} blocks: the operator's, left alone.
    assert str(tmp_path / "dovecot/local.conf") not in plan.writes
    assert str(tmp_path / "dovecot/in-block.inc") not in plan.writes


def test_missing_include_is_refused(tmp_path: Path) -> None:
    conf = copy_tree(FIX23, tmp_path / "dovecot")
    (tmp_path / "dovecot/local.conf").write_text("\n!include missing.conf\n")
    with pytest.raises(errors.MisconfigurationError, match=r"local.conf line 2 .*missing.conf"):
        plan_for(conf, V23)


def test_24_ssl_server_block_counts_as_top_level(tmp_path: Path) -> None:
    conf = copy_tree(FIX24, tmp_path / "dovecot")
    local = tmp_path / "dovecot/local.conf"
    local.write_text(
        "ssl_server {\n  cert_file = /etc/ssl/old.pem\n  ssl_server_key_file = /etc/ssl/old.key\n"
        "  ca_file = /etc/ssl/ca.pem\n}\n"
        "local_name mail.x.example {\n  ssl_server_cert_file = /etc/ssl/x.pem\n}\n"
        "ssl_cert = </ignored/in/2.4\n"
    )
    plan = plan_for(conf, V24)
    assert plan.writes[str(local)].splitlines()[:5] == [
        "ssl_server {",
        "#certbot-postfix-tls#   cert_file = /etc/ssl/old.pem",
        "#certbot-postfix-tls#   ssl_server_key_file = /etc/ssl/old.key",
        "  ca_file = /etc/ssl/ca.pem",
        "}",
    ]
    assert "#certbot-postfix-tls#   ssl_server_cert_file" not in plan.writes[str(local)]
    assert "\nssl_cert = </ignored/in/2.4\n" in plan.writes[str(local)]


def test_sasl_listener_merges_with_debian_service_auth(tmp_path: Path) -> None:
    """Debian's 10-master.conf has its own `service auth {}`: the installed Dovecot (2.3 or
    2.4) merges them by name."""
    conf, version = installed_dovecot_tree(tmp_path / "dovecot")
    cert = tmp_path / "cert.pem"
    cert.write_text("not read by doveconf -n\n")
    apply(plan_for(conf, version, cert=CertFiles(str(cert), str(cert)), sasl_listener=SASL))
    out = subprocess.run(["doveconf", "-c", str(conf), "-n", "service/auth"],
                         capture_output=True, text=True, check=True).stdout
    section = dict(doveconf.parse_doveconf(out).children)["service auth"]
    listeners = dict(section.children)
    assert listeners[f"unix_listener {SASL}"].settings == {
        "group": "postfix", "mode": "0660", "user": "postfix",
    }


# --- endpoints ------------------------------------------------------------------------------


def eps(text: str, address: str = "192.0.2.1") -> set[tuple[str, str, int, str, str]]:
    return {(e.protocol, e.address, e.port, e.tls, e.label)
            for e in doveconf.endpoints_from_doveconf(text, address)}


STOCK = {
    ("imap", "192.0.2.1", 143, "starttls", "imap"),
    ("imap", "192.0.2.1", 993, "implicit", "imaps"),
    ("pop3", "192.0.2.1", 110, "starttls", "pop3"),
    ("pop3", "192.0.2.1", 995, "implicit", "pop3s"),
}


@pytest.mark.parametrize("fixture", [FIX23, FIX24])
def test_endpoints_of_stock_config(fixture: Path) -> None:
    text = (fixture / "doveconf-endpoints.txt").read_text()
    assert eps(text) == STOCK  # "*, ::" (2.3) / "* ::" (2.4) -> the verify address
    result = doveconf.endpoints_from_doveconf(text, "127.0.0.1")
    assert all(isinstance(e, Endpoint) and e.service == "dovecot" for e in result)


@pytest.mark.parametrize(("fixture", "line"), [(FIX23, "ssl_prefer_server_ciphers = yes"),
                                              (FIX24, "ssl_server_prefer_ciphers = server")])
def test_endpoints_server_order(fixture: Path, line: str) -> None:
    """Whether Dovecot imposes its order (verify then needs a second handshake to see a
    certificate of the other key type); the 2.3 and 2.4 names and values."""
    text = (fixture / "doveconf-endpoints.txt").read_text()
    assert not any(e.server_order for e in doveconf.endpoints_from_doveconf(text, "127.0.0.1"))
    ordered = doveconf.endpoints_from_doveconf(f"{text}{line}\n", "127.0.0.1")
    assert ordered and all(e.server_order for e in ordered)
    client = line.replace("yes", "no").replace("server", "client")
    assert not any(e.server_order
                   for e in doveconf.endpoints_from_doveconf(f"{text}{client}\n", "127.0.0.1"))


@pytest.mark.parametrize(("value", "legacy"), [
    ("TLSv1", True), ("TLSv1.1", True), ("SSLv3", True), ("ANY", True),
    ("TLSv1.2", False), ("TLSv1.3", False), ("LATEST", False), ("", False)])
def test_legacy_min_protocol(value: str, legacy: bool) -> None:
    assert doveconf.legacy_min_protocol(value) is legacy


def test_endpoints_24_listener_listen_port0_haproxy() -> None:
    text = (FIX24 / "doveconf-endpoints-custom.txt").read_text()
    assert eps(text) == {
        ("imap", "127.0.0.2", 993, "implicit", "imaps"),  # listener's own listen
        ("pop3", "127.0.0.1", 110, "starttls", "pop3"),  # global listen
    }  # imap port 0: disabled; pop3s haproxy: needs a PROXY header first


def test_endpoints_ssl_no_protocols_and_23_address() -> None:
    text = (FIX23 / "doveconf-endpoints.txt").read_text()
    assert eps(text.replace("ssl = yes", "ssl = no")) == set()
    only_imap = eps(text.replace("protocols =  imap pop3", "protocols = imap lmtp"))
    assert {e[0] for e in only_imap} == {"imap"}
    addressed = text.replace("    address = \n    haproxy = no\n    port = 993",
                             "    address = 10.0.0.1, [::1]\n    haproxy = no\n    port = 993")
    assert ("imap", "::1", 993, "implicit", "imaps") in eps(addressed)
    assert ("imap", "10.0.0.1", 993, "implicit", "imaps") in eps(addressed)
    assert eps(text.replace("listen = *, ::", "listen = ")) == set()


def test_parse_version() -> None:
    assert process.version_tuple("2.3.19.1 (9b53102964)\n") == (2, 3, 19, 1)
    assert process.version_tuple("2.4.1-4 (7d8c0e5759)") >= (2, 4)


# --- the process boundary, mocked -----------------------------------------------------------


def fake_run(replies: dict[str, tuple[int, str, str]]):
    calls: list[list[str]] = []

    def run(argv, **kwargs):
        calls.append(list(argv))
        for key, (rc, out, err) in replies.items():
            if key in " ".join(argv):
                return subprocess.CompletedProcess(argv, rc, out, err)
        return subprocess.CompletedProcess(argv, 0, "", "")

    return run, calls


def test_version_detection_and_24_check_message(tmp_path: Path, monkeypatch) -> None:
    conf = copy_tree(FIX24, tmp_path / "dovecot")
    message = ("doveconf: Fatal: Error in configuration file /etc/dovecot/conf.d/10-ssl.conf "
               "line 18: ssl_server_cert_file: open(/etc/dovecot/private/dovecot.pem) failed: "
               "No such file or directory\n")
    run, calls = fake_run({"--version": (0, "2.4.1-4 (7d8c0e5759)\n", ""),
                           "-x": (89, "", message)})
    monkeypatch.setattr(process, "run", run)
    monkeypatch.setattr(process, "find_tool", lambda name: f"/usr/bin/{name}")
    dv = Dovecot(str(conf))
    assert dv.version == (2, 4, 1) and dv.uses_24_syntax
    with pytest.raises(errors.MisconfigurationError) as err:
        dv.check()
    assert "ssl_server_cert_file: open(/etc/dovecot/private/dovecot.pem) failed" in str(err.value)
    assert str(conf) in str(err.value)
    assert ["doveconf", "-c", str(conf), "-x", "base_dir"] in calls
    assert "ssl_server_cert_file = " in dv.plan_files(LE).writes[dv.plugin_file]


def test_24_settings_read_the_ssl_server_block(tmp_path: Path, monkeypatch) -> None:
    """2.4's doveconf prints ssl_server_cert_file empty and its value in ssl_server {}."""
    conf = copy_tree(FIX24, tmp_path / "dovecot")
    printed = ("ssl = yes\nssl_server_cert_file = \nssl_server_key_file = \n"
               "ssl_server {\n  cert_file = /le/fullchain.pem\n  key_file = /le/privkey.pem\n}\n")
    run, calls = fake_run({"--version": (0, "2.4.1-4 (7d8c0e5759)\n", ""),
                           "ssl_server": (0, printed, "")})
    monkeypatch.setattr(process, "run", run)
    monkeypatch.setattr(process, "find_tool", lambda name: f"/usr/bin/{name}")
    dv = Dovecot(str(conf))
    assert dv.settings("ssl", "ssl_server_cert_file", "ssl_server_key_file") == {
        "ssl": "yes",
        "ssl_server_cert_file": "/le/fullchain.pem",
        "ssl_server_key_file": "/le/privkey.pem",
    }
    assert calls[-1][-1] == "ssl_server"


def test_no_doveconf_or_no_config(tmp_path: Path, monkeypatch) -> None:
    # Installed or not on this machine: first doveconf is there, then it is not.
    monkeypatch.setattr(process, "find_tool", lambda name: f"/usr/bin/{name}")
    with pytest.raises(errors.NoInstallationError, match="--postfix-tls-dovecot-config"):
        Dovecot(str(tmp_path / "nope.conf"), version=V23)
    monkeypatch.setattr(process, "find_tool", lambda name: None)
    with pytest.raises(errors.NoInstallationError, match="doveconf"):
        Dovecot(str(tmp_path / "nope.conf"))


def test_endpoints_and_check_with_real_doveconf(tmp_path: Path) -> None:
    """doveconf -n misses a missing certificate file; check() (doveconf -x) does not."""
    conf, version = installed_dovecot_tree(tmp_path / "dovecot")
    (tmp_path / "dovecot/local.conf").write_text("listen = 127.0.0.1\n")
    # The stock snakeoil path, moved where no host file can be: it must be missing.
    ssl_conf = tmp_path / "dovecot/conf.d/10-ssl.conf"
    missing = tmp_path / "missing/etc/dovecot/private"
    ssl_conf.write_text(ssl_conf.read_text().replace("/etc/dovecot/private", str(missing)))
    dv = Dovecot(str(conf))
    assert dv.version == version
    found = {(e.port, e.address) for e in dv.effective_endpoints("192.0.2.1")}
    assert found >= {(143, "127.0.0.1"), (993, "127.0.0.1")}
    dv.check_syntax()  # the snakeoil file is missing: only -x notices
    with pytest.raises(errors.MisconfigurationError, match="/etc/dovecot/private/dovecot.pem"):
        dv.check()


def test_count_sessions_23_and_24_headers() -> None:
    assert doveconf.count_sessions(
        "username\tproto\tpid\tip\nu1\timap\t1\t127.0.0.1\nu1\timap\t2\t127.0.0.1\n"
        "u2\tpop3\t3\t127.0.0.1\n") == {"imap": 2, "pop3": 1}
    assert doveconf.count_sessions("username\tservice\tpid\tip\nu\timap\t1\t::1\n") == {"imap": 1}
    assert doveconf.count_sessions("username\tproto\tpid\tip\n") == {}
    assert doveconf.count_sessions("") == {}


# --- established sessions: --postfix-tls-dovecot-sessions ----------------------------------


@pytest.mark.parametrize(("fixture", "version"), [("dovecot23", (2, 3, 19)),
                                                  ("dovecot24", (2, 4, 1))])
def test_plan_keep_cut_and_an_operators_own_setting(
    tmp_path: Path, fixture: str, version: tuple[int, ...]
) -> None:
    shutil.copytree(FIXTURES / fixture, tmp_path / "dovecot",
                    ignore=shutil.ignore_patterns("*.txt"))
    conf = tmp_path / "dovecot" / "dovecot.conf"
    plugin = str(tmp_path / "dovecot/conf.d/99-certbot-postfix-tls.conf")
    cut = plan_for(conf, version, sessions="cut")
    assert "shutdown_clients" not in cut.writes[plugin]
    assert cut.writes[plugin] == dovecot_plan.render_plugin_file(version, LE)  # as before
    keep = plan_for(conf, version, sessions="keep")
    assert "\nshutdown_clients = no\n" in keep.writes[plugin]
    for path, text in keep.writes.items():
        Path(path).write_text(text)
    assert plan_for(conf, version, sessions="keep").empty  # planning again: nothing to write
    assert plan_for(conf, version, sessions="cut").writes[plugin] == cut.writes[plugin]

    # The operator's own value (anywhere outside the plugin's file) stays in force.
    master = tmp_path / "dovecot/conf.d/10-master.conf"
    master.write_text(master.read_text() + "shutdown_clients = yes\n")
    lines = master.read_text().count("\n")
    own = plan_for(conf, version, sessions="keep")
    assert "shutdown_clients" not in own.writes[plugin]
    assert str(master) not in own.writes  # never edited
    assert any(f"{master} line {lines} already sets shutdown_clients = yes" in note
               for note in own.notes)


# --- other distributions' trees ------------------------------------------------------------


def test_rhel_tree_is_planned_like_debian(tmp_path: Path) -> None:
    """conf.d/*.conf is included as on Debian: the plugin's file goes to conf.d, the
    /etc/pki lines are commented out, ``ssl = required`` stays."""
    pristine = Path("/usr/share/dovecot")
    if not (pristine / "dovecot.conf").is_file():
        pytest.skip("Dovecot's pristine configuration is not installed (dovecot-core)")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (tmp_path / "dovecot.conf").write_text((pristine / "dovecot.conf").read_text())
    ssl_text = rhel_ssl_conf((pristine / "conf.d" / "10-ssl.conf").read_text())
    (conf_d / "10-ssl.conf").write_text(ssl_text)
    main = str(tmp_path / "dovecot.conf")

    plugin_file, include_from = dovecot_plan.plugin_layout(main, Path(main).read_text())
    assert (plugin_file, include_from) == (str(conf_d / dovecot_plan.DEBIAN_PLUGIN_NAME), None)

    tree = dovecot_conftree.read_config(main, [plugin_file])
    cert = dovecot_plan.CertFiles("/etc/letsencrypt/live/a/fullchain.pem",
                                  "/etc/letsencrypt/live/a/privkey.pem")
    plan = dovecot_plan.plan_config(tree, installed_version(), plugin_file, None, cert)
    new_ssl = plan.writes[str(conf_d / "10-ssl.conf")]
    rhel_cert, rhel_key = cert_lines(RHEL_CERT, RHEL_KEY)
    assert f"{dovecot_plan.MARKER}{rhel_cert}\n" in new_ssl
    assert f"{dovecot_plan.MARKER}{rhel_key}\n" in new_ssl
    assert "\nssl = required\n" in new_ssl
    assert dovecot_plan.uncomment(new_ssl) == ssl_text  # restorable byte for byte


def test_latin1_include_is_read_and_kept_byte_for_byte(tmp_path: Path) -> None:
    """Dovecot reads bytes: an include with a Latin-1 comment is valid for it and must
    not fail a deploy or renewal (it raised UnicodeDecodeError) nor be re-encoded."""
    main = tmp_path / "dovecot.conf"
    local = tmp_path / "local.conf"
    local.write_bytes(b"# Gr\xfc\xdfe, cl\xe9s\nssl = yes\nssl_cert = </etc/ssl/a.pem\n")
    main.write_bytes(b"!include_try local.conf\n")
    tree = dovecot_conftree.read_config(str(main))
    assert dovecot_conftree.encode_text(tree.files[str(local)]) == local.read_bytes()
    assert any(s.name == "ssl_cert" for s in tree.settings)


def _active_certificate(conf: Path) -> bool:
    tree = dovecot_conftree.read_config(str(conf))
    return any(s.name == "ssl_cert" for s in tree.settings)


@pytest.mark.parametrize("removing", [False, True])
def test_every_write_prefix_leaves_a_certificate(tmp_path: Path, removing: bool) -> None:
    """A kill between any two of the plan's writes (deploy or removal) never leaves
    `ssl = required` without a certificate: the include line is written before the
    competing lines are commented out, and removed after they come back."""
    conf = tmp_path / "dovecot.conf"
    local = tmp_path / "local.conf"
    conf.write_text("ssl = required\nssl_cert = </etc/ssl/a.pem\nssl_key = </etc/ssl/a.key\n"
                    "!include_try local.conf\n")
    local.write_text("protocols = imap\n")
    plan = plan_for(conf, V23)
    if removing:
        apply(plan)
        plugin, include_from = dovecot_plan.plugin_layout(str(conf), conf.read_text())
        tree = dovecot_conftree.read_config(str(conf), [plugin, str(include_from)])
        plan = dovecot_plan.removal_plan(tree, plugin, include_from)
    writes = list(plan.writes.items())
    assert len(writes) >= 2
    before = snapshot(tmp_path)
    for done in range(len(writes) + 1):
        for path, data in before.items():
            Path(path).write_bytes(data)
        for path, text in writes[:done]:
            Path(path).write_text(text)
        assert _active_certificate(conf), [path for path, _ in writes[:done]]
