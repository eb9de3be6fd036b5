"""Lab accounts: mail users for a test, and what a test leaves behind, removed after it.

All end-to-end modules share one process, and so one lab: a user one test adds
(``useradd alice``) would make the next test's ``useradd alice`` fail, and an auth
socket left in Postfix's private spool by a stopped Dovecot changes what doctor
reports about SASL. Only called inside the lab (its /etc and /var are overlays).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass

# Mail users' homes: under the lab's /var overlay (/home is the machine's, shared by
# every lab on it, pytest-xdist's workers' included); "/home/" is useradd's default.
HOME_PARENT = "/var/lib/lab-home"
_HOME_PARENTS = (HOME_PARENT + "/", "/home/")
# Sockets a stopped daemon can leave in the lab's private spool.
STALE_SOCKETS = ("/var/spool/postfix/private/auth",)


@dataclass(frozen=True)
class Accounts:
    """The user and group names that exist at one moment."""

    users: frozenset[str]
    groups: frozenset[str]


def add_mail_user(user: str, password: str) -> None:
    """A login user with a password and its home under the lab's /var."""
    os.makedirs(HOME_PARENT, exist_ok=True)
    subprocess.run(["useradd", "--create-home", "--home-dir", f"{HOME_PARENT}/{user}", user],
                   check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)


def _names(path: str) -> frozenset[str]:
    with open(path, encoding="utf-8") as handle:
        return frozenset(line.split(":", 1)[0] for line in handle if ":" in line)


def accounts() -> Accounts:
    """The users and groups now in /etc/passwd and /etc/group."""
    return Accounts(_names("/etc/passwd"), _names("/etc/group"))


def _home(user: str) -> str:
    with open("/etc/passwd", encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user and len(fields) > 5:
                return fields[5]
    return ""


def remove_accounts_since(before: Accounts) -> None:
    """Delete the users and groups added since ``before`` (and their lab homes)."""
    now = accounts()
    for user in sorted(now.users - before.users):
        home = _home(user)
        # --force: an IMAP process of the user may outlive the test by a moment (Dovecot
        # ends it on its own); plain userdel then refuses (exit 8) and the next test's
        # useradd of the same name would fail. The lab's own processes only: nothing
        # is killed (the lab's uids may be a real user's on the machine).
        proc = subprocess.run(["userdel", "--force", user], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the lab could not remove user {user}: {proc.stderr.strip()}")
        if home.startswith(_HOME_PARENTS) and os.path.basename(home) == user:
            shutil.rmtree(home, ignore_errors=True)
    for group in sorted(accounts().groups - before.groups):
        subprocess.run(["groupdel", group], capture_output=True, check=False)


def remove_stale_sockets() -> None:
    """Remove the sockets that stopped daemons left in the spool."""
    for path in STALE_SOCKETS:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
