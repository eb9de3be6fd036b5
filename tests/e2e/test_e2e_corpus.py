"""The corpus (tests/corpus/*): configurations other mail-server projects install, each
deployed, renewed and rolled back by real certbot against Pebble, Postfix and Dovecot
running with it in the lab.

Each entry either deploys — ``postfix check`` clean, only the settings the README lists
changed in main.cf, every master.cf ``-o`` option the entry had still there (587/465
may gain the README's), every public TLS port serving the new certificate before and
after a renewal, and a rollback that restores main.cf, master.cf and every Dovecot file
byte for byte — or refuses in one sentence naming the setting, changing nothing.
What each entry is, where it comes from and how it was adapted: its SOURCE.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lab
import pytest
from conftest import need, once
from lab import flows, plans
from lab.dovecot import DovecotLab, installed_version, write_self_signed

from certbot_postfix_tls._internal import certs, dialogues, tls_client
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

NAME = lab.LAB_HOSTNAME
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
ENTRIES = sorted(p.name for p in CORPUS.iterdir() if (p / "SOURCE.md").is_file())
SNAKEOIL_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
# Settings Dovecot 2.4 no longer knows (it renamed them: ssl_server_cert_file, ...).
DOVECOT_23_ONLY = re.compile(r"^\s*(ssl_cert|ssl_key|ssl_dh)\s*=", re.MULTILINE)

# main.cf parameters the README says a deploy may set.
README_MAIN = {
    "smtpd_tls_chain_files", "tls_server_sni_maps", "smtpd_tls_cert_file", "smtpd_tls_key_file",
    "smtpd_tls_eccert_file", "smtpd_tls_eckey_file", "smtpd_tls_dcert_file",
    "smtpd_tls_dkey_file", "smtpd_tls_security_level", "smtp_tls_security_level",
    "smtpd_tls_session_cache_database", "smtp_tls_session_cache_database",
    "smtpd_tls_loglevel",
}
# master.cf -o parameters it may set (or strengthen) on 587 and 465.
README_SUBMISSION = {
    "syslog_name", "smtpd_tls_security_level", "smtpd_tls_auth_only", "smtpd_relay_restrictions",
    "smtpd_tls_wrappermode", "smtpd_sasl_auth_enable", "smtpd_sasl_type", "smtpd_sasl_path",
}
PORTS = {25: ("smtp", "starttls"), 465: ("smtp", "implicit"), 587: ("smtp", "starttls"),
         143: ("imap", "starttls"), 993: ("imap", "implicit"), 110: ("pop3", "starttls"),
         995: ("pop3", "implicit")}


@dataclass
class Spec:
    """The ``- key: value`` lines at the top of an entry's SOURCE.md."""

    expect: str = "deploy"  # or "refuse: <words of the one sentence>"
    options: list[str] = field(default_factory=list)
    ports: list[tuple[int, str]] = field(default_factory=list)  # public TLS ports, checked
    warning: str = ""  # text the deploy output must contain (a WARNING it should give)

    @classmethod
    def load(cls, entry: str) -> Spec:
        spec = cls()
        for line in (CORPUS / entry / "SOURCE.md").read_text().splitlines():
            match = re.match(r"^- (expect|options|ports|warning): (.*)$", line)
            if not match:
                continue
            key, value = match.groups()
            if key == "options":
                spec.options = value.split()
            elif key == "ports":
                spec.ports = [(int(p.split("/")[0]), p.split("/")[1]) for p in value.split()]
            else:
                setattr(spec, key, value.strip().strip("`"))
        return spec


def snapshot() -> dict[str, bytes]:
    return {"main.cf": Path("/etc/postfix/main.cf").read_bytes(),
            "master.cf": Path("/etc/postfix/master.cf").read_bytes(),
            **{f"dovecot/{k}": v for k, v in lab.file_tree("/etc/dovecot").items()}}


def service_options(postfix_lab: lab.PostfixLab) -> dict[str, dict[str, str]]:
    """master.cf ``-o`` options by service (``postconf -P``)."""
    result: dict[str, dict[str, str]] = {}
    for line in postfix_lab.postconf("-P").splitlines():
        key, _, value = line.partition(" = ")
        service, _, param = key.rpartition("/")
        result.setdefault(service, {})[param] = value
    return result


