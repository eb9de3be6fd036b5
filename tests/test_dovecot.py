"""Dovecot: planning on real Debian 12 (2.3) / Debian 13 (2.4) trees, and a real Dovecot.

The fixtures are the stock configuration files the packages install
(dovecot23/: Debian 12's /usr/share/dovecot copies, dovecot24/: Debian 13's
/etc/dovecot) plus the ``doveconf`` output the endpoint parser reads. The
end-to-end tests run the installed Dovecot (Debian 12's 2.3 or Debian 13's 2.4) in the
lab's private namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from certbot import errors
from conftest import FIXTURES, installed_dovecot_tree, need, need_lab
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lab.dovecot import installed_version

from certbot_postfix_tls._internal import dovecot, process, verify
from certbot_postfix_tls._internal.dovecot import CertFiles, Dovecot
from certbot_postfix_tls._internal.verify import Endpoint

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
) -> dovecot.DovecotPlan:
    plugin, include_from = dovecot.plugin_layout(str(conf), conf.read_text())
    extra = [plugin] + ([include_from] if include_from else [])
    tree = dovecot.read_config(str(conf), extra)
    return dovecot.plan_config(tree, version, plugin, include_from, cert, **kw)


def apply(plan: dovecot.DovecotPlan) -> None:
    for path, text in plan.writes.items():
        Path(path).write_text(text)


# --- layout ------------------------------------------------------------------------------


def test_debian_layout_puts_the_file_in_conf_d(tmp_path: Path) -> None:
    conf = copy_tree(FIX23, tmp_path / "dovecot")
    plugin, include_from = dovecot.plugin_layout(str(conf), conf.read_text())
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
    text23 = dovecot.render_plugin_file(V23, LE)
    assert "\nssl_cert = </etc/letsencrypt/live/mail.a.example/fullchain.pem\n" in text23
    assert "\nssl_key = </etc/letsencrypt/live/mail.a.example/privkey.pem\n" in text23
    text24 = dovecot.render_plugin_file(V24, LE)
    assert "\nssl_server_cert_file = /etc/letsencrypt/live/mail.a.example/fullchain.pem\n" in text24
    assert "\nssl_server_key_file = /etc/letsencrypt/live/mail.a.example/privkey.pem\n" in text24
    assert "ssl_cert" not in text24 and "<" not in text24
    for text in (text23, text24):  # policy is the operator's
        assert "\nssl =" not in text and "protocols" not in text


def test_render_sni_blocks_sorted_one_per_name() -> None:
    text = dovecot.render_plugin_file(
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
    text24 = dovecot.render_plugin_file(V24, LE, sni=[(["mail.b.example"], LE_B)])
    assert (
        "local_name mail.b.example {\n"
        "  ssl_server_cert_file = /etc/letsencrypt/live/mail.b.example/fullchain.pem\n"
    ) in text24


def test_render_sasl_listener() -> None:
    text = dovecot.render_plugin_file(V23, LE, sasl_listener=SASL)
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
        dovecot.render_plugin_file(V23, cert)


def test_render_refuses_odd_sni_names() -> None:
    with pytest.raises(errors.PluginError, match="local_name"):
        dovecot.render_plugin_file(V23, LE, sni=[(["mail.b.example {"], LE_B)])


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
        assert new[n - 1] == dovecot.MARKER + old[n - 1]
    assert dovecot.uncomment(plan.writes[ssl_conf]).encode() == before[ssl_conf]

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
    tree = dovecot.read_config(str(conf))
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
    section = dict(dovecot.parse_doveconf(out).children)["service auth"]
    listeners = dict(section.children)
    assert listeners[f"unix_listener {SASL}"].settings == {
        "group": "postfix", "mode": "0660", "user": "postfix",
    }


# --- endpoints ------------------------------------------------------------------------------


def eps(text: str, address: str = "192.0.2.1") -> set[tuple[str, str, int, str, str]]:
    return {(e.protocol, e.address, e.port, e.tls, e.label)
            for e in dovecot.endpoints_from_doveconf(text, address)}


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
    result = dovecot.endpoints_from_doveconf(text, "127.0.0.1")
    assert all(isinstance(e, Endpoint) and e.service == "dovecot" for e in result)


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
    assert dovecot.parse_version("2.3.19.1 (9b53102964)\n") == (2, 3, 19, 1)
    assert dovecot.parse_version("2.4.1-4 (7d8c0e5759)") >= (2, 4)


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
    assert "ssl_server_cert_file = " in dv.plan(LE).writes[dv.plugin_file]


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
    assert {(e.port, e.address) for e in dv.endpoints("192.0.2.1")} >= {(143, "127.0.0.1"),
                                                                         (993, "127.0.0.1")}
    dv.check_syntax()  # the snakeoil file is missing: only -x notices
    with pytest.raises(errors.MisconfigurationError, match="/etc/dovecot/private/dovecot.pem"):
        dv.check()


# --- real Dovecot ---------------------------------------------------------------------------


class Pair:
    """A lineage-like key + fullchain (leaf, intermediate) made with trustme."""

    def __init__(self, ca: trustme.CA, directory: Path, *names: str) -> None:
        directory.mkdir(parents=True)
        leaf = ca.issue_cert(*names)
        self.files = CertFiles(str(directory / "fullchain.pem"), str(directory / "privkey.pem"))
        Path(self.files.fullchain).write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        Path(self.files.key).write_bytes(leaf.private_key_pem.bytes())
        os.chmod(self.files.key, 0o600)
        self.der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
            Encoding.DER
        )


@pytest.fixture
def dovecot_lab(tmp_path: Path) -> Iterator[object]:
    """The lab's Dovecot; /etc/dovecot (an overlay here) is put back as it was after."""
    need("dovecot")
    from lab.dovecot import DovecotLab

    backup = tmp_path / "etc-dovecot-backup"
    had_config = os.path.isdir("/etc/dovecot")
    if had_config:
        subprocess.run(["cp", "-a", "/etc/dovecot", str(backup)], check=True)
    instances: list[DovecotLab] = []

    def make(**kw: object) -> DovecotLab:
        instance = DovecotLab(**kw)  # type: ignore[arg-type]
        instances.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in instances:
            instance.stop()
            Path(instance.log_file).unlink(missing_ok=True)
            if instance.config_dir != "/etc/dovecot":
                shutil.rmtree(instance.config_dir, ignore_errors=True)
        shutil.rmtree("/etc/dovecot", ignore_errors=True)
        if had_config:
            subprocess.run(["cp", "-a", str(backup), "/etc/dovecot"], check=True)


