"""Other distributions' layouts: RHEL/Fedora's Dovecot tree, FreeBSD's /usr/local/etc and
``pw groupadd``.

The RHEL tree is Debian's pristine /usr/share/dovecot (the same upstream example
configuration RHEL and Fedora ship: ``!include conf.d/*.conf``, ``!include_try
local.conf``) with the lines those packages set differently (as their ``doveconf -n``
shows): in conf.d/10-ssl.conf ``ssl = required``, ``ssl_cert =
</etc/pki/dovecot/certs/dovecot.pem``, ``ssl_key = </etc/pki/dovecot/private/dovecot.pem``,
``ssl_cipher_list = PROFILE=SYSTEM`` and no ``ssl_dh``. One adaptation: the cipher list
is commented out, Debian's OpenSSL has no crypto-policies ``PROFILE=SYSTEM``. Dovecot is
*started* with it (Debian's binary), then certbot deploys, renews and rolls back. With
Debian 13's Dovecot 2.4 the same changes are made to 2.4's tree: the same paths in
``ssl_server_cert_file``/``ssl_server_key_file``, and 2.4 has no ``ssl_dh``.

FreeBSD cannot run here: its layout (dovecot.conf under /usr/local/etc/dovecot, no
/etc/dovecot) is reproduced in the lab on a private tmpfs over /usr/local/etc, and
``pw`` (FreeBSD's user/group tool) by a stand-in that records its argv and creates
the group with groupadd.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import lab
import pytest
from conftest import need, need_lab, once
from lab.dovecot import (
    RHEL_CERT,
    RHEL_KEY,
    DovecotLab,
    cert_lines,
    installed_version,
    rhel_ssl_conf,
    write_self_signed,
)

from certbot_postfix_tls._internal import (
    certs,
    dialogues,
    permissions,
    process,
    tls_client,
)
from certbot_postfix_tls._internal.daemons.dovecot import doveconf
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

NAME = lab.LAB_HOSTNAME
FREEBSD_ETC = "/usr/local/etc"
FREEBSD_DOVECOT = f"{FREEBSD_ETC}/dovecot"


def install_rhel_tree(instance: DovecotLab) -> None:
    instance.install_config(snakeoil=False)
    ssl_conf = Path(instance.config_dir, "conf.d", "10-ssl.conf")
    ssl_conf.write_text(rhel_ssl_conf(ssl_conf.read_text()))
    for path, mode in ((os.path.dirname(RHEL_CERT), 0o755), (os.path.dirname(RHEL_KEY), 0o700)):
        os.makedirs(path, mode=mode, exist_ok=True)
    write_self_signed(RHEL_CERT, RHEL_KEY, "localhost.localdomain")


def leaf_of(certbot: lab.Certbot) -> bytes:
    pem = (certbot.config_dir / "live" / NAME / "fullchain.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def served(port: int, tls: str) -> bytes:
    endpoint = tls_client.Endpoint("dovecot", "imap", "127.0.0.1", port, tls, str(port))
    return dialogues.handshake(endpoint, NAME).leaf_der


# --- pw groupadd ----------------------------------------------------------------------------

PW_STANDIN = """#!/bin/sh
# Stand-in for FreeBSD's pw(8): records its argv, creates the group with groupadd.
printf '%s\\n' "$*" >> "$(dirname "$0")/argv"
[ "$1" = groupadd ] || exit 64
exec /usr/sbin/groupadd "$2"
"""


@pytest.fixture
def freebsd_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No groupadd, a ``pw`` on PATH (the stand-in above)."""
    need("groupadd")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pw").write_text(PW_STANDIN)
    (bin_dir / "pw").chmod(0o755)
    real = process.find_tool
    monkeypatch.setattr(process, "find_tool",
                        lambda name: None if name == "groupadd" else real(name))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    yield bin_dir


def test_key_group_is_created_with_pw_where_groupadd_is_missing(freebsd_tools: Path) -> None:
    name = "certbot-pw-test"
    subprocess.run(["groupdel", name], capture_output=True, check=False)
    assert permissions.group_add_argv(name) == ["pw", "groupadd", name]
    gid, created = permissions.ensure_group(name)
    assert created and gid >= 0
    assert (freebsd_tools / "argv").read_text() == f"groupadd {name}\n"
    assert permissions.ensure_group(name) == (gid, False)  # exists now: pw is not run again
    assert (freebsd_tools / "argv").read_text() == f"groupadd {name}\n"
    with pytest.raises(Exception, match=f"pw groupadd {name}-x"):
        permissions._require_gid(f"{name}-x")  # the hint names the tool this system has
    subprocess.run(["groupdel", name], check=True)


