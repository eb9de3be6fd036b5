"""Dovecot 2.4 from a Debian 13 chroot, standing in for the lab's own Dovecot (2.3).

Only call this inside the lab's private mount namespace (``lab.enter_private_namespace``):
every mount below is private to it. The chroot (``tools/debian13-chroot``, named by
``DOVECOT24_ROOT`` in the tests) is never written: its /etc and /var become overlays,
its /run, /tmp and /home fresh tmpfs mounts. Then the host side is made to look like a
Debian 13 machine to whatever runs in the namespace, the real certbot and this plugin
included:

- /etc/dovecot and /usr/share/dovecot are the chroot's (bind mounts);
- /run/dovecot is shared, so master.pid and doveadm's sockets are where the host
  side looks for them;
- ``/usr/sbin/dovecot``, ``/usr/bin/doveconf`` and ``/usr/bin/doveadm`` are bind-mounted
  over by scripts that run the chroot's own program (``chroot ROOT doveconf ...``);
- directories both sides name by path (certbot's, holding the certificates) are
  bind-mounted into the chroot at the same path.

Postfix stays the host's. Dovecot's SASL socket for Postfix would live in the chroot's
spool under the chroot's postfix user: deploy with ``--postfix-tls-sasl none``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lab
from lab.dovecot import DovecotLab, write_self_signed

TOOLS = ("/usr/sbin/dovecot", "/usr/bin/doveconf", "/usr/bin/doveadm")
_MNT_DETACH = 2


@dataclass
class ChrootDovecot(DovecotLab):
    """Debian 13's Dovecot 2.4 at the lab's usual paths and ports. ``enter()`` first,
    ``leave()`` at the end (it stops Dovecot and undoes every mount)."""

    root: str = ""
    scratch: Path = Path("/nonexistent")
    shared: Sequence[str] = ()
    pristine: Path = Path("/nonexistent")  # a copy of the package's /etc/dovecot
    _mounts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = os.path.abspath(self.root)
        self.log_file = f"{self.root}/var/log/dovecot.log"  # log_path inside: /var/log/...
        for tool in TOOLS:
            if not os.path.exists(f"{self.root}{tool}"):
                raise lab.LabError(f"{self.root} has no {tool}: make it with "
                                   "sh tools/debian13-chroot --suite trixie")

    def _mount(self, source: str, target: str, fstype: str | None = None, data: str = "",
               bind: bool = False) -> None:
        lab._mount(source, target, fstype, lab._MS_BIND if bind else 0, data)
        self._mounts.append(target)

    def enter(self) -> None:
        root = self.root
        self.scratch.mkdir(parents=True, exist_ok=True)
        for top in ("etc", "var"):
            upper, work = self.scratch / f"{top}-upper", self.scratch / f"{top}-work"
            upper.mkdir()
            work.mkdir()
            self._mount("overlay", f"{root}/{top}", "overlay",
                        f"lowerdir={root}/{top},upperdir={upper},workdir={work}")
        for top in ("run", "tmp", "home"):
            self._mount("tmpfs", f"{root}/{top}", "tmpfs")
        self._mount("proc", f"{root}/proc", "proc")
        os.chmod(f"{root}/tmp", 0o1777)
        # The stock files, before any test changes them (install_config restores them).
        self.pristine = self.scratch / "pristine-etc-dovecot"
        shutil.copytree(f"{root}/etc/dovecot", self.pristine, symlinks=True)
        for path in self.shared:
            path = os.path.abspath(path)
            if not path.startswith("/tmp/"):
                raise lab.LabError(f"{path}: only directories under /tmp can be shared")
            os.makedirs(f"{root}{path}", exist_ok=True)
            self._mount(path, f"{root}{path}", bind=True)
        os.makedirs(f"{root}/run/dovecot", exist_ok=True)
        for inner, outer in (("/run/dovecot", "/run/dovecot"), ("/etc/dovecot", "/etc/dovecot"),
                             ("/usr/share/dovecot", "/usr/share/dovecot")):
            os.makedirs(outer, exist_ok=True)
            self._mount(f"{root}{inner}", outer, bind=True)
        chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
        if chroot is None:
            raise lab.LabError("chroot is missing (coreutils)")
        for tool in TOOLS:
            wrapper = self.scratch / f"wrap-{os.path.basename(tool)}"
            wrapper.write_text(f'#!/bin/sh\nexec {chroot} {root} {tool} "$@"\n')
            wrapper.chmod(0o755)
            self._mount(str(wrapper), tool, bind=True)

    def leave(self) -> None:
        try:
            self.stop()
        finally:
            for target in reversed(self._mounts):
                lab._libc_call("umount2", target.encode(), _MNT_DETACH)
            self._mounts.clear()

    def install_config(self, snakeoil: bool = True) -> None:
        """Debian 13's /etc/dovecot as the package installed it, on the private loopback,
        logging to a file; ``snakeoil``: its 10-ssl.conf's certificate exists."""
        for entry in os.listdir(self.config_dir):  # a mount point: empty it, keep it
            path = os.path.join(self.config_dir, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        shutil.copytree(self.pristine, self.config_dir, symlinks=True, dirs_exist_ok=True)
        with open(self.config_file, "a") as handle:
            handle.write(f"\n# certbot-postfix-tls lab\nlog_path = /var/log/dovecot.log\n"
                         f"listen = {self.listen}\n")
        private = os.path.join(self.config_dir, "private")
        for name in ("dovecot.pem", "dovecot.key"):
            if os.path.lexists(os.path.join(private, name)):
                os.unlink(os.path.join(private, name))
        if snakeoil:
            write_self_signed(os.path.join(private, "dovecot.pem"),
                              os.path.join(private, "dovecot.key"))

    def add_user(self, name: str, password: str) -> None:
        """A system user inside the chroot (its /etc and /home are private here)."""
        subprocess.run(["chroot", self.root, "useradd", "--create-home", name], check=True)
        subprocess.run(["chroot", self.root, "chpasswd"], input=f"{name}:{password}\n",
                       text=True, check=True)

    def version(self) -> str:
        proc = subprocess.run(["chroot", self.root, "dovecot", "--version"],
                              capture_output=True, text=True, check=True)
        return proc.stdout.strip()
