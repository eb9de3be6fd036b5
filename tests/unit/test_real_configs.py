"""The configurations real servers run (issue #18), on fixtures read by the real postconf
and doveconf: warnings that are not errors, IPv6-only and address-bound listeners,
content-filter and PROXY-protocol ports, implicit TLS on 587, an operator's own
Dovecot auth listener, and failure summaries.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from certbot import errors
from conftest import FIXTURES, installed_dovecot_tree

from certbot_postfix_tls._internal import dialogues, tls_client, verify
from certbot_postfix_tls._internal.daemons.dovecot import conftree as dovecot_conftree
from certbot_postfix_tls._internal.daemons.dovecot import doveconf
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix import policy as postfix_policy
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix

SASL = "/var/spool/postfix/private/auth"
CERT = dovecot_plan.CertFiles("/etc/letsencrypt/live/mail/fullchain.pem",
                         "/etc/letsencrypt/live/mail/privkey.pem")


def needs(tool: str) -> None:
    if shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin") is None:
        pytest.skip(f"{tool} is not installed")


def instance(tmp_path: Path, fixture: str, main: str = "", master: str = "") -> Postfix:
    needs("postconf")
    target = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, target)
    # Hermetic: Debian's myorigin = /etc/mailname must not depend on this machine;
    # settings given here replace the fixture's (no "overriding earlier entry").
    lines = (target / "main.cf").read_text().splitlines(keepends=True)
    given = {line.split("=")[0].strip() for line in main.splitlines() if "=" in line}
    lines = [line for line in lines
             if line.split("=")[0].strip() not in given | {"myorigin"}]
    (target / "main.cf").write_text("".join(lines) + "myorigin = $myhostname\n" + main)
    with open(target / "master.cf", "a") as handle:
        handle.write(master)
    return Postfix(str(target))


def endpoint_set(config: postfix_config.PostfixConfig, address: str = "127.0.0.1",
                 ports: list[int] | None = None) -> set[tuple[str, int, str]]:
    return {(e.address, e.port, e.tls) for e in postfix_listeners.endpoints(config, address, ports)}


# --- 1. postconf warnings are notes ---------------------------------------------------------

MUA_SUBMISSION = (
    "submission inet n       -       y       -       -       smtpd\n"
    "  -o syslog_name=postfix/submission\n"
    "  -o smtpd_client_restrictions=$mua_client_restrictions\n"
)


def test_postconf_warnings_are_returned_not_raised(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12", main="policyd-spf_time_limit = 3600\n",
                  master=MUA_SUBMISSION)
    config = pf.read()  # no exception
    warnings = pf.warnings()
    assert any("unused parameter: policyd-spf_time_limit=3600" in w for w in warnings)
    assert any("undefined parameter: mua_client_restrictions" in w for w in warnings)
    assert len(warnings) == len(set(warnings)) == 2  # one line each
    assert all(not w.startswith("postconf") for w in warnings)
    # The plan amends the submission entry and leaves the operator's settings alone.
    plan = postfix_policy.plan_tls(config, _files(), postfix_policy.Options())
    assert not any(p.param == "smtpd_client_restrictions" for p in plan.service_params)
    assert "policyd-spf_time_limit" not in plan.main


def test_what_postconf_refuses_is_still_an_error(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12", main="this line has no equals sign\n")
    with pytest.raises(errors.MisconfigurationError, match=r"main.cf, line \d+"):
        pf.read()


def _files() -> postfix_policy.CertificateFiles:
    return postfix_policy.CertificateFiles(
        chain_file="/etc/letsencrypt/postfix-tls/lineages/mail/key-fullchain.pem",
        fullchain="/etc/letsencrypt/live/mail/fullchain.pem",
        key="/etc/letsencrypt/live/mail/privkey.pem",
    )


# --- 2. IPv6-only hosts and address-bound listeners -------------------------------------

def test_ipv6_only_host_is_checked_on_loopback_v6(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12", main="inet_protocols = ipv6\ninet_interfaces = all\n")
    config = pf.read()
    assert postfix_listeners.inet_families(config) == [6]
    # 127.0.0.1 (the default verify address) is not accepted by an IPv6-only listener.
    assert endpoint_set(config) == {("::1", 25, "starttls")}


# Postfix (postconf -m already) refuses inet_interfaces addresses the machine does not
# have: only loopback addresses are used here, which every machine has.

def test_every_inet_interfaces_value_and_myhostname_expanded(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12", main=(
        "myhostname = localhost\ninet_protocols = all\ninet_interfaces = $myhostname\n"))
    config = pf.read()
    assert config.value("inet_interfaces") == "localhost"  # postconf -x expanded it
    assert postfix_listeners.bound_addresses(config, config.services_on_port(25)[0]) == [
        "127.0.0.1", "::1"]
    six = instance(tmp_path / "6", "debian12", main=(
        "inet_protocols = ipv6\ninet_interfaces = ::1\n"))
    # The default verify address (127.0.0.1) is not accepted: ::1 is used.
    assert endpoint_set(six.read()) == {("::1", 25, "starttls")}
    four = instance(tmp_path / "4", "debian12", main=(
        "inet_protocols = all\ninet_interfaces = [::1], 127.0.0.1\n"))
    config4 = four.read()
    assert postfix_listeners.bound_addresses(config4, config4.services_on_port(25)[0]) == [
        "::1", "127.0.0.1"]  # every value, not just the first
    assert endpoint_set(config4) == {("127.0.0.1", 25, "starttls")}
    assert endpoint_set(config4, "::1") == {("::1", 25, "starttls")}  # it accepts that too
    assert endpoint_set(config4, "198.51.100.1") == {("::1", 25, "starttls")}  # not that


def test_address_bound_services_and_ipv6_names(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12",
                  main="inet_protocols = ipv4, ipv6\ninet_interfaces = loopback-only\n",
                  master="[::1]:465 inet n - y - - smtpd -o smtpd_tls_wrappermode=yes\n"
                         "192.0.2.11:2526 inet n - y - - smtpd\n")
    config = pf.read()
    assert endpoint_set(config, "198.51.100.1") == {
        ("127.0.0.1", 25, "starttls"),  # loopback-only: the IPv4 loopback first
        ("::1", 465, "implicit"),  # [::1]:465 in master.cf
        ("192.0.2.11", 2526, "starttls"),
    }


def test_choose_address_prefers_the_matching_loopback() -> None:
    choose = verify.choose_address
    assert choose(["0.0.0.0", "::"], "127.0.0.1") == "127.0.0.1"
    assert choose(["::"], "127.0.0.1") == "::1"
    assert choose(["::"], "2001:db8::5") == "2001:db8::5"
    assert choose(["192.0.2.1", "127.0.0.1"], "10.0.0.1") == "127.0.0.1"
    assert choose(["192.0.2.1"], "127.0.0.1") == "192.0.2.1"
    assert choose(["0.0.0.0"], "::1") == "127.0.0.1"


@pytest.mark.parametrize(("listen", "expected"), [
    ("::", ["::1"]),
    ("[::]", ["::1"]),
    ("*", ["192.0.2.1"]),
    ("*, ::", ["192.0.2.1"]),
    ("::1", ["::1"]),
    ("127.0.0.1, ::1", ["127.0.0.1", "::1"]),
])
def test_dovecot_listen_values(listen: str, expected: list[str]) -> None:
    text = (FIXTURES / "dovecot23" / "doveconf-endpoints.txt").read_text()
    text = text.replace("listen = *, ::", f"listen = {listen}")
    found = doveconf.endpoints_from_doveconf(text, "192.0.2.1")
    assert sorted({e.address for e in found}) == sorted(expected)
    assert {e.port for e in found} == {143, 993, 110, 995}


def test_verifier_speaks_ipv6() -> None:
    """The raw-socket client connects over AF_INET6 and names the address in brackets."""
    import socket
    import threading

    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server.listen(1)
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"220 ready\r\n")
            conn.recv(1024)
            conn.sendall(b"250-hello\r\n250 SIZE 1000\r\n")
            conn.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    endpoint = tls_client.Endpoint("postfix", "smtp", "::1", port, "starttls", "smtp")
    refused = rf"\[::1\]:{port} .*does not advertise STARTTLS"
    with pytest.raises(tls_client.VerifyError, match=refused):
        dialogues.handshake(endpoint, None, timeout=5)
    thread.join(5)
    server.close()


# --- 3. content-filter, TLS-off and PROXY-protocol ports ---------------------------------

INTERNAL = (
    "127.0.0.1:10025 inet n - n - - smtpd\n"
    "  -o content_filter=\n  -o smtpd_tls_security_level=none\n"
    "127.0.0.1:10027 inet n - n - - smtpd\n  -o content_filter=\n"
    "[::1]:10028 inet n - n - - smtpd\n"
    "10026 inet n - n - - smtpd\n  -o smtpd_upstream_proxy_protocol=haproxy\n"
    "2526 inet n - n - - smtpd\n  -o smtpd_tls_security_level=none\n"
    "127.0.0.1:587 inet n - n - - smtpd\n"
)


def test_internal_and_unverifiable_listeners_are_listed_not_checked(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12", main="inet_protocols = all\n", master=INTERNAL)
    config = pf.read()
    assert {(a, p) for a, p, _ in endpoint_set(config)} == {
        ("127.0.0.1", 25), ("127.0.0.1", 587),  # loopback 587 is still a public port
    }
    unchecked = dict(postfix_listeners.unchecked_endpoints(config))
    off = unchecked["127.0.0.1:10025/inet (port 10025)"]
    assert "TLS is off (-o smtpd_tls_security_level=none" in off
    assert "content filter" in unchecked["127.0.0.1:10027/inet (port 10027)"]
    assert "--postfix-tls-verify-ports" in unchecked["[::1]:10028/inet (port 10028)"]
    assert "PROXY protocol" in unchecked["10026/inet (port 10026)"]
    assert "smtpd_upstream_proxy_protocol=haproxy" in unchecked["10026/inet (port 10026)"]
    assert "TLS is off" in unchecked["2526/inet (port 2526)"]

    # Named explicitly: exactly those ports, internal ones included, never the
    # ones a TLS client cannot talk to.
    chosen = endpoint_set(config, ports=[25, 10027, 10026, 10025, 10028])
    assert {(a, p) for a, p, _ in chosen} == {
        ("127.0.0.1", 25), ("127.0.0.1", 10027), ("::1", 10028)}
    named = dict(postfix_listeners.unchecked_endpoints(config, [25, 10027]))
    assert "not in --postfix-tls-verify-ports" in named["127.0.0.1:587/inet (port 587)"]


def test_postscreen_proxy_protocol_from_main_cf(tmp_path: Path) -> None:
    pf = instance(tmp_path, "custom", main="postscreen_upstream_proxy_protocol = haproxy\n")
    config = pf.read()
    assert 25 not in {p for _, p, _ in endpoint_set(config)}
    why = dict(postfix_listeners.unchecked_endpoints(config))["smtp/inet (port 25)"]
    assert "postscreen_upstream_proxy_protocol = haproxy in" in why


def test_parse_ports() -> None:
    assert postfix_listeners.parse_ports("auto") == [] and postfix_listeners.parse_ports("") == []
    assert postfix_listeners.parse_ports("25, 587,submissions,25") == [25, 587, 465]
    with pytest.raises(errors.PluginError, match="not a port"):
        postfix_listeners.parse_ports("25,nope")


# --- 4. implicit TLS on 587; an operator's Dovecot auth listener -------------------------

def test_wrappermode_on_587_is_a_warning_naming_the_setting(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12", master=(
        "submission inet n - y - - smtpd\n  -o smtpd_tls_wrappermode=yes\n"))
    config = pf.read()
    plan = postfix_policy.plan_tls(config, _files(), postfix_policy.Options())
    [warning] = [w for w in plan.warnings if "wrappermode" in w]
    assert "-o smtpd_tls_wrappermode=yes" in warning and "465" in warning
    assert "RFC 6409" in warning and "postconf -PX submission/inet/smtpd_tls_wrappermode" in warning
    # The plugin does not silently flip it; the port is verified as what it is.
    assert not any(p.param == "smtpd_tls_wrappermode" for p in plan.service_params)
    assert ("127.0.0.1", 587, "implicit") in endpoint_set(config)


MODOBOA_AUTH = """
service auth {
  unix_listener /var/spool/postfix/private/auth {
    mode = 0666
    user = postfix
    group = postfix
  }
}
"""


def _dovecot_tree(tmp_path: Path, extra: str) -> Path:
    conf = tmp_path / "dovecot"
    shutil.copytree(FIXTURES / "dovecot23", conf)
    with (conf / "conf.d" / "10-master.conf").open("a") as handle:
        handle.write(extra)
    return conf


def test_operator_auth_listener_is_kept_not_redeclared(tmp_path: Path) -> None:
    conf = _dovecot_tree(tmp_path, MODOBOA_AUTH)
    plugin_file = str(conf / "conf.d" / dovecot_plan.DEBIAN_PLUGIN_NAME)
    tree = dovecot_conftree.read_config(str(conf / "dovecot.conf"), [plugin_file])
    where = dovecot_plan.declared_auth_listener(tree, SASL, plugin_file)
    assert where is not None and where[0].endswith("10-master.conf")
    plan = dovecot_plan.plan_config(tree, (2, 3, 19), plugin_file, None, CERT, sasl_listener=SASL)
    assert "service auth" not in plan.writes[plugin_file]
    assert any("kept the auth listener" in note for note in plan.notes)

    # Without the operator's listener the plugin declares its own (0660).
    plain = dovecot_conftree.read_config(str(_dovecot_tree(tmp_path / "b", "") / "dovecot.conf"))
    assert dovecot_plan.declared_auth_listener(plain, SASL, plugin_file) is None

    # What the installed Dovecot (2.3 or 2.4) makes of it: the operator's 0666 stays in effect.
    real_conf, version = installed_dovecot_tree(tmp_path / "real")
    with (real_conf.parent / "conf.d" / "10-master.conf").open("a") as handle:
        handle.write(MODOBOA_AUTH)
    real_plugin = str(real_conf.parent / "conf.d" / dovecot_plan.DEBIAN_PLUGIN_NAME)
    real = dovecot_plan.plan_config(dovecot_conftree.read_config(str(real_conf), [real_plugin]),
                                    version, real_plugin, None, CERT, sasl_listener=SASL)
    assert "service auth" not in real.writes[real_plugin]
    Path(real_plugin).write_text(real.writes[real_plugin])
    proc = subprocess.run(["doveconf", "-c", str(real_conf), "service/auth"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    auth = doveconf.parse_doveconf(proc.stdout).children[0][1]
    listeners = dict(auth.children)
    assert listeners[f"unix_listener {SASL}"].settings["mode"] == "0666"


def test_relative_and_24_path_listeners(tmp_path: Path) -> None:
    conf = _dovecot_tree(tmp_path, "base_dir = /var/spool/postfix\nservice auth {\n"
                                   "  unix_listener private/auth {\n    mode = 0660\n  }\n}\n")
    tree = dovecot_conftree.read_config(str(conf / "dovecot.conf"))
    assert dovecot_plan.declared_auth_listener(tree, SASL, "/nowhere") is not None
    conf24 = _dovecot_tree(tmp_path / "c", "service auth {\n  unix_listener postfix-auth {\n"
                                           f"    path = {SASL}\n  }}\n}}\n")
    tree24 = dovecot_conftree.read_config(str(conf24 / "dovecot.conf"))
    assert dovecot_plan.declared_auth_listener(tree24, SASL, "/nowhere") is not None


# --- 5. failure summaries --------------------------------------------------------------------

def _result(endpoint: tls_client.Endpoint, sni: str | None, message: str, kind: str,
            status: str = "CRITICAL") -> verify.EndpointResult:
    return verify.EndpointResult(
        service=endpoint.service, address=endpoint.address, port=endpoint.port,
        tls=endpoint.tls, sni=sni, status=status, served_sha256=None,
        expected_sha256="0" * 64, chain_complete=None, name_matches=None, days_left=None,
        message=message, kind=kind, endpoint=endpoint)


def test_summary_groups_sni_and_names_the_cause_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    now = datetime.now() - timedelta(seconds=1)  # syslog stamps are local time
    stamp = now.strftime("%b %d %H:%M:%S")
    log.write_text(
        "Jan 01 00:00:01 mail postfix/smtpd[7]: warning: cannot get RSA private key from file"
        ' "/etc/ssl/private/old.key": disabling TLS support\n'  # too old to be the cause
        f"{stamp} mail postfix/smtpd[41]: warning: cannot get RSA private key from file "
        '"/etc/letsencrypt/x/key-fullchain.pem": disabling TLS support\n'
        f"{stamp} mail postfix/smtpd[41]: warning: TLS library problem: error:0A080002\n"
        f"{stamp} mail postfix/smtpd[41]: connect from localhost[127.0.0.1]\n"
    )
    smtp = tls_client.Endpoint("postfix", "smtp", "127.0.0.1", 25, "starttls", "smtp",
                               setting="smtpd_tls_chain_files in /etc/postfix/main.cf",
                               log_file=str(log), advice=postfix_config.ADVICE)
    sub = tls_client.Endpoint("postfix", "smtp", "127.0.0.1", 587, "starttls", "submission",
                              setting="smtpd_tls_chain_files in /etc/postfix/main.cf",
                              log_file=str(log), advice=postfix_config.ADVICE)
    where = "127.0.0.1:25 (postfix smtp)"
    refused = (f"{where} answered STARTTLS with '454 4.7.0 TLS not available due to local "
               "problem' instead of 220.")
    results = [
        _result(smtp, None, refused, "starttls-refused"),
        _result(smtp, "mail.example.org", refused, "starttls-refused"),
        _result(smtp, "mx.example.org", refused, "starttls-refused"),
        _result(sub, "mail.example.org",
                "Nothing listens on 127.0.0.1:587 (postfix submission): connection refused"
                " - is the service running and listening there?", "refused"),
        _result(sub, "mail.example.org", "fine", "ok", status="OK"),
    ]
    lines = verify.summarize(results)
    assert len(lines) == 2
    first = lines[0]
    assert first.startswith("port 25, 127.0.0.1:25 (postfix smtp), without SNI and with SNI "
                            "mail.example.org, mx.example.org: answered STARTTLS with '454")
    assert 'log says: cannot get RSA private key from file "/etc/letsencrypt/x/' in first
    assert "decided by smtpd_tls_chain_files in /etc/postfix/main.cf" in first
    assert "usually" not in first
    assert lines[1].startswith("port 587, 127.0.0.1:587 (postfix submission), with SNI "
                               "mail.example.org: nothing listens: connection refused")
    assert "private key" not in lines[1]  # no cause guessed where none was shown

    # Without a log file, no cause is invented.
    quiet = tls_client.Endpoint("postfix", "smtp", "127.0.0.1", 25, "starttls", "smtp",
                                advice=postfix_config.ADVICE)
    [line] = verify.summarize([_result(quiet, None, refused, "starttls-refused")])
    assert "private key" not in line and "maillog_file" in line


def test_myhostname_is_read_expanded(tmp_path: Path) -> None:
    pf = instance(tmp_path, "debian12",
                  main="mydomain = example.org\nmyhostname = mail.$mydomain\n")
    assert pf.read().value("myhostname") == "mail.example.org"