# --- end to end -----------------------------------------------------------------------------


def run_certbot(certbot: lab.Certbot, *extra: str, check: bool = True) -> str:
    proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                       *certbot.acme_args(), *extra, check=check)
    return proc.stdout + proc.stderr


def test_rhel_dovecot_deploy_renew_rollback(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_config: DovecotLab | None,
) -> None:
    once(request, "the Dovecot layout does not depend on certbot's version")
    need("dovecot")
    assert dovecot_config is not None
    install_rhel_tree(dovecot_config)
    dovecot_config.start()
    before = lab.file_tree("/etc/dovecot")

    output = run_certbot(certbot)
    rhel_cert = cert_lines(RHEL_CERT, RHEL_KEY)[0]
    setting = rhel_cert.split(" = ")[0]  # ssl_cert (2.3), ssl_server_cert_file (2.4)
    assert f"commented out {setting} in /etc/dovecot/conf.d/10-ssl.conf" in output
    ssl_conf = Path("/etc/dovecot/conf.d/10-ssl.conf").read_text()
    assert f"{dovecot_plan.MARKER}{rhel_cert}\n" in ssl_conf
    assert "\nssl = required\n" in ssl_conf  # the policy is the operator's
    # 2.4's doveconf shows the ssl_server_* settings as an ssl_server { cert_file } block.
    query = "ssl_server/cert_file" if installed_version() >= (2, 4) else setting
    effective = process.run(["doveconf", "ssl", query], what="doveconf").stdout
    assert "ssl = required" in effective and f"/live/{NAME}/fullchain.pem" in effective
    assert served(143, "starttls") == served(993, "implicit") == leaf_of(certbot)

    old = leaf_of(certbot)
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    assert leaf_of(certbot) != old
    assert served(993, "implicit") == served(143, "starttls") == leaf_of(certbot)

    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "1")
    assert lab.file_tree("/etc/dovecot") == before


@pytest.fixture
def freebsd_etc() -> Iterator[str]:
    """A private, empty /usr/local/etc (tmpfs, in the lab's mount namespace only)."""
    need_lab()
    need("mount")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", FREEBSD_ETC],
                   check=True)
    try:
        yield FREEBSD_ETC
    finally:
        subprocess.run(["umount", "--lazy", FREEBSD_ETC], check=True)


def test_freebsd_dovecot_path_is_found(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_config: DovecotLab | None, freebsd_etc: str,
) -> None:
    once(request, "where dovecot.conf is does not depend on certbot's version")
    need("dovecot")
    assert dovecot_config is not None
    # Dovecot installed, its configuration nowhere: refused in one sentence, never skipped.
    Path("/etc/dovecot/dovecot.conf").unlink()
    output = run_certbot(certbot, check=False)
    assert "Dovecot is installed but its configuration /etc/dovecot/dovecot.conf does not " \
        "exist: name it with --postfix-tls-dovecot-config FILE" in output
    assert "--postfix-tls-services postfix" in output

    # FreeBSD's layout: /usr/local/etc/dovecot and no /etc/dovecot.
    subprocess.run(["rm", "-rf", "/etc/dovecot"], check=True)
    instance = DovecotLab(config_dir=FREEBSD_DOVECOT)
    instance.install_config(snakeoil=True)
    instance.start()
    try:
        assert doveconf.built_in_config() == "/etc/dovecot/dovecot.conf"  # Debian's build
        assert doveconf.find_config() == f"{FREEBSD_DOVECOT}/dovecot.conf"
        output = run_certbot(certbot)
        plugin_file = Path(FREEBSD_DOVECOT, "conf.d", dovecot_plan.DEBIAN_PLUGIN_NAME)
        assert f"wrote {plugin_file}" in output
        assert served(993, "implicit") == served(143, "starttls") == leaf_of(certbot)
    finally:
        instance.stop()