def service_ports(postfix_lab: lab.PostfixLab) -> dict[str, int]:
    ports = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465}
    result = {}
    for line in postfix_lab.postconf("-M").splitlines():
        name, kind = line.split()[:2]
        if kind == "inet":
            port = name.rpartition(":")[2]
            result[f"{name}/inet"] = int(port) if port.isdigit() else ports.get(port, 0)
    return result


def leaf_of(certbot: lab.Certbot) -> bytes:
    pem = (certbot.config_dir / "live" / NAME / "fullchain.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def assert_served(certbot: lab.Certbot, spec: Spec) -> None:
    expected = leaf_of(certbot)
    for port, tls in spec.ports:
        protocol = PORTS[port][0] if port in PORTS else "smtp"
        endpoint = tls_client.Endpoint("corpus", protocol, "127.0.0.1", port, tls, str(port))
        for sni in (None, NAME):
            assert dialogues.handshake(endpoint, sni).leaf_der == expected, (port, sni)
    report = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir),
         "verify", "--json"], capture_output=True, text=True, timeout=300, check=False)
    endpoints = json.loads(report.stdout)["endpoints"]
    assert report.returncode == 0, [e for e in endpoints if e["status"] != "OK"]
    assert {port for port, _ in spec.ports} <= {e["port"] for e in endpoints}


@pytest.fixture
def snakeoil() -> Iterator[None]:
    """Debian's snakeoil pair, which most entries name (package ssl-cert makes it);
    removed again when this test made it (other tests need it absent)."""
    made = [path for path in (SNAKEOIL_CERT, SNAKEOIL_KEY) if not os.path.exists(path)]
    if made:
        write_self_signed(SNAKEOIL_CERT, SNAKEOIL_KEY, "localhost")
    yield
    for path in made:
        Path(path).unlink(missing_ok=True)


def install_entry(entry: str, postfix_lab: lab.PostfixLab, dovecot_config: DovecotLab) -> None:
    """The entry's main.cf/master.cf (lab addresses and log applied) and its Dovecot files
    over Debian's stock tree; both daemons started."""
    postfix_lab.stop()
    source = CORPUS / entry
    postfix_lab.install_config((source / "main.cf").read_text(),
                               (source / "master.cf").read_text())
    if "postlog/unix-dgram" not in postfix_lab.postconf("-M"):
        # The lab logs through maillog_file, which needs postlogd (a container logs to
        # stdout, a host to syslog): the one service added to every entry.
        postfix_lab.postconf("-M", "postlog/unix-dgram="
                             "postlog unix-dgram n - n - 1 postlogd")
    dovecot_config.install_config(snakeoil=True)
    overlay = source / "dovecot"
    for path in sorted(overlay.rglob("*")) if overlay.is_dir() else []:
        if path.is_file():
            target = Path(dovecot_config.config_dir, path.relative_to(overlay))
            target.parent.mkdir(parents=True, exist_ok=True)
            text = path.read_text()
            if target.name == "dovecot.conf":  # replaced: the lab's address and log again
                text += dovecot_config._lab_settings()
            target.write_text(text)
    dovecot_config.start()
    try:
        postfix_lab.start()
    except lab.process.errors.Error as exc:
        raise AssertionError(f"{exc}\n{postfix_lab.log()[-3000:]}") from exc


def dovecot_23_file(entry: str) -> str:
    """The entry's first Dovecot file that only Dovecot 2.3 reads ("" when none does)."""
    overlay = CORPUS / entry / "dovecot"
    for path in sorted(overlay.rglob("*")) if overlay.is_dir() else []:
        if path.is_file() and DOVECOT_23_ONLY.search(path.read_text()):
            return str(path.relative_to(CORPUS))
    return ""


def doctor_findings(certbot: lab.Certbot) -> list[dict[str, str]]:
    """What ``certbot-postfix-tls doctor --json`` found."""
    proc = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir),
         "doctor", "--json"], capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(proc.stdout)
        findings: list[dict[str, str]] = report["checks"] + [
            {"name": f"endpoint {e.get('port')}", **e} for e in report["endpoints"]]
    except (ValueError, KeyError):
        raise AssertionError(proc.stdout + proc.stderr) from None
    assert "Warning" not in proc.stderr, proc.stderr  # no library warning leaks
    return findings


