"""A real Dovecot in the lab: deploy, reload, a second instance, and Dovecot 2.4.

Debian 12's Dovecot runs in the lab's private namespace; Dovecot 2.4 runs from a
Debian 13 chroot named by DOVECOT24_ROOT (.ci/heavy prepares it: second tier).
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
from conftest import need, need_lab
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lab.dovecot import installed_version

from certbot_postfix_tls._internal import dialogues, process
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.dovecot.plan import CertFiles
from certbot_postfix_tls._internal.tls_client import Endpoint

LE = CertFiles("/etc/letsencrypt/live/mail.a.example/fullchain.pem",
               "/etc/letsencrypt/live/mail.a.example/privkey.pem")
SASL = "/var/spool/postfix/private/auth"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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
    return dialogues.handshake(endpoint, sni).leaf_der


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
    plan = dv.plan_files(first.files, sasl_listener=SASL, sni=[(["mail.b.example"], other.files)])
    dv.apply(plan)
    dv.check()
    dovecot_lab.start()
    assert dv.running()

    endpoints = dv.effective_endpoints("127.0.0.1")
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
    dv.apply(dv.plan_files(second.files, sasl_listener=SASL,
                           sni=[(["mail.b.example"], other.files)]))
    dv.reload()
    wait_served(endpoints, second.der)
    assert dv.master_pid() == pid

    # A plan pointing at a missing file fails the check; reload refuses, old cert stays.
    broken = CertFiles(str(tmp_path / "gone/fullchain.pem"), str(tmp_path / "gone/privkey.pem"))
    dv.apply(dv.plan_files(broken))
    with pytest.raises(errors.MisconfigurationError, match="gone/fullchain.pem"):
        dv.check()
    with pytest.raises(errors.MisconfigurationError, match="gone/fullchain.pem"):
        dv.reload()
    assert all(served(e) == second.der for e in endpoints)

    # What a rollback restores: the stock files, byte for byte, minus the plugin's file.
    os.unlink(dv.plugin_file)
    for path in plan.writes:
        if path in before:
            Path(path).write_text(dovecot_plan.uncomment(Path(path).read_text()))
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
        dv.plan_files(LE)


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
    dv.apply(dv.plan_files(first.files))
    alt.start()
    assert dv.running() and dv.base_dir() == "/run/dovecot-alt"
    endpoints = dv.effective_endpoints("127.0.0.1")
    assert sorted(e.port for e in endpoints) == sorted(ports.values())
    wait_served(endpoints, first.der)
    pid = dv.master_pid()
    dv.apply(dv.plan_files(second.files))
    dv.reload()
    wait_served(endpoints, second.der)
    assert dv.master_pid() == pid
    alt.stop()
    assert not dv.running()
    with pytest.raises(errors.MisconfigurationError, match="not running"):
        dv.reload()


@pytest.mark.tier2
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
        plan = dv.plan_files(inner[0])
        assert "ssl_server_cert_file = /etc/lab-a/fullchain.pem" in plan.writes[dv.plugin_file]
        dv.apply(plan)
        dv.check()
        subprocess.run(["chroot", root, "dovecot"], check=True, timeout=30,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        lab.wait_for_port(143)
        endpoints = dv.effective_endpoints("127.0.0.1")
        assert {(e.protocol, e.port, e.tls) for e in endpoints} == {
            ("imap", 143, "starttls"), ("imap", 993, "implicit"),
            ("pop3", 110, "starttls"), ("pop3", 995, "implicit"),
        }
        wait_served(endpoints, pairs[0].der)
        master = pid()
        dv.apply(dv.plan_files(inner[1]))
        assert dv.plan_files(inner[1]).empty
        dv.reload()
        wait_served(endpoints, pairs[1].der)
        assert pid() == master
    finally:
        master = pid()
        if master is not None:
            lab.stop_pid(master)
        for mount in reversed(mounts):
            lab._libc_call("umount2", mount.encode(), 2)  # MNT_DETACH
