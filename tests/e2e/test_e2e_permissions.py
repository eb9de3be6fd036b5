"""Tests for certbot_postfix_tls.permissions: real files, real groups and users, real certbot.

Everything that creates groups or users, or changes owners, runs inside the
lab's private namespace (conftest): /etc is an overlay, so the machine's own
accounts are never touched.
"""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lab
import pytest
from certbot import errors
from conftest import need, need_lab, once

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
    # live/ and archive/: the key group may pass, not list (other lineages' names).
    assert f"live: mode 0700 -> 0710, group root -> {group}" in changes
    assert f"archive: mode 0700 -> 0710, group root -> {group}" in changes
    for key in ("privkey1.pem", "privkey2.pem"):
        assert mode_of(archive / key) == 0o640
        assert owner_of(archive / key) == (0, gid)
    tops, subs = lineage_dirs(lineage)[:2], lineage_dirs(lineage)[2:]
    for directory in tops:
        assert (mode_of(directory), owner_of(directory)) == (0o710, (0, gid))
    for directory in subs:
        assert (mode_of(directory), owner_of(directory)) == (0o750, (0, gid))
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
    # The key's owner (another ACME client, the service that made it) keeps it.
    os.chown(key, 65534, gid)
    assert permissions.secure_lineage(lineage, group) == []
    assert owner_of(key) == (65534, gid)

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
    # An old certbot left the key world-readable; certbot carries that bit forward.
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


# --- other lineages stay closed ----------------------------------------------------------

OTHER = "other.example.org"


def add_other_lineage(config: Path, name: str = OTHER, key_mode: int = 0o644) -> Path:
    """A lineage the plugin never deployed, as certbot leaves it: archive/NAME 0755
    (os.makedirs under the default umask), an old key still world-readable."""
    archive, live = config / "archive" / name, config / "live" / name
    archive.mkdir(mode=0o755)
    live.mkdir(mode=0o755)
    for kind in ("cert", "chain", "fullchain", "privkey"):
        (archive / f"{kind}1.pem").write_text(f"{name} {kind}\n")
        os.symlink(f"../../archive/{name}/{kind}1.pem", live / f"{kind}.pem")
    (archive / "privkey1.pem").chmod(key_mode)
    return archive / "privkey1.pem"


def test_other_lineages_stay_closed_to_the_key_group(
    open_dir: Path, key_group: tuple[str, int], users: tuple[str, str]
) -> None:
    group, gid = key_group
    member, outsider = users
    lineage = fake_lineage(open_dir, key_mode=0o600)
    config = Path(lineage.config_dir)
    other_key = add_other_lineage(config)
    # A lineage deployed once and undeployed since: root:GROUP 0750 dirs, a 0640 key.
    gone_key = add_other_lineage(config, "gone.example.org", key_mode=0o640)
    for path in (gone_key, gone_key.parent, config / "live" / "gone.example.org"):
        os.chown(path, 0, gid)
    (config / "live" / "gone.example.org").chmod(0o750)
    gone_key.parent.chmod(0o750)

    changes = permissions.secure_lineage(lineage, group, deployed=[NAME])

    assert read_as(member, lineage.key_path).stdout == "privkey 1\n"
    for path in (other_key, config / "live" / OTHER / "privkey.pem",
                 gone_key, config / "live" / "gone.example.org" / "privkey.pem"):
        for user in (member, outsider):
            denied = read_as(user, str(path))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, (user, path)
    assert mode_of(other_key.parent) == 0o750 and owner_of(other_key.parent) == (0, 0)
    assert mode_of(gone_key.parent) == 0o700
    assert (f"archive/{OTHER}: mode 0755 -> 0750 (not deployed by postfix-tls: closed to "
            "the key group)") in changes
    # Root still reads everything; the key files themselves were not touched.
    assert mode_of(other_key) == 0o644
    assert other_key.read_text() == f"{OTHER} privkey\n"
    assert permissions.secure_lineage(lineage, group, deployed=[NAME]) == []

    # Control: it is the closed directory that keeps the member out.
    other_key.parent.chmod(0o755)
    assert read_as(member, str(other_key)).stdout == f"{OTHER} privkey\n"
    # ... and the next deploy or renewal closes it again (lineages made later too).
    permissions.secure_lineage(lineage, group)  # deployed names from the state: none
    assert read_as(member, str(other_key)).returncode != 0


