"""Tests for certbot_postfix_tls._internal.doctor without a mail server: the parsers of
what administrators write, the order of the checks, and the report's shape.

Unit tests: no root, no lab. ``test_e2e_doctor.py`` runs doctor on real servers.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from certbot_postfix_tls._internal import cli, daemons, doctor
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.doctor import protocols, registry, restart_hooks
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.state import State
from certbot_postfix_tls._internal.tls_client import Advice

# --- the parsers, on the text administrators write ----------------------------------------


def test_restart_commands_in_hooks() -> None:
    script = ("#!/bin/sh\n# systemctl restart postfix (a comment)\n"
              "systemctl reload postfix && /usr/bin/systemctl --quiet restart dovecot.service\n"
              "service postfix restart; /etc/init.d/dovecot stop\n"
              "postfix -c /etc/postfix-out stop || true\nFOO=1 sudo systemctl restart nginx\n")
    assert [(command, sorted(daemons)) for command, daemons in
            restart_hooks.restart_commands(script)] == [
        ("/usr/bin/systemctl --quiet restart dovecot.service", ["dovecot"]),
        ("service postfix restart", ["postfix"]),
        ("/etc/init.d/dovecot stop", ["dovecot"]),
        ("postfix -c /etc/postfix-out stop", ["postfix"]),
    ]


class _OtherDaemon:
    """A third daemon, as far as restart hooks care: its name and its advice."""

    name = "other"
    advice = Advice(display="Other", reload="otherctl reload", units=("other",),
                    stop_commands=("otherctl stop",))


def test_restart_hook_fix_is_each_daemons_reload(tmp_path: Path) -> None:
    """The units, stop commands and reload command of every registered daemon."""
    hook = tmp_path / "renewal-hooks" / "deploy" / "restart-mail"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\nsystemctl restart postfix@-.service dovecot\n"
                    "postfix abort\ndoveadm stop\nsystemctl restart other.service\n"
                    "otherctl stop\n")
    hook.chmod(0o755)
    context = Context(str(tmp_path), State(), "127.0.0.1", [])
    with daemons.register(_OtherDaemon):
        [finding] = restart_hooks.hook_file_checks(context)
    assert finding.status == "WARNING"
    fixes = finding.message.split("; fix: ")[1]
    assert fixes.startswith(
        "replace `systemctl restart postfix@-.service dovecot` by "
        "`postfix reload; doveadm reload`, replace `postfix abort` by `postfix reload`, "
        "replace `doveadm stop` by `doveadm reload`, "
        "replace `systemctl restart other.service` by `otherctl reload`, "
        "replace `otherctl stop` by `otherctl reload` in ")
    assert [sorted(d) for _, d in restart_hooks.restart_commands(hook.read_text())] == [
        ["dovecot", "postfix"], ["postfix"], ["dovecot"]]


def test_postfix_protocol_lists() -> None:
    enabled = protocols.postfix_protocols
    assert enabled(">=TLSv1.2") == {"TLSv1.2", "TLSv1.3"}
    assert enabled("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1") == {"TLSv1.2", "TLSv1.3"}
    assert enabled("!SSLv2:!SSLv3:!TLSv1.2:!TLSv1.3") == {"TLSv1", "TLSv1.1"}
    assert enabled("TLSv1") == {"TLSv1"}
    assert enabled(">=TLSv1 <=TLSv1.1") == {"TLSv1", "TLSv1.1"}
    assert enabled("") == set(protocols.PROTOCOL_ORDER)


def test_value_in_force_for_a_service() -> None:
    """A -o override wins, with $name / ${name} from main.cf (expanded values first)."""
    service = postfix_config.MasterService.parse(
        "submission inet n - y - - smtpd -o smtpd_tls_cert_file=${certs}/sub.pem "
        "-o smtpd_tls_key_file=$missing/key.pem")
    config = postfix_config.PostfixConfig(
        main={"certs": "/raw", "smtpd_tls_cert_file": "/main.pem"}, explicit={},
        services=[service], map_types=set(), expanded={"certs": "/etc/certs"})
    assert config.in_force(service, "smtpd_tls_cert_file") == ("/etc/certs/sub.pem", True)
    assert config.in_force(service, "smtpd_tls_key_file") == ("$missing/key.pem", True)
    assert config.in_force(None, "smtpd_tls_cert_file") == ("/main.pem", False)
    assert config.in_force(service, "smtpd_tls_auth_only") == ("", False)


# --- the registry --------------------------------------------------------------------------


def test_every_check_takes_the_context() -> None:
    for check in registry.CHECKS:
        [parameter] = inspect.signature(check).parameters.values()
        assert parameter.annotation in (Context, "Context"), check
    assert len(set(registry.CHECKS)) == len(registry.CHECKS)


def test_plugin_checks_skip_without_a_deployment(tmp_path: Path) -> None:
    """Nothing deployed: one "deployed" line, and the plugin's own checks say nothing."""
    context = Context(str(tmp_path), State(), "127.0.0.1", [])
    found = [f for check in registry.CHECKS[:6] for f in check(context)]
    assert [(f.name, f.status) for f in found] == [("deployed", "OK")]
    assert "not deployed by postfix-tls" in found[0].message


