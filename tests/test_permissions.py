"""Tests for certbot_postfix_tls.permissions: real files, real groups and users, real certbot.

Everything that creates groups or users, or changes owners, runs inside the
lab's private namespace (conftest): /etc is an overlay, so the machine's own
accounts are never touched.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lab
import pytest
from certbot import errors
from conftest import need, need_lab

from certbot_postfix_tls._internal import certs, permissions

NAME = "fake.example.org"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def owner_of(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


@pytest.fixture
def key_group() -> tuple[str, int]:
    """A fresh key group (in the namespace's /etc)."""
    need("groupadd")
    name = f"cpt-{secrets.token_hex(4)}"
    gid, created = permissions.ensure_group(name)
    assert created
    return name, gid


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is under a 0700 dir)."""
    need_lab()
    # /var is an overlay inside the namespace: this lands in the lab's scratch dir.
    path = Path(tempfile.mkdtemp(prefix="cpt-perm-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fake_lineage(base: Path, key_mode: int = 0o644, versions: int = 1) -> certs.Lineage:
    """A lineage laid out exactly like certbot's: relative live/ links into archive/."""
    config = base / "config"
    archive, live = config / "archive" / NAME, config / "live" / NAME
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    for top in (config / "archive", config / "live"):
        top.chmod(0o700)  # what certbot makes
    for version in range(1, versions + 1):
        for kind in ("cert", "chain", "fullchain", "privkey"):
            (archive / f"{kind}{version}.pem").write_text(f"{kind} {version}\n")
        (archive / f"privkey{version}.pem").chmod(key_mode)
    for kind in ("cert", "chain", "fullchain", "privkey"):
        os.symlink(f"../../archive/{NAME}/{kind}{versions}.pem", live / f"{kind}.pem")
    return certs.Lineage.from_live_dir(str(live), str(config))


def lineage_dirs(lineage: certs.Lineage) -> list[Path]:
    config = Path(lineage.config_dir)
    return [config / "live", config / "archive", config / "live" / NAME,
            config / "archive" / NAME]


# --- groups -------------------------------------------------------------------------


def test_ensure_group_creates_once() -> None:
    need("groupadd")
    name = f"cpt-{secrets.token_hex(4)}"
    gid, created = permissions.ensure_group(name)
    assert created
    assert permissions.ensure_group(name) == (gid, False)


@pytest.mark.parametrize("bad", ["", "-r", "--help", "a b", "../x", "x/y", "1234", "x" * 40])
def test_ensure_group_rejects_odd_names(bad: str) -> None:
    with pytest.raises(errors.PluginError, match="not a plain group name"):
        permissions.ensure_group(bad)


def test_missing_group_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(errors.PluginError, match="does not exist"):
        permissions.secure_lineage(fake_lineage(tmp_path), "cpt-no-such-group")


# --- a fake lineage ---------------------------------------------------------------------


def test_secure_lineage_fixes_keys_and_dirs(open_dir: Path, key_group: tuple[str, int]) -> None:
    group, gid = key_group
    lineage = fake_lineage(open_dir, key_mode=0o644, versions=2)
    archive = Path(lineage.config_dir) / "archive" / NAME
    (archive / "privkey1.pem").chmod(0o600)  # an older key, never group-readable

    assert permissions.key_problems(lineage.key_path, group)

    changes = permissions.secure_lineage(lineage, group)
    assert f"archive/{NAME}/privkey2.pem: mode 0644 -> 0640, group root -> {group}" in changes
    assert f"archive/{NAME}/privkey1.pem: mode 0600 -> 0640, group root -> {group}" in changes
    assert f"live: mode 0700 -> 0750, group root -> {group}" in changes
    for key in ("privkey1.pem", "privkey2.pem"):
        assert mode_of(archive / key) == 0o640
        assert owner_of(archive / key) == (0, gid)
    for directory in lineage_dirs(lineage):
        assert mode_of(directory) == 0o750
        assert owner_of(directory) == (0, gid)
    # Public files are not the plugin's business.
    assert owner_of(archive / "cert2.pem") == (0, 0)
    assert permissions.key_problems(lineage.key_path, group) == []

    assert permissions.secure_lineage(lineage, group) == []


def test_secure_lineage_clears_odd_bits(tmp_path: Path, key_group: tuple[str, int]) -> None:
    group, _ = key_group
    lineage = fake_lineage(tmp_path, key_mode=0o4777)
    permissions.secure_lineage(lineage, group)
    assert mode_of(Path(os.path.realpath(lineage.key_path))) == 0o640


