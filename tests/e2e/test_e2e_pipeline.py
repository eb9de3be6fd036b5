"""One deployment pipeline: rollback after renewal, undeploy killed at every write,
a renewal that adds a name, a broken unrelated lineage, services narrowed later.

All with the real certbot against Pebble, real Postfix and Dovecot in the lab.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lab
import pytest
from conftest import REPO, need, once
from lab.accounts import add_mail_user
from lab.dovecot import DovecotLab, write_self_signed
from lab.flows import HOST, OTHER, PORTS, assert_serving, install, issue, leaf, renew, served

from certbot_postfix_tls._internal import certs, dialogues, tls_client, verify
from certbot_postfix_tls._internal.state import State, unfinished_renewals

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

CLI = [sys.executable, "-m", "certbot_postfix_tls"]


def cli(certbot: lab.Certbot, *args: str, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--config-dir", str(certbot.config_dir), *args],
                          capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, **(env or {})})


def key_bodies(certbot: lab.Certbot) -> list[bytes]:
    """The base64 body of every private key certbot issued (archive/*/privkey*.pem)."""
    bodies = []
    for path in (certbot.config_dir / "archive").glob("*/privkey*.pem"):
        lines = path.read_bytes().splitlines()
        bodies.append(b"".join(line for line in lines if not line.startswith(b"-----")))
    return bodies


def assert_no_key_copies(certbot: lab.Certbot) -> None:
    """No private key's bytes anywhere under certbot's work directory (its backups)."""
    for body in key_bodies(certbot):
        for path in (certbot.base / "work").rglob("*"):
            if path.is_file():
                assert body[:64] not in path.read_bytes(), path


def test_rollback_after_renewal_serves_current_certificates(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """Rolling back the last deploy after a renewal keeps every remaining lineage on its
    *current* certificate, and no private key is ever copied into certbot's backups."""
    once(request, "the pipeline does not depend on certbot's version")
    issue(certbot, HOST, OTHER)
    install(certbot, HOST)
    install(certbot, OTHER)
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    renewed = leaf(certbot, HOST)
    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "1")

    state = State.load(str(certbot.config_dir))
    assert list(state.lineages) == [HOST]
    for protocol, port, tls in PORTS:
        assert served(protocol, port, tls, HOST) == renewed, port
        assert served(protocol, port, tls, None) == renewed, port
    assert_no_key_copies(certbot)
    assert not (certbot.config_dir / "postfix-tls" / "lineages" / OTHER).exists()


def test_old_key_copies_are_purged_from_backups(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
) -> None:
    """A checkpoint holding a derived key file (what earlier versions wrote) loses that
    copy at the next install, and still rolls back."""
    once(request, "the pipeline does not depend on certbot's version")
    issue(certbot, HOST)
    install(certbot, HOST)
    checkpoint = next((certbot.base / "work" / "backups").iterdir())
    chain_file = certbot.config_dir / "postfix-tls" / "lineages" / HOST / "key-fullchain.pem"
    paths = (checkpoint / "FILEPATHS").read_text().splitlines()
    (checkpoint / f"key-fullchain.pem_{len(paths)}").write_bytes(chain_file.read_bytes())
    (checkpoint / "FILEPATHS").write_text("\n".join([*paths, str(chain_file)]) + "\n")

    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", HOST)
    assert "removed copies of private keys from 1 checkpoint" in proc.stdout + proc.stderr
    assert_no_key_copies(certbot)
    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "2")
    assert not os.path.exists(State.path(str(certbot.config_dir)))