def test_run_without_servers(tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No Postfix and no Dovecot: each is one sentence, and doctor still runs through."""
    monkeypatch.setenv("PATH", str(tmp_path))  # neither postconf nor doveconf
    results, found = doctor.run(str(tmp_path), dovecot_config=str(tmp_path / "dovecot.conf"))
    assert results == []
    names = [f.name for f in found]
    assert names[0] == "deployed" and "key-exposure" in names
    assert {f.status for f in found if f.name in ("postfix", "dovecot")} == {"UNKNOWN"}


def test_a_check_is_one_function_and_one_registry_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Adding a check takes nothing but the function and its line in ``CHECKS``: doctor
    runs it with the context and reports its findings, in the JSON report too."""
    seen: list[Context] = []

    def extra_checks(context: Context) -> list[Finding]:
        seen.append(context)
        return [Finding("extra", "WARNING", f"checked {context.config_dir}; fix: nothing")]

    monkeypatch.setattr(registry, "CHECKS", (*registry.CHECKS, extra_checks))
    code = cli.main(["--config-dir", str(tmp_path), "doctor", "--json",  # no servers
                     "--postfix-dir", str(tmp_path / "postfix"),
                     "--dovecot-config", str(tmp_path / "dovecot.conf")])
    report = json.loads(capsys.readouterr().out)
    assert len(seen) == 1 and seen[0].config_dir == str(tmp_path)
    assert report["checks"][-1] == {"name": "extra", "status": "WARNING",
                                    "message": f"checked {tmp_path}; fix: nothing"}
    assert report["summary"].endswith("look at: postfix, dovecot, extra")
    assert code == 3  # UNKNOWN: neither Postfix nor Dovecot could be examined


# --- the report ----------------------------------------------------------------------------


def test_report_keeps_its_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli._report("WARNING", "1 of 2 checks OK", [],
                       [Finding("a", "OK", "fine"), Finding("b", "WARNING", "fix it")], True)
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["status", "summary", "endpoints", "checks"]
    assert report["checks"][1] == {"name": "b", "status": "WARNING", "message": "fix it"}


# --- certificates that break RFC 5280 ------------------------------------------------------


def _negative_serial_der() -> bytes:
    """A certificate whose serial number is -1 (cryptography refuses to build one, and
    still parses one with a warning): serial 1 rewritten in the DER."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.org")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    version_and_serial = bytes.fromhex("a003020102020101")
    assert der.count(version_and_serial) == 1
    return der.replace(version_and_serial, bytes.fromhex("a0030201020201ff"))


def test_negative_serial_is_a_finding_not_a_library_warning(tmp_path: Path) -> None:
    import warnings

    from certbot_postfix_tls._internal import certs, dialogues, tls_client
    from certbot_postfix_tls._internal.doctor import certificates
    from certbot_postfix_tls._internal.doctor.context import Probe

    der = _negative_serial_der()
    context = Context(str(tmp_path), State(), "127.0.0.1", [])
    endpoint = tls_client.Endpoint("dovecot", "imap", "127.0.0.1", 993, "implicit", "imaps")
    context.probes = [Probe(endpoint, shake=dialogues.Handshake(der, [der], [], []))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning on the way fails the test
        assert "(-1)" in str(certs.rfc5280_problem(certs.load_der(der)))
        found = certificates.rfc5280_checks(context)
        assert [f.name for check in registry.CHECKS if check is certificates.rfc5280_checks
                for f in check(context)] == ["rfc5280"]
    [finding] = found
    assert finding.status == "WARNING"
    assert finding.message.startswith("port 993 (dovecot imaps) serves ")
    assert "serial number (-1) is not positive" in finding.message and "fix: " in finding.message
