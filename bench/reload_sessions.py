"""What one ``doveadm reload`` does to established sessions, per ``shutdown_clients``.

Run as root from the repository: ``.venv/bin/python bench/reload_sessions.py``
(Debian 12's Dovecot 2.3), or with ``--dovecot24 ROOT`` for Debian 13's 2.4 from its
chroot (``sh tools/debian13-chroot --check --suite trixie`` prints ROOT).

Inside the lab's private namespace (tests/lab), for each pair ``before -> after``
(``yes -> yes``, ``no -> no``, ``yes -> no``, ``no -> yes``): Dovecot starts with Debian's
stock configuration plus ``shutdown_clients = before``; logged-in sessions over TLS are
opened (IMAP on 993 NOOP-ing every second and in IDLE, POP3 on 995 NOOP-ing and silent)
and left ``--idle`` seconds, so that the IDLE ones are idle that long at the reload; the
file is changed to ``shutdown_clients = after`` and ``doveadm reload`` runs; the sessions
are watched ``--watch`` seconds. The table (Markdown) goes to stdout.

This is the evidence behind the README's "Dovecot sessions" paragraph: no setting
other than shutdown_clients, and no other command, keeps them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import lab  # noqa: E402
from lab.dovecot import DovecotLab  # noqa: E402
from lab.dovecot24 import ChrootDovecot  # noqa: E402
from lab.sessions import MailSessions, SessionReport  # noqa: E402

from certbot_postfix_tls._internal import process  # noqa: E402

PAIRS = (("yes", "yes"), ("no", "no"), ("yes", "no"), ("no", "yes"))
USERS = (("reload-noop", "reload-password"), ("reload-idle", "reload-password"))
SETTING_FILE = "conf.d/99-reload-sessions.conf"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def host_user(name: str, password: str) -> None:
    # /etc and /var are overlays in the lab: the user and its home exist nowhere else.
    process.run(["useradd", "--create-home", "--home-dir", f"/var/lib/bench-home/{name}",
                 name], what="useradd")
    process.run(["chpasswd"], what="chpasswd", input_text=f"{name}:{password}\n")


def one(dv: DovecotLab, before: str, after: str, args: argparse.Namespace
        ) -> tuple[SessionReport, float]:
    dv.install_config(snakeoil=True)
    setting = Path(dv.config_dir) / SETTING_FILE
    setting.write_text(f"shutdown_clients = {before}\n")
    dv.start()
    noop, idle = USERS
    try:
        with MailSessions() as sessions:
            sessions.open("imap", args.imap, 993, noop, "noop")
            sessions.open("imap", args.imap, 993, idle, "idle")
            sessions.open("pop3", args.pop3, 995, noop, "noop")
            sessions.open("pop3", args.pop3, 995, idle, "idle")
            time.sleep(args.idle)
            setting.write_text(f"shutdown_clients = {after}\n")
            reloaded = time.monotonic()
            process.run(["doveadm", "-c", dv.config_file, "reload"], what="doveadm reload")
            time.sleep(args.watch)
            report = sessions.close()
    finally:
        dv.stop()
    return report, reloaded


def describe(report: SessionReport, reloaded: float) -> str:
    if not report.cut():
        return f"0 of {report.opened()}"
    parts = []
    for protocol in ("imap", "pop3"):
        for mode in ("noop", "idle"):
            times = [r.cut_at - reloaded for r in report.results
                     if r.protocol == protocol and r.mode == mode and r.cut_at is not None]
            if times:
                parts.append(f"{protocol} {mode} {len(times)} at {min(times):.1f}"
                             + (f"-{max(times):.1f}" if max(times) - min(times) >= 0.1 else "")
                             + " s")
    return f"{report.cut()} of {report.opened()} ({'; '.join(parts)})"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--dovecot24", metavar="ROOT",
                        help="Dovecot 2.4 from this Debian 13 chroot")
    parser.add_argument("--imap", type=int, default=3,
                        help="IMAP sessions NOOP-ing, and as many in IDLE (default 3)")
    parser.add_argument("--pop3", type=int, default=2,
                        help="POP3 sessions NOOP-ing, and as many silent (default 2)")
    parser.add_argument("--idle", type=float, default=11.0,
                        help="seconds between logging in and the reload (default 11: "
                             "Dovecot's imap ends sessions idle for 10 s at once)")
    parser.add_argument("--watch", type=float, default=14.0,
                        help="seconds watched after the reload (default 14: old processes"
                             " are killed 6 s after it)")
    args = parser.parse_args(argv)
    if not (0 <= args.imap <= 10 and 0 <= args.pop3 <= 10):
        parser.error("--imap, --pop3: 0 to 10 (Dovecot's connections per user and address)")
    scratch = Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-reload-"))
    lab.enter_private_namespace(scratch / "namespace")
    chroot: Optional[ChrootDovecot] = None
    dv: DovecotLab = DovecotLab()
    if args.dovecot24:
        chroot = ChrootDovecot(root=args.dovecot24, scratch=scratch / "dovecot24")
        dv = chroot
        chroot.enter()
    rows = []
    try:
        for user, password in USERS:
            (chroot.add_user if chroot is not None else host_user)(user, password)
        version = process.run(["dovecot", "--version"], what="dovecot --version").stdout.strip()
        for before, after in PAIRS:
            say(f"shutdown_clients {before} -> {after}")
            report, reloaded = one(dv, before, after, args)
            rows.append(f"| `{before}` -> `{after}` | {describe(report, reloaded)} |")
    except (lab.LabError, OSError, subprocess.CalledProcessError) as exc:
        say(f"failed: {exc}")
        return 2
    finally:
        if chroot is not None:
            chroot.leave()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"Dovecot {version}: {args.imap} IMAP NOOP + {args.imap} IMAP IDLE on 993, "
          f"{args.pop3} POP3 NOOP + {args.pop3} POP3 silent on 995; reload {args.idle:g} s "
          f"after login, watched {args.watch:g} s.\n")
    print("| shutdown_clients before -> after | sessions cut (s after the reload) |")
    print("|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