def test_lineages_open_to_everyone_before_stay_as_they_were(
    open_dir: Path, key_group: tuple[str, int], users: tuple[str, str]
) -> None:
    """An admin who opened live/ and archive/ (0755) chose that: others keep their access,
    the plugin adds group traverse and takes nothing from other lineages."""
    group, gid = key_group
    member, _ = users
    lineage = fake_lineage(open_dir, key_mode=0o600)
    config = Path(lineage.config_dir)
    for top in ("live", "archive"):
        (config / top).chmod(0o755)
    other_key = add_other_lineage(config)
    permissions.secure_lineage(lineage, group, deployed=[NAME])
    for top in ("live", "archive"):
        assert (mode_of(config / top), owner_of(config / top)) == (0o715, (0, gid))
    assert mode_of(other_key.parent) == 0o755
    assert read_as(member, str(config / "live" / OTHER / "fullchain.pem")).returncode == 0
    # Readable by everyone before and after: not the plugin's doing, but doctor says so.
    exposures = permissions.exposed_keys(str(config), {NAME: group})
    assert [(e.path, e.readers, e.fix) for e in exposures] == [
        (str(other_key), ["every user"], f"chmod 0600 {other_key}")
    ]
    assert exposures[0].sentence() == (
        f"{other_key} can be read by every user: run chmod 0600 {other_key} "
        "(certbot copies this mode to every renewed key)."
    )


def test_confine_lineages_after_the_last_undeploy(
    open_dir: Path, key_group: tuple[str, int], users: tuple[str, str]
) -> None:
    group, gid = key_group
    member, _ = users
    lineage = fake_lineage(open_dir, key_mode=0o600)
    config = Path(lineage.config_dir)
    permissions.secure_lineage(lineage, group, deployed=[NAME])
    assert read_as(member, lineage.key_path).returncode == 0
    # Another lineage still deployed: only NAME closes.
    add_other_lineage(config, key_mode=0o600)
    changes = permissions.confine_lineages(str(config), group, [OTHER])
    assert f"live/{NAME}: mode 0750 -> 0700 (not deployed by postfix-tls: closed to the key " \
           "group)" in changes
    assert read_as(member, lineage.key_path).returncode != 0
    assert mode_of(config / "archive") == 0o710
    # None left: live/ and archive/ go back to what certbot makes.
    permissions.confine_lineages(str(config), group, [])
    for top in ("live", "archive"):
        assert (mode_of(config / top), owner_of(config / top)) == (0o700, (0, 0))
    assert permissions.confine_lineages(str(config), group, []) == []


def test_exposed_keys_counts_the_path_not_just_the_mode(
    open_dir: Path, key_group: tuple[str, int]
) -> None:
    group, gid = key_group
    lineage = fake_lineage(open_dir, key_mode=0o600)
    config = Path(lineage.config_dir)
    other_key = add_other_lineage(config)
    # certbot's 0700 archive/: the 0644 key is read by nobody but root.
    assert permissions.exposed_keys(str(config), {}) == []
    permissions.secure_lineage(lineage, group, deployed=[NAME])
    assert permissions.exposed_keys(str(config), {NAME: group}) == []
    # A non-deployed lineage made group-reachable behind the plugin's back.
    os.chown(other_key.parent, 0, gid)
    other_key.parent.chmod(0o750)
    os.chown(other_key, 0, gid)
    other_key.chmod(0o640)
    found = permissions.exposed_keys(str(config), {NAME: group})
    assert [(e.path, e.readers, e.world) for e in found] == [
        (str(other_key), [f"the key group {group}"], False)
    ]
    # A deployed key with an "other" bit, behind directories others may pass.
    key = Path(os.path.realpath(lineage.key_path))
    key.chmod(0o644)
    for directory in (config / "archive", key.parent):
        directory.chmod(0o755)
    found = permissions.exposed_keys(str(config), {NAME: group})
    assert (str(key), ["every user"], f"chmod o= {key}") in [
        (e.path, e.readers, e.fix) for e in found
    ]