def test_expand_adds_a_name_everywhere_with_one_reload(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """certbot certonly --expand runs the directory hooks (certbot >= 5.3): the new name is
    served by SNI on 25, 587, 143 and 993, with one reload per service."""
    once(request, "Debian's certbot (2.1, 4.0) runs no directory hooks on certonly")
    issue(certbot, OTHER, HOST)
    install(certbot, HOST)
    install(certbot, OTHER)
    reloads = postfix_lab.log().count("reload -- version")
    dovecot_reloads = dovecot_lab.log().count("SIGHUP received")
    added = "imap.b.example"
    certbot.run("certonly", "-a", "standalone", "--cert-name", OTHER, "--expand",
                "-d", OTHER, "-d", added, *certbot.acme_args())
    time.sleep(1)  # postlogd writes asynchronously
    assert postfix_lab.log().count("reload -- version") == reloads + 1
    assert dovecot_lab.log().count("SIGHUP received") == dovecot_reloads + 1
    for protocol, port, tls in PORTS:
        assert served(protocol, port, tls, added) == leaf(certbot, OTHER), port
    assert added in State.load(str(certbot.config_dir)).lineages[OTHER].names
    assert cli(certbot, "verify").returncode == 0


def test_broken_unrelated_lineage_does_not_roll_back_a_good_deploy(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "the pipeline does not depend on certbot's version")
    issue(certbot, HOST, OTHER)
    install(certbot, HOST)
    install(certbot, OTHER)
    for where in ("live", "archive"):
        subprocess.run(["rm", "-rf", str(certbot.config_dir / where / OTHER)], check=True)
    subprocess.run(["rm", "-rf", str(certbot.config_dir / "postfix-tls" / "lineages" / OTHER)],
                   check=True)
    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", HOST)
    output = proc.stdout + proc.stderr
    assert f"lineage {OTHER} cannot be served" in output
    for protocol, port, tls in PORTS:
        assert served(protocol, port, tls, HOST) == leaf(certbot, HOST), port


def test_services_narrowed_later_keep_dovecot_renewed(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """--postfix-tls-services postfix after a Dovecot deploy: Dovecot stays configured
    and is still reloaded on renewal (never silently left with the old certificate)."""
    once(request, "the pipeline does not depend on certbot's version")
    issue(certbot, HOST)
    install(certbot, HOST)
    proc = certbot.run("install", "-i", "postfix-tls", "--cert-name", HOST,
                       "--postfix-tls-services", "postfix")
    assert "still reloaded on renewal" in proc.stdout + proc.stderr
    assert State.load(str(certbot.config_dir)).dovecot_config
    dovecot_reloads = dovecot_lab.log().count("SIGHUP received")
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    assert dovecot_lab.log().count("SIGHUP received") == dovecot_reloads + 1
    assert served("imap", 993, "implicit", HOST) == leaf(certbot, HOST)


# --- undeploy killed at every write ---------------------------------------------------

# Runs an operation in a child that SIGKILLs itself just before its Nth write: a file
# replaced or removed, or a postconf/postmap that writes, made by the plugin (certbot's
# own log and lock files are not counted). The child is a real `certbot install` or
# `certbot-postfix-tls hook`/`undeploy`; only the kill point is added around it.
KILLER = r"""
import os, shutil, signal, sys
from certbot_postfix_tls._internal import process

target = int(os.environ["KILL_AT"])
count = 0

def by_plugin():
    frame = sys._getframe(2)
    while frame is not None:
        if "certbot_postfix_tls" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False

def tick():
    global count
    count += 1
    if count == target:
        os.kill(os.getpid(), signal.SIGKILL)

def wrap(module, name, test=lambda *a, **k: True):
    real = getattr(module, name)
    def patched(*args, **kwargs):
        if test(*args, **kwargs) and by_plugin():
            tick()
        return real(*args, **kwargs)
    setattr(module, name, patched)

wrap(os, "replace")
wrap(os, "rename")
wrap(os, "unlink")
wrap(shutil, "rmtree")
WRITERS = ("-e", "-X", "-MX", "-PX", "-P", "-M", "-F")
wrap(process, "run", lambda argv, **k: any(a in WRITERS for a in argv))
if os.environ.get("KILL_ENTRY") == "certbot":
    from certbot.main import main
else:
    from certbot_postfix_tls._internal.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _mail_checks(certbot: lab.Certbot, submit: bool) -> None:
    """Postfix and Dovecot accept their configuration and reload; 587 takes AUTH PLAIN."""
    for argv in (["postfix", "check"], ["doveconf", "-x", "base_dir"],
                 ["postfix", "reload"], ["doveadm", "reload"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, (argv, proc.stdout + proc.stderr)
    if submit:
        time.sleep(1)
        swaks = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", "587", "--tls",
             "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "correct horse",
             "--from", f"alice@{HOST}", "--to", "root@localhost", "--timeout", "20"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert swaks.returncode == 0, swaks.stdout + swaks.stderr


def _killed(certbot: lab.Certbot, at: int, argv: list[str],
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` (the plugin's CLI, or certbot's with KILL_ENTRY=certbot) killed just
    before the plugin's write number ``at``."""
    killer = certbot.base / "killer.py"
    killer.write_text(KILLER)
    return subprocess.run(
        [sys.executable, str(killer), *argv], capture_output=True, text=True, timeout=300,
        check=False, env={**certbot.env(), **(env or {}), "KILL_AT": str(at)}, cwd=REPO,
    )


def _undeploy_killed_at_every_write(certbot: lab.Certbot, name: str, remaining: bool) -> int:
    """Kill undeploy at write 1, 2, ... until it completes; after each kill the mail
    system is sound and a plain undeploy finishes the job. Returns the writes seen."""
    at = 1
    while True:
        proc = _killed(certbot, at, ["--config-dir", str(certbot.config_dir), "undeploy",
                                     "--work-dir", str(certbot.base / "work"),
                                     "--cert-name", name])
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return at - 1
        _mail_checks(certbot, submit=remaining)
        # The plain undeploy checks, reloads and verifies by handshake what it finishes.
        again = cli(certbot, "undeploy", "--work-dir", str(certbot.base / "work"),
                    "--cert-name", name)
        assert again.returncode == 0, (at, again.stdout + again.stderr)
        install(certbot, name)  # put it back for the next kill point
        at += 1


def _serving_one_of(name: str, leaves: list[bytes]) -> None:
    """Every TLS port serves one of ``leaves`` for ``name`` (a complete handshake)."""
    for protocol, port, tls in PORTS:
        assert served(protocol, port, tls, name) in leaves, (protocol, port)


def test_install_and_deploy_hook_killed_at_every_write(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """`certbot install` and the deploy hook, SIGKILLed before each of their writes:
    Postfix and Dovecot accept their configuration, reload and serve a valid
    certificate after every kill, and running the operation again (for the hook: the
    post hook, which finishes the renewal it recorded) completes it."""
    once(request, "the kill points are the plugin's writes")
    need("swaks")
    add_mail_user("alice", "correct horse")
    issue(certbot, HOST, OTHER)
    install(certbot, HOST)
    host_leaf = leaf(certbot, HOST)

    at = 1
    while True:  # certbot install --cert-name OTHER, beside HOST
        proc = _killed(certbot, at, certbot.argv("install", "-i", "postfix-tls",
                                                 "--cert-name", OTHER)[3:],
                       {"KILL_ENTRY": "certbot"})
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, proc.stdout + proc.stderr
            break
        _mail_checks(certbot, submit=True)
        _serving_one_of(HOST, [host_leaf])
        install(certbot, OTHER)  # run again, it completes (checked, verified by handshake)
        _serving_one_of(OTHER, [leaf(certbot, OTHER)])
        again = cli(certbot, "undeploy", "--work-dir", str(certbot.base / "work"),
                    "--cert-name", OTHER)
        assert again.returncode == 0, again.stdout + again.stderr
        at += 1
    assert at > 3
    _serving_one_of(OTHER, [leaf(certbot, OTHER)])

    # The deploy hook: each round points live/ at the other archive version, as a
    # renewal does, and kills the hook at the next write.
    renew(certbot, "--no-directory-hooks", "--cert-name", HOST)
    live = certbot.config_dir / "live" / HOST
    versions = [leaf_of(certbot, HOST, v) for v in (1, 2)]
    at, version = 1, 1
    while True:
        for kind in ("cert", "chain", "fullchain", "privkey"):
            link = live / f"{kind}.pem"
            link.unlink()
            link.symlink_to(f"../../archive/{HOST}/{kind}{version}.pem")
        hook_env = {"RENEWED_LINEAGE": str(live)}
        proc = _killed(certbot, at, ["--config-dir", str(certbot.config_dir), "hook",
                                     "deploy"], hook_env)
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, proc.stdout + proc.stderr
            post = cli(certbot, "hook", "post")
            assert post.returncode == 0, post.stdout + post.stderr
            _serving_one_of(HOST, [versions[version - 1]])
            break
        _mail_checks(certbot, submit=True)
        _serving_one_of(HOST, versions)
        if at == 1:  # killed before the renewal was recorded: certbot's log says so
            assert cli(certbot, "hook", "deploy", env=hook_env).returncode == 0
        else:  # recorded: verify says a renewal is waiting (CRITICAL)
            config_dir = str(certbot.config_dir)
            assert unfinished_renewals(config_dir) or State.load(config_dir).pending, at
            assert cli(certbot, "verify").returncode == 2, at
        post = cli(certbot, "hook", "post")
        assert post.returncode == 0, (at, post.stdout + post.stderr)
        _mail_checks(certbot, submit=True)
        _serving_one_of(HOST, [versions[version - 1]])
        assert cli(certbot, "verify").returncode == 0
        at, version = at + 1, 3 - version
    assert at > 3


def leaf_of(certbot: lab.Certbot, name: str, version: int) -> bytes:
    """The DER of the leaf of archive version ``version``."""
    pem = (certbot.config_dir / "archive" / name / f"cert{version}.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def test_undeploy_killed_at_every_write(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, snakeoil_pair: None,
) -> None:
    once(request, "undeploy is the plugin's own command")
    need("swaks")
    add_mail_user("alice", "correct horse")
    issue(certbot, HOST, OTHER)
    before = (subprocess.run(["postconf", "-n"], capture_output=True, text=True).stdout,
              subprocess.run(["postconf", "-M"], capture_output=True, text=True).stdout)
    install(certbot, HOST)
    install(certbot, OTHER)
    _mail_checks(certbot, submit=True)

    writes = _undeploy_killed_at_every_write(certbot, OTHER, remaining=True)
    assert writes >= 3
    assert_serving(certbot, [HOST], default=HOST)

    writes = _undeploy_killed_at_every_write(certbot, HOST, remaining=False)
    assert writes >= 3
    after = (subprocess.run(["postconf", "-n"], capture_output=True, text=True).stdout,
             subprocess.run(["postconf", "-M"], capture_output=True, text=True).stdout)
    assert after == before
    assert not Path("/etc/dovecot/conf.d/99-certbot-postfix-tls.conf").exists()
    assert "#certbot-postfix-tls#" not in Path("/etc/dovecot/conf.d/10-ssl.conf").read_text()


def test_verify_as_an_unprivileged_user(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    """A monitoring user (nobody) gets the same verdict as root on a healthy deployment."""
    once(request, "verify is the plugin's own command")
    issue(certbot, HOST)
    install(certbot, HOST)
    argv = [*CLI, "--config-dir", str(certbot.config_dir), "verify", "--json"]
    as_root = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    as_nobody = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )
    assert as_root.returncode == 0, as_root.stdout + as_root.stderr
    assert as_nobody.returncode == as_root.returncode, as_nobody.stdout + as_nobody.stderr
    root, nobody = json.loads(as_root.stdout), json.loads(as_nobody.stdout)
    assert nobody["status"] == root["status"] == "OK"
    assert ([(e["port"], e["sni"], e["status"]) for e in nobody["endpoints"]]
            == [(e["port"], e["sni"], e["status"]) for e in root["endpoints"]])


def test_operator_sni_table_is_merged_not_replaced(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
) -> None:
    """An SNI table the operator already serves another domain from keeps serving it,
    after a deploy and after a renewal; rollback leaves the table byte for byte."""
    once(request, "the pipeline does not depend on certbot's version")
    foreign = "other.example.net"
    cert, key = "/etc/postfix/other-cert.pem", "/etc/postfix/other-key.pem"
    write_self_signed(cert, key, foreign)
    Path("/etc/postfix/sni.map").write_text(f"{foreign} {key} {cert}\n")
    subprocess.run(["postmap", "-F", "hash:/etc/postfix/sni.map"], check=True)
    postfix_lab.postconf("-e", "tls_server_sni_maps = hash:/etc/postfix/sni.map")
    subprocess.run(["postfix", "reload"], check=True, capture_output=True)
    tables = {p: p.read_bytes() for p in map(Path, ("/etc/postfix/sni.map",
                                                     "/etc/postfix/sni.map.db"))}
    own = verify.ExpectedCert.from_fullchain(cert).leaf_sha256

    def foreign_served() -> list[str]:
        return [hashlib.sha256(served("smtp", port, "starttls", foreign)).hexdigest()
                for port in (25, 587)] + [
                hashlib.sha256(served("smtp", 465, "implicit", foreign)).hexdigest()]

    issue(certbot, HOST)
    install(certbot, HOST, "--postfix-tls-smtps", "yes", "--postfix-tls-services", "postfix")
    value = postfix_lab.postconf("-h", "tls_server_sni_maps").strip()
    assert value.startswith("hash:/etc/postfix/sni.map, ")
    assert foreign_served() == [own] * 3
    for protocol, port, tls in PORTS[:2]:
        assert served(protocol, port, tls, HOST) == leaf(certbot, HOST)
    assert cli(certbot, "verify").returncode == 0

    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    assert foreign_served() == [own] * 3
    assert served("smtp", 25, "starttls", HOST) == leaf(certbot, HOST)

    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "1")
    assert postfix_lab.postconf("-h", "tls_server_sni_maps").strip() == \
        "hash:/etc/postfix/sni.map"
    assert {p: p.read_bytes() for p in tables} == tables


OUT = "out.example.net"


@pytest.fixture
def second_instance(request: pytest.FixtureRequest, postfix_lab: lab.PostfixLab,
                    ) -> Iterator[lab.PostfixLab]:
    """A second Postfix instance made with postmulti, listening on 127.0.0.3."""
    once(request, "the pipeline does not depend on certbot's version")
    subprocess.run(["ip", "addr", "replace", "127.0.0.3/8", "dev", "lo"], check=True)
    for argv in (["postmulti", "-e", "init"], ["postmulti", "-I", "postfix-out", "-e", "create"],
                 ["postmulti", "-i", "postfix-out", "-e", "enable"]):
        subprocess.run(argv, check=True, capture_output=True)
    out = lab.PostfixLab(config_dir="/etc/postfix-out", log_file="/var/log/postfix-out.log",
                         queue_directory="/var/spool/postfix-out")
    out.postconf("-X", "master_service_disable")
    # A certificate of its own before the plugin: the last undeploy gives it back and
    # checks that port 25 still completes a handshake with it.
    cert, key = f"{out.config_dir}/own-cert.pem", f"{out.config_dir}/own-key.pem"
    write_self_signed(cert, key, OUT)
    out.postconf("-e", "inet_interfaces=127.0.0.3", f"maillog_file={out.log_file}",
                 f"myhostname={OUT}", "inet_protocols=ipv4", "smtpd_tls_security_level=may",
                 f"smtpd_tls_cert_file={cert}", f"smtpd_tls_key_file={key}")
    out.start()
    yield out
    out.stop()


def served_at(address: str, name: str | None) -> bytes:
    endpoint = tls_client.Endpoint("x", "smtp", address, 25, "starttls", "25")
    return dialogues.handshake(endpoint, name).leaf_der


def test_two_postfix_instances_each_serve_their_own(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    second_instance: lab.PostfixLab,
) -> None:
    once(request, "the pipeline does not depend on certbot's version")
    issue(certbot, HOST, OUT)
    install(certbot, HOST, "--postfix-tls-services", "postfix")
    install(certbot, OUT, "--postfix-tls-services", "postfix",
            "--postfix-tls-postfix-dir", second_instance.config_dir)
    states = State.load_all(str(certbot.config_dir))
    assert [(s.postfix_dir, sorted(s.lineages)) for s in states] == [
        ("/etc/postfix", [HOST]), ("/etc/postfix-out", [OUT])]

    def check() -> None:
        for name in (None, HOST, OUT):  # each instance serves its own lineage only
            assert served_at("127.0.0.1", name) == leaf(certbot, HOST), name
            assert served_at("127.0.0.3", name) == leaf(certbot, OUT), name

    check()
    reloads = [lab_.log().count("reload -- version") for lab_ in (postfix_lab, second_instance)]
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    time.sleep(1)  # postlogd writes asynchronously
    assert [lab_.log().count("reload -- version")
            for lab_ in (postfix_lab, second_instance)] == [n + 1 for n in reloads]
    check()
    proc = cli(certbot, "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "127.0.0.3" in proc.stdout and "127.0.0.1" in proc.stdout

    undo = cli(certbot, "undeploy", "--work-dir", str(certbot.base / "work"), "--cert-name", OUT)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert [sorted(s.lineages) for s in State.load_all(str(certbot.config_dir))] == [[HOST]]
    assert served_at("127.0.0.1", None) == leaf(certbot, HOST)