@pytest.mark.parametrize("entry", ENTRIES)
def test_corpus_entry(
    request: pytest.FixtureRequest, entry: str, certbot: lab.Certbot,
    postfix_lab: lab.PostfixLab, dovecot_config: DovecotLab | None, snakeoil: None,
) -> None:
    why = "the corpus exercises configurations, not certbot versions"
    once(request, why)
    if "[debian-" in request.node.name:  # once() looks for "[debian]": ids here are "debian-X"
        pytest.skip(f"runs with the newest certbot only: {why}")
    need("dovecot")
    assert dovecot_config is not None
    only_23 = dovecot_23_file(entry)
    if only_23 and installed_version() >= (2, 4):
        pytest.skip(f"{only_23} is written for Dovecot 2.3, as the project ships it "
                    "(ssl_cert/ssl_key): the installed Dovecot 2.4 refuses those settings")
    spec = Spec.load(entry)
    install_entry(entry, postfix_lab, dovecot_config)
    before = snapshot()
    main_before = postfix_config.parse_postconf(postfix_lab.postconf("-n"))
    options_before = service_options(postfix_lab)

    proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                       *certbot.acme_args(), *spec.options, check=False)
    output = proc.stdout + proc.stderr
    assert "rolled back" not in output, output

    if spec.expect.startswith("refuse"):
        assert proc.returncode != 0
        assert spec.expect.partition(":")[2].strip() in output, output
        assert snapshot() == before
        return

    if proc.returncode != 0:
        log = certbot.base / "logs" / "letsencrypt.log"
        trace = log.read_text()[-4000:] if log.exists() else ""
        raise AssertionError(f"{output}\n{trace}")
    if spec.warning:
        assert spec.warning in output, output
    check = lab.process.run(["postfix", "check"], what="postfix check", check=False)
    assert check.returncode == 0 and "fatal" not in check.stderr, check.stderr

    main_after = postfix_config.parse_postconf(postfix_lab.postconf("-n"))
    changed = {k for k in main_before.keys() | main_after.keys()
               if main_before.get(k) != main_after.get(k)}
    assert changed <= README_MAIN, changed - README_MAIN
    options_after = service_options(postfix_lab)
    ports = service_ports(postfix_lab)
    for service, options in options_before.items():
        for param, value in options.items():
            if ports.get(service) in (465, 587) and param in README_SUBMISSION:
                continue
            assert options_after.get(service, {}).get(param) == value, (service, param)
    assert_served(certbot, spec)
    # After a deploy doctor raises no false alarm: CRITICAL only where clients fail
    # (ISPConfig's implicit TLS on 587, which the deploy kept with a WARNING).
    critical = [f for f in doctor_findings(certbot) if f["status"] == "CRITICAL"
                and not (entry == "ispconfig-setup" and f["name"] == "submission-wrappermode")]
    assert critical == [], critical

    old = leaf_of(certbot)
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    assert leaf_of(certbot) != old
    assert_served(certbot, spec)

    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "1")
    after = snapshot()
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == set()


# Three entries unlike each other (Dovecot's SQL and sieve setup, a box's own master.cf
# services, a container's), where `plan` must show what the install then does.
PLANNED = ("iredmail", "mail-in-a-box", "mailcow")


@pytest.mark.parametrize("entry", PLANNED)
def test_corpus_entry_plan(
    request: pytest.FixtureRequest, entry: str, certbot: lab.Certbot,
    postfix_lab: lab.PostfixLab, dovecot_config: DovecotLab | None, snakeoil: None,
) -> None:
    """`plan` on the entry: nothing changed, then exactly what the install changes, its
    diffs patching the entry's files into the installed ones; afterwards no changes."""
    why = "plan runs the installer's own code on the corpus, not certbot versions"
    once(request, why)
    if "[debian-" in request.node.name:
        pytest.skip(f"runs with the newest certbot only: {why}")
    need("dovecot")
    assert dovecot_config is not None
    spec = Spec.load(entry)
    install_entry(entry, postfix_lab, dovecot_config)
    flows.issue(certbot, NAME)
    args = ["--cert-name", NAME, *spec.options]
    plans.assert_plan_is_what_happens(
        certbot, ["plan", *args],
        lambda: certbot.run("install", "-i", "postfix-tls", *args))
    assert_served(certbot, spec)
    again = flows.run_cli(certbot, "plan", *args)
    assert again.returncode == 0 and again.stdout.strip().endswith("no changes"), again.stdout