@pytest.fixture
def sasl_dir() -> Iterator[str]:
    """Postfix's private/ directory for Dovecot's auth socket (removed if we made it)."""
    need_lab()  # /var/spool/postfix: the lab's private one
    directory = os.path.dirname(SASL)
    created = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    yield SASL
    if created:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        Path(SASL).unlink(missing_ok=True)


def served(endpoint: Endpoint, sni: str | None = None) -> bytes:
    return verify.handshake(endpoint, sni).leaf_der


def wait_served(endpoints: list[Endpoint], der: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = {e.port: served(e) == der for e in endpoints}
        if all(now.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not serving the new certificate: {now}")
        time.sleep(0.2)


def test_real_dovecot_missing_snakeoil_deploy_reload(
    dovecot_lab, sasl_dir: str, tmp_path: Path
) -> None:
    import lab

    dovecot_lab = dovecot_lab()
    dovecot_lab.install_config(snakeoil=False)
    dv = Dovecot()
    dv.check_syntax()
    with pytest.raises(errors.MisconfigurationError, match="dovecot.pem"):
        dv.check()
    with pytest.raises(lab.LabError):  # what the machine's admin sees: no start
        dovecot_lab.start()
    assert not dv.running()

    ca = trustme.CA().create_child_ca()
    first = Pair(ca, tmp_path / "a", "mail.example.org")
    second = Pair(ca, tmp_path / "b", "mail.example.org")
    other = Pair(ca, tmp_path / "c", "mail.b.example")
    before = snapshot(Path("/etc/dovecot"))
    plan = dv.plan(first.files, sasl_listener=SASL, sni=[(["mail.b.example"], other.files)])
    dv.apply(plan)
    dv.check()
    dovecot_lab.start()
    assert dv.running()

    endpoints = dv.endpoints("127.0.0.1")
    assert {(e.protocol, e.port, e.tls) for e in endpoints} == {
        ("imap", 143, "starttls"), ("imap", 993, "implicit"),
        ("pop3", 110, "starttls"), ("pop3", 995, "implicit"),
    }
    for endpoint in endpoints:
        assert served(endpoint) == first.der, endpoint
        assert served(endpoint, "mail.b.example") == other.der, endpoint
    sock = os.stat(SASL)
    assert (oct(sock.st_mode & 0o777), sock.st_uid) == ("0o660", dovecot_lab_uid("postfix"))

    # Renewal: another cert, reload (not restart), same master.
    pid = dv.master_pid()
    dv.apply(dv.plan(second.files, sasl_listener=SASL, sni=[(["mail.b.example"], other.files)]))
    dv.reload()
    wait_served(endpoints, second.der)
    assert dv.master_pid() == pid

    # A plan pointing at a missing file fails the check; reload refuses, old cert stays.
    broken = CertFiles(str(tmp_path / "gone/fullchain.pem"), str(tmp_path / "gone/privkey.pem"))
    dv.apply(dv.plan(broken))
    with pytest.raises(errors.MisconfigurationError, match="gone/fullchain.pem"):
        dv.check()
    with pytest.raises(errors.MisconfigurationError, match="gone/fullchain.pem"):
        dv.reload()
    assert all(served(e) == second.der for e in endpoints)

    # What a rollback restores: the stock files, byte for byte, minus the plugin's file.
    os.unlink(dv.plugin_file)
    for path in plan.writes:
        if path in before:
            Path(path).write_text(dovecot.uncomment(Path(path).read_text()))
    assert snapshot(Path("/etc/dovecot")) == before


def dovecot_lab_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_real_config_already_rejected(dovecot_lab) -> None:
    dovecot_lab = dovecot_lab()
    dovecot_lab.install_config(snakeoil=True)
    dv = Dovecot()
    dv.check()  # stock Debian with its snakeoil pair passes
    local = Path("/etc/dovecot/local.conf")
    local.write_text("bogus_setting = 1\n")
    for method in (dv.check_syntax, dv.check):
        with pytest.raises(errors.MisconfigurationError, match="Unknown setting: bogus_setting"):
            method()
    local.write_text("!include missing.conf\n")
    with pytest.raises(errors.MisconfigurationError, match="local.conf line 1"):
        dv.check_syntax()
    with pytest.raises(errors.MisconfigurationError, match="missing.conf"):
        dv.plan(LE)


def test_real_second_instance_with_its_own_config_file(dovecot_lab, tmp_path: Path) -> None:
    """--postfix-tls-dovecot-config: doveconf/doveadm -c reach the right instance."""
    ports = {"imap": 10143, "imaps": 10993, "pop3": 10110, "pop3s": 10995}
    alt = dovecot_lab(config_dir="/etc/dovecot-alt", log_file="/var/log/dovecot-alt.log",
                      base_dir="/run/dovecot-alt", ports=ports)
    alt.install_config(snakeoil=True)
    dv = Dovecot("/etc/dovecot-alt/dovecot.conf")
    assert dv.plugin_file == "/etc/dovecot-alt/conf.d/99-certbot-postfix-tls.conf"
    ca = trustme.CA()
    first, second = Pair(ca, tmp_path / "a", "mail.example.org"), Pair(ca, tmp_path / "b", "x.org")
    dv.apply(dv.plan(first.files))
    alt.start()
    assert dv.running() and dv.base_dir() == "/run/dovecot-alt"
    endpoints = dv.endpoints("127.0.0.1")
    assert sorted(e.port for e in endpoints) == sorted(ports.values())
    wait_served(endpoints, first.der)
    pid = dv.master_pid()
    dv.apply(dv.plan(second.files))
    dv.reload()
    wait_served(endpoints, second.der)
    assert dv.master_pid() == pid
    alt.stop()
    assert not dv.running()
    with pytest.raises(errors.MisconfigurationError, match="not running"):
        dv.reload()


def test_real_dovecot_24_in_debian13_chroot(tmp_path: Path, monkeypatch) -> None:
    """Dovecot 2.4.1 from a Debian 13 chroot: 2.4 syntax, check, serve, reload.

    The chroot (``debootstrap --variant=minbase trixie DIR`` + dovecot-imapd,
    dovecot-pop3d, with a policy-rc.d that denies starts) is named by
    DOVECOT24_ROOT; its /etc, /var and /run are overlaid/private here, and every
    doveconf/doveadm call of the Dovecot class runs in it (the process boundary).
    """
    root = os.environ.get("DOVECOT24_ROOT", "")
    if not root or not os.path.exists(f"{root}/usr/sbin/dovecot"):
        native = process.find_tool("dovecot") and installed_version() >= (2, 4)
        pytest.skip("no Debian 13 chroot with Dovecot 2.4 (set DOVECOT24_ROOT to one)"
                    + ("; the installed Dovecot is 2.4: the end-to-end tests run it" if native
                       else ""))
    need("chroot")
    import lab

    mounts: list[str] = []
    for top in ("etc", "var"):
        upper, work = tmp_path / f"{top}-upper", tmp_path / f"{top}-work"
        upper.mkdir()
        work.mkdir()
        lab._mount("overlay", f"{root}/{top}", "overlay", 0,
                   f"lowerdir={root}/{top},upperdir={upper},workdir={work}")
        mounts.append(f"{root}/{top}")
    lab._mount("tmpfs", f"{root}/run", "tmpfs", 0)
    lab._mount("proc", f"{root}/proc", "proc", 0)
    mounts += [f"{root}/run", f"{root}/proc"]

    real_run = process.run

    def in_chroot(argv, **kw):
        inner = [a[len(root):] if a.startswith(root + "/") else a for a in argv]
        return real_run(["chroot", root, *inner], **kw)

    def find_tool(name: str) -> str | None:
        if name == "chroot":
            return shutil.which("chroot")
        for directory in ("/usr/bin", "/usr/sbin"):
            if os.path.exists(f"{root}{directory}/{name}"):
                return f"{directory}/{name}"
        return None

    def pid() -> int | None:
        return lab.read_pid(f"{root}/run/dovecot/master.pid")

    try:
        monkeypatch.setattr(process, "run", in_chroot)
        monkeypatch.setattr(process, "find_tool", find_tool)
        with open(f"{root}/etc/dovecot/dovecot.conf", "a") as conf:
            conf.write("\nlog_path = /var/log/dovecot.log\nlisten = 127.0.0.1\n")
        for name in os.listdir(f"{root}/etc/dovecot/private"):  # no snakeoil
            os.unlink(f"{root}/etc/dovecot/private/{name}")
        dv = Dovecot(f"{root}/etc/dovecot/dovecot.conf")
        assert dv.uses_24_syntax
        dv.check_syntax()
        with pytest.raises(errors.MisconfigurationError, match="ssl_server_cert_file"):
            dv.check()

        ca = trustme.CA().create_child_ca()
        pairs = [Pair(ca, Path(f"{root}/etc/lab-{n}"), "mail.example.org") for n in "ab"]
        inner = [CertFiles(p.files.fullchain[len(root):], p.files.key[len(root):])
                 for p in pairs]
        plan = dv.plan(inner[0])
        assert "ssl_server_cert_file = /etc/lab-a/fullchain.pem" in plan.writes[dv.plugin_file]
        dv.apply(plan)
        dv.check()
        subprocess.run(["chroot", root, "dovecot"], check=True, timeout=30,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        lab.wait_for_port(143)
        endpoints = dv.endpoints("127.0.0.1")
        assert {(e.protocol, e.port, e.tls) for e in endpoints} == {
            ("imap", 143, "starttls"), ("imap", 993, "implicit"),
            ("pop3", 110, "starttls"), ("pop3", 995, "implicit"),
        }
        wait_served(endpoints, pairs[0].der)
        master = pid()
        dv.apply(dv.plan(inner[1]))
        assert dv.plan(inner[1]).empty
        dv.reload()
        wait_served(endpoints, pairs[1].der)
        assert pid() == master
    finally:
        master = pid()
        if master is not None:
            lab.stop_pid(master)
        for mount in reversed(mounts):
            lab._libc_call("umount2", mount.encode(), 2)  # MNT_DETACH