def test_real_deploy_keeps_other_lineages_closed(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    key_group: tuple[str, int], users: tuple[str, str]
) -> None:
    """A lineage the plugin never deployed, whose old key certbot left (and keeps) 0644,
    stays out of the key group's reach after another lineage is deployed."""
    once(request, "permission handling does not depend on certbot's version")
    group, _ = key_group
    member, outsider = users
    deployed, other, later = lab.LAB_HOSTNAME, "other.example.org", "later.example.org"
    config = certbot.config_dir

    def renew(name: str) -> None:
        certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", "--cert-name",
                    name, *certbot.acme_args())

    certbot.run("certonly", "-a", "standalone", "-d", other, *certbot.acme_args())
    (config / "archive" / other / "privkey1.pem").chmod(0o644)  # an old certbot's key
    renew(other)  # certbot carries the world-read bit forward
    other_keys = [config / "archive" / other / f"privkey{n}.pem" for n in (1, 2)]
    assert all(mode_of(key) == 0o644 for key in other_keys)
    assert mode_of(config / "archive" / other) == 0o755  # certbot's own mode
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", deployed,
                "--postfix-tls-key-group", group, *certbot.acme_args())
    certbot.run("certonly", "-a", "standalone", "-d", later, *certbot.acme_args())

    def check() -> None:
        deployed_key = config / "live" / deployed / "privkey.pem"
        assert read_as(member, str(deployed_key)).stdout == deployed_key.read_text()
        assert read_as(outsider, str(deployed_key)).returncode != 0
        for path in [*other_keys, config / "live" / other / "privkey.pem",
                     config / "live" / later / "privkey.pem"]:
            for user in (member, outsider):
                denied = read_as(user, str(path))
                assert denied.returncode != 0 and "Permission denied" in denied.stderr, (
                    user, path)

    check()
    renew(deployed)  # the deploy hook re-secures, and closes the lineage made since
    check()
    assert mode_of(config / "archive" / later) == 0o750

    def doctor() -> list[dict[str, str]]:
        proc = subprocess.run(
            [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(config),
             "doctor", "--json"], capture_output=True, text=True, timeout=120, check=False)
        return [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "key-exposure"]

    assert [c["status"] for c in doctor()] == ["OK"]
    # An admin opens archive/ for everyone: the old 0644 keys are now readable.
    (config / "archive").chmod(0o755)
    (config / "archive" / other).chmod(0o755)
    found = doctor()
    assert [(c["status"], c["message"]) for c in found] == [
        ("CRITICAL", f"{key} can be read by every user: run chmod 0600 {key} (certbot copies "
                     "this mode to every renewed key).") for key in other_keys
    ]


def test_secure_lineage_dry_run_shows_what_it_then_does(open_dir: Path) -> None:
    """`plan`'s dry run (the key group not created yet) changes nothing and lists exactly
    the owners and modes the real run then changes."""
    need("groupadd")
    group = f"cpt-{secrets.token_hex(4)}"
    lineage = fake_lineage(open_dir, key_mode=0o644, versions=2)
    (Path(lineage.config_dir) / "archive" / "other.example").mkdir(mode=0o755)

    def entries() -> dict[str, tuple[int, int, int]]:
        found = {}
        for path in Path(lineage.config_dir).rglob("*"):
            info = os.lstat(path)
            found[str(path)] = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        return found

    before = entries()
    assert permissions.group_missing(group)
    dry = permissions.DryRun(new_group=group)
    lines = permissions.secure_lineage(lineage, group, dry=dry)
    assert entries() == before and permissions.group_missing(group)
    assert len(lines) == len(dry.changes)

    permissions.ensure_group(group)
    permissions.secure_lineage(lineage, group)
    after = entries()
    assert {p for p in before if before[p] != after[p]} == {c.path for c in dry.changes}
    for change in dry.changes:
        mode, uid, gid = after[change.path]
        assert change.after == f"root:{grp.getgrgid(gid).gr_name} {mode:04o}", change
        mode, uid, gid = before[change.path]
        assert change.before == f"root:{grp.getgrgid(gid).gr_name} {mode:04o}", change