@pytest.mark.parametrize("which", ["current", "old"])
def test_planted_key_symlink_is_refused(
    tmp_path: Path, key_group: tuple[str, int], which: str
) -> None:
    group, _ = key_group
    lineage = fake_lineage(tmp_path, versions=2)
    archive = Path(lineage.config_dir) / "archive" / NAME
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\n")
    shadow.chmod(0o600)
    planted = archive / ("privkey2.pem" if which == "current" else "privkey1.pem")
    planted.unlink()
    planted.symlink_to(shadow)

    # The current key is refused by the live-link check, an old one by O_NOFOLLOW.
    with pytest.raises(errors.PluginError, match="Refusing") as caught:
        permissions.secure_lineage(lineage, group)
    if which == "old":
        assert "symbolic link" in str(caught.value)
    assert mode_of(shadow) == 0o600
    assert owner_of(shadow) == (0, 0)
    # Everything is checked before the first change: nothing else moved either.
    assert mode_of(archive) == 0o755
    assert mode_of(archive.parent) == 0o700
    assert mode_of(archive / ("privkey1.pem" if which == "current" else "privkey2.pem")) == 0o644


def test_planted_directory_symlink_is_refused(
    tmp_path: Path, key_group: tuple[str, int]
) -> None:
    group, _ = key_group
    lineage = fake_lineage(tmp_path)
    archive = Path(lineage.config_dir) / "archive" / NAME
    elsewhere = tmp_path / "elsewhere"
    archive.rename(elsewhere)
    elsewhere.chmod(0o700)
    archive.symlink_to(elsewhere)
    with pytest.raises(errors.PluginError, match="symbolic link"):
        permissions.secure_lineage(lineage, group)
    assert mode_of(elsewhere) == 0o700
    assert mode_of(elsewhere / "privkey1.pem") == 0o644


@pytest.mark.parametrize("where", ["other-lineage", "outside"])
def test_live_link_outside_archive_is_refused(
    tmp_path: Path, key_group: tuple[str, int], where: str
) -> None:
    group, _ = key_group
    lineage = fake_lineage(tmp_path)
    config = Path(lineage.config_dir)
    if where == "other-lineage":
        other = config / "archive" / "other.example.org"
        other.mkdir()
        target = other / "privkey1.pem"
    else:
        target = tmp_path / "elsewhere.pem"
    target.write_text("key\n")
    target.chmod(0o644)
    live_key = config / "live" / NAME / "privkey.pem"
    live_key.unlink()
    live_key.symlink_to(os.path.relpath(target, live_key.parent))
    with pytest.raises(errors.PluginError, match="outside the lineage's archive directory"):
        permissions.secure_lineage(lineage, group)
    assert mode_of(target) == 0o644
    assert mode_of(config / "archive") == 0o700


def test_user_provided_key_only_touches_the_key(
    tmp_path: Path, key_group: tuple[str, int]
) -> None:
    group, gid = key_group
    keydir = tmp_path / "ssl"
    keydir.mkdir(mode=0o755)
    key, chain = keydir / "mail.key", keydir / "mail.pem"
    key.write_text("key\n")
    key.chmod(0o604)
    chain.write_text("chain\n")
    lineage = certs.Lineage.from_paths("mail.example.org", str(key), str(chain),
                                       str(tmp_path / "config"))
    assert not lineage.in_live
    assert permissions.secure_lineage(lineage, group) == [
        f"{key}: mode 0604 -> 0640, group root -> {group}"
    ]
    assert (mode_of(key), owner_of(key)) == (0o640, (0, gid))
    assert mode_of(keydir) == 0o755
    assert permissions.secure_lineage(lineage, group) == []

    # A symlinked user key is refused too, the file behind it untouched.
    real = tmp_path / "real.key"
    real.write_text("key\n")
    real.chmod(0o644)
    key.unlink()
    key.symlink_to(real)
    with pytest.raises(errors.PluginError, match="symbolic link"):
        permissions.secure_lineage(lineage, group)
    assert mode_of(real) == 0o644


def test_secure_file_primitive(tmp_path: Path) -> None:
    need_lab()
    path = tmp_path / "combined.pem"
    path.write_text("key+chain\n")
    path.chmod(0o644)
    assert permissions.secure_file(str(path), 0, 0, 0o600) == f"{path}: mode 0644 -> 0600"
    assert permissions.secure_file(str(path), 0, 0, 0o600) is None
    with pytest.raises(errors.PluginError, match="not a file"):
        permissions.secure_file(str(tmp_path), 0, 0, 0o600)


def test_key_problems_sentences(open_dir: Path, key_group: tuple[str, int]) -> None:
    group, _ = key_group
    lineage = fake_lineage(open_dir, key_mode=0o644)
    problems = permissions.key_problems(lineage.key_path, group)
    text = "\n".join(problems)
    assert "every user on the machine can read it" in text
    assert f"not the key group {group}" in text
    assert "does not let the key group" in text  # live/ and archive/ are 0700
    assert all(p.endswith(".") and p.count(": ") >= 1 for p in problems)
    assert permissions.key_problems(lineage.key_path, "cpt-no-such-group")[0].startswith(
        "The key group cpt-no-such-group does not exist"
    )


# --- real users --------------------------------------------------------------------------


@pytest.fixture
def users(key_group: tuple[str, int]) -> Iterator[tuple[str, str]]:
    """A throwaway member of the key group and a non-member, removed afterwards."""
    need("useradd")
    need("setpriv")
    group, _ = key_group
    tag = secrets.token_hex(3)
    member, outsider = f"cptm-{tag}", f"cpto-{tag}"
    base = ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/bin/false"]
    subprocess.run([*base, "--groups", group, member], check=True)
    subprocess.run([*base, outsider], check=True)
    yield member, outsider
    for user in (member, outsider):
        subprocess.run(["userdel", user], check=False)


def read_as(user: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "cat", path],
        capture_output=True, text=True, check=False,
    )


def test_group_member_reads_key_through_live_link(
    open_dir: Path, key_group: tuple[str, int], users: tuple[str, str]
) -> None:
    group, _ = key_group
    member, outsider = users
    lineage = fake_lineage(open_dir, key_mode=0o600)
    assert read_as(member, lineage.key_path).returncode != 0  # certbot's 0700 dirs
    permissions.secure_lineage(lineage, group)
    assert read_as(member, lineage.key_path).stdout == "privkey 1\n"
    denied = read_as(outsider, lineage.key_path)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


# --- a real certbot lineage and renewals ----------------------------------------------


def test_real_certbot_renewal_keeps_group_and_mode(
    certbot: lab.Certbot, open_dir: Path, key_group: tuple[str, int], users: tuple[str, str]
) -> None:
    group, gid = key_group
    member, outsider = users
    # certbot's own fixture lives under pytest's 0700 tmp dir: move it where users can go.
    bot = dataclasses.replace(certbot, base=open_dir / "certbot")
    bot.base.mkdir(mode=0o755)  # else certbot makes it 0700 and key_problems says so
    domain = "perm.example.org"
    bot.run("certonly", "-a", "standalone", "-d", domain, *bot.acme_args())
    lineage = certs.Lineage.from_live_dir(str(bot.config_dir / "live" / domain),
                                          str(bot.config_dir))
    archive = bot.config_dir / "archive" / domain

    def renew() -> None:
        bot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", "--cert-name", domain)

    assert mode_of(archive / "privkey1.pem") == 0o600
    # An old certbot left the key world-readable; certbot carries that bit forward (FACTS).
    (archive / "privkey1.pem").chmod(0o644)
    renew()
    assert os.path.realpath(lineage.key_path) == str(archive / "privkey2.pem")
    assert mode_of(archive / "privkey2.pem") & 0o004

    changes = permissions.secure_lineage(lineage, group)
    assert f"archive/{domain}/privkey2.pem: mode 0644 -> 0640, group root -> {group}" in changes
    for key in ("privkey1.pem", "privkey2.pem"):
        assert (mode_of(archive / key), owner_of(archive / key)) == (0o640, (0, gid))
    assert permissions.key_problems(lineage.key_path, group) == []
    certs.load_material(lineage)  # still a matching, readable pair for root

    # certbot copies the group and group/other bits of the previous key to the new one.
    renew()
    assert os.path.realpath(lineage.key_path) == str(archive / "privkey3.pem")
    assert (mode_of(archive / "privkey3.pem"), owner_of(archive / "privkey3.pem")) == (
        0o640, (0, gid)
    )
    assert permissions.key_problems(lineage.key_path, group) == []
    assert permissions.secure_lineage(lineage, group) == []  # renewal kept everything

    key_pem = (archive / "privkey3.pem").read_text()
    assert read_as(member, lineage.key_path).stdout == key_pem
    assert read_as(outsider, lineage.key_path).returncode != 0
