"""Renewal under load: this plugin's hooks against the article's restart hook.

Run as root from the repository: ``.venv/bin/python bench/renewal_under_load.py``.

Everything runs in the lab's private mount + network namespace (tests/lab):
a local Pebble, Postfix and Dovecot with Debian's stock configuration, the real certbot.
For each lineage count N and each strategy, a handshake load runs on 25, 587
(SMTP STARTTLS) and 993 (IMAP implicit TLS) and logged-in IMAP (993) and POP3 (995)
sessions are held open, half NOOP-ing every second, half silent (IMAP in IDLE), while
``certbot renew --force-renewal`` renews all N lineages:

A) this plugin: lineages issued with ``certonly`` and deployed with
   ``certbot install -i postfix-tls``; renewal goes through the plugin's deploy hook
   (rebuilds the combined key+chain files) and post hook (reloads each service once,
   then verifies every endpoint).
K) the same with ``--postfix-tls-dovecot-sessions keep`` (``shutdown_clients = no`` in
   the plugin's Dovecot file), set by one more ``certbot install`` before measuring.
B) the article: the same lineages, Postfix and Dovecot reading live/ files, the plugin's
   hooks removed and ``renewal-hooks/deploy/restart`` doing what
   ``systemctl restart postfix; systemctl restart dovecot`` does (without systemd):
   ``postfix stop; postfix start``, stop Dovecot's master and start it again. certbot
   runs deploy hooks once per renewed lineage, so N lineages mean N restarts.

``--dovecot24 ROOT`` runs Debian 13's Dovecot 2.4 from that chroot instead
(tests/lab/dovecot24.py: the real certbot and the plugin see it at the usual paths;
Postfix stays Debian 12's, deployed with ``--postfix-tls-sasl none``).

The table (Markdown) goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import imaplib
import os
import platform
import poplib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

# The lab (namespace, Pebble, throwaway daemons) is test equipment under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import lab  # noqa: E402
from lab import load as lab_load  # noqa: E402
from lab.dovecot import DovecotLab  # noqa: E402
from lab.dovecot24 import ChrootDovecot  # noqa: E402
from lab.sessions import MailSessions, SessionReport  # noqa: E402

from certbot_postfix_tls._internal import hooks, process, tls_client  # noqa: E402
from certbot_postfix_tls._internal.state import State  # noqa: E402

LOAD_PORTS = (25, 587, 993)
IMAP_PORT, POP3_PORT = 993, 995  # sessions over implicit TLS, as mail clients hold them
POSTFIX_RELOAD = "reload -- version"
POSTFIX_START = "daemon started -- version"
DOVECOT_RELOAD = "SIGHUP received"
DOVECOT_START = "starting up for"
WARMUP_SECONDS = 2.0
RESTART_HOOK = "restart"
POSTFIX_THROTTLE = "-- throttling"
# System users inside the namespace only (homes under /var, an overlay there); two, so
# that no user has more than Dovecot's 10 connections per address and protocol.
MAIL_USERS = (("bench-noop", "bench-password"), ("bench-idle", "bench-password"))

STRATEGIES = {
    "A": "A: postfix-tls hooks",
    "K": "A, --postfix-tls-dovecot-sessions keep",
    "B": "B: article, restart hook",
}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Row:
    """One strategy and lineage count."""

    strategy: str
    lineages: int
    load: Optional[lab_load.LoadResults] = None
    new_cert_after_exit: Optional[float] = None  # max over ports; None: never served
    stale_after_new: int = 0  # handshakes that still got the old leaf after the new one
    only_new_after_exit: Optional[float] = None  # from then on every handshake got it
    postfix_reloads: int = 0
    postfix_starts: int = 0
    postfix_throttled: int = 0  # "bad command startup -- throttling" (a service stopped)
    postfix_fatal: list[str] = field(default_factory=list)  # distinct "fatal:" messages
    dovecot_reloads: int = 0
    dovecot_starts: int = 0
    sessions: Optional[SessionReport] = None
    session_cut_offsets: list[float] = field(default_factory=list)  # vs certbot exit
    renew_seconds: float = 0.0
    renew_error: str = ""
    pids_unchanged: tuple[bool, bool] = (False, False)  # postfix, dovecot
    failure_offsets: dict[int, tuple[float, float]] = field(default_factory=dict)


def leaf_sha256(live_dir: Path) -> str:
    cert = x509.load_pem_x509_certificate((live_dir / "cert.pem").read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def lineage_names(count: int) -> list[str]:
    """The default lineage (Postfix's myhostname) first, then others served by SNI."""
    return [lab.LAB_HOSTNAME] + [f"mail{i}.example.net" for i in range(1, count)]


def tool_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except OSError:
        return "?"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "?"


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        self.scratch = scratch
        self.pebble = lab.Pebble(scratch / "pebble")
        self.postfix = lab.PostfixLab()
        self.chroot: Optional[ChrootDovecot] = None
        self.dovecot: DovecotLab = DovecotLab()
        if args.dovecot24:
            self.chroot = ChrootDovecot(root=args.dovecot24, scratch=scratch / "dovecot24",
                                        shared=[str(scratch)])
            self.dovecot = self.chroot

    # -- lab -----------------------------------------------------------------------------

    def start(self) -> None:
        lab.enter_private_namespace(self.scratch / "namespace")
        if self.chroot is not None:
            self.chroot.enter()
        self.pebble.start()
        # /etc and /var are overlays inside the namespace: these users exist nowhere else.
        for user, password in MAIL_USERS:
            if self.chroot is not None:
                self.chroot.add_user(user, password)
                continue
            process.run(["useradd", "--create-home", "--home-dir",
                         f"/var/lib/bench-home/{user}", user], what="useradd")
            process.run(["chpasswd"], what="chpasswd", input_text=f"{user}:{password}\n")

    def stop(self) -> None:
        try:
            self.dovecot.stop()
            self.postfix.stop()
            self.pebble.stop()
        finally:
            if self.chroot is not None:
                self.chroot.leave()

    def deploy_args(self) -> list[str]:
        # The chroot's Dovecot would put Postfix's SASL socket in its own spool.
        return ["--postfix-tls-sasl", "none"] if self.chroot is not None else []

    def set_sessions(self, certbot: lab.Certbot, default: str, mode: str) -> None:
        """--postfix-tls-dovecot-sessions for every lineage (one more install)."""
        certbot.run("install", "-i", "postfix-tls", "--cert-name", default,
                    "--postfix-tls-dovecot-sessions", mode, *self.deploy_args())
        recorded = State.load(str(certbot.config_dir)).dovecot_sessions
        if recorded != mode:
            raise lab.LabError(f"the plugin recorded dovecot_sessions {recorded}, not {mode}")

    def fresh_daemons(self, tag: str) -> None:
        """Stock Postfix and Dovecot, started, with empty logs (the previous ones are
        renamed: with --keep they stay in the scratch directory's /var overlay)."""
        self.dovecot.stop()
        self.postfix.stop()
        for log in (self.postfix.log_file, self.dovecot.log_file):
            if os.path.exists(log):
                os.replace(log, f"{log}.before-{tag}")
        main_cf, master_cf = lab.debian_stock_config()
        self.postfix.install_config(main_cf, master_cf)
        self.postfix.start()
        self.dovecot.install_config(snakeoil=True)
        self.dovecot.start()

    def deploy(self, count: int) -> tuple[lab.Certbot, str]:
        """Issue ``count`` lineages with certonly, deploy each with certbot install."""
        certbot = lab.Certbot(self.pebble, self.scratch / f"certbot-{count}")
        names = lineage_names(count)
        started = time.monotonic()
        for name in names:
            certbot.run("certonly", "-a", "standalone", "-d", name, *certbot.acme_args())
        for index, name in enumerate(names):
            # Verification after each install checks every deployed lineage on every
            # endpoint; skip it until the last install (which sets verify back to yes in
            # the plugin's state, so renewal verifies as it would in production).
            extra = ["--postfix-tls-verify", "no"] if index < len(names) - 1 else []
            certbot.run("install", "-i", "postfix-tls", "--cert-name", name, *extra,
                        *self.deploy_args())
        default = State.load(str(certbot.config_dir)).default
        if default is None:
            raise lab.LabError("the plugin recorded no default lineage")
        say(f"  issued and deployed {count} lineage(s) in {time.monotonic() - started:.1f} s;"
            f" default: {default}")
        return certbot, default

    def to_article(self, certbot: lab.Certbot, default: str) -> None:
        """Strategy B: live/ files, the plugin's hooks gone, a restart deploy hook."""
        config_dir = str(certbot.config_dir)
        hooks.remove_hooks(config_dir)
        hook = certbot.config_dir / "renewal-hooks" / "deploy" / RESTART_HOOK
        pidfile = os.path.join(self.dovecot.runtime_dir(), "master.pid")
        hook.write_text(
            "#!/bin/sh\n"
            "# The article's `systemctl restart postfix; systemctl restart dovecot`,"
            " without systemd.\n"
            "postfix stop >/dev/null 2>&1\n"
            "postfix start </dev/null >/dev/null 2>&1\n"
            f"pid=$(cat {pidfile} 2>/dev/null)\n"
            'if [ -n "$pid" ]; then\n'
            '  kill "$pid"\n'
            "  i=0\n"
            '  while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n'
            "fi\n"
            f"dovecot -c {self.dovecot.config_file} </dev/null >/dev/null 2>&1\n"
        )
        hook.chmod(0o755)
        # `certbot install` writes no installer into the renewal config; make sure.
        for conf in (certbot.config_dir / "renewal").glob("*.conf"):
            text = conf.read_text()
            stripped = re.sub(r"(?m)^installer = (?!None$).*\n", "", text)
            if stripped != text:
                conf.write_text(stripped)
                say(f"  removed the installer from {conf.name}")
        live = certbot.config_dir / "live" / default
        self.postfix.postconf(
            "-e",
            "smtpd_tls_chain_files=",
            f"smtpd_tls_cert_file={live / 'fullchain.pem'}",
            f"smtpd_tls_key_file={live / 'privkey.pem'}",
        )
        self.postfix.postconf("-X", "tls_server_sni_maps")
        overrides = [line for line in self.postfix.postconf("-P").splitlines()
                     if "smtpd_tls_chain_files" in line or "_cert_file" in line]
        if overrides:
            raise lab.LabError(f"master.cf overrides the certificate: {overrides}")
        # Dovecot already reads live/ files (the plugin's conf.d file names them).
        dovecot_files = "".join(p.read_text() for p in Path("/etc/dovecot/conf.d").glob("*.conf"))
        if f"{live}/fullchain.pem" not in dovecot_files:
            raise lab.LabError("Dovecot does not read the default lineage's live/ files")
        self.postfix.stop()
        self.postfix.start()
        served = lab_load.light_handshake(lab_load.mail_endpoints(ports=(25,))[0], default)
        if served != leaf_sha256(live):
            raise lab.LabError("after switching to live/ files Postfix serves another leaf")

    # -- one measured renewal ------------------------------------------------------------

    def measure(self, strategy: str, certbot: lab.Certbot, default: str, count: int) -> Row:
        row = Row(strategy, count)
        live = certbot.config_dir / "live" / default
        old_sha = leaf_sha256(live)
        postfix_offset, dovecot_offset = len(self.postfix.log()), len(self.dovecot.log())
        pids = (self.postfix.master_pid(), self.dovecot.master_pid())
        load = lab_load.HandshakeLoad(
            lab_load.mail_endpoints(ports=LOAD_PORTS), default, threads=self.args.threads,
            timeout=3.0, client=self.args.client, max_seconds=240,
        )
        sessions = MailSessions()
        say(f"  {STRATEGIES[strategy]}, {count} lineage(s): load on "
            f"{', '.join(map(str, LOAD_PORTS))}, {self.args.sessions} IMAP and "
            f"{self.args.pop3_sessions} POP3 sessions, renewing")
        with load:
            time.sleep(WARMUP_SECONDS)
            for port in LOAD_PORTS:
                if load.first_time_serving(old_sha, port) is None:
                    say(f"  warning: port {port} did not serve the current leaf during warm-up")
            noop, idle = MAIL_USERS
            for protocol, port, total in (("imap", IMAP_PORT, self.args.sessions),
                                          ("pop3", POP3_PORT, self.args.pop3_sessions)):
                sessions.open(protocol, total - total // 2, port, noop, "noop")
                sessions.open(protocol, total // 2, port, idle, "idle")
            started = time.monotonic()
            proc = certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                               *certbot.acme_args(), check=False)
            ended = time.monotonic()
            row.renew_seconds = ended - started
            if proc.returncode != 0:
                row.renew_error = (proc.stderr.strip().splitlines() or ["?"])[-1]
            new_sha = leaf_sha256(live)
            if new_sha == old_sha:
                row.renew_error = row.renew_error or "the default lineage was not renewed"
            # Keep the load and the sessions going: the new certificate must show up on
            # every port, and Dovecot cuts sessions a few seconds after a reload.
            time.sleep(self.args.seconds)
            row.sessions = sessions.close()
        row.load = load_results = load.stop()
        served = load_results.first_time_serving_everywhere(new_sha)
        row.new_cert_after_exit = None if served is None else served - ended
        stable = load_results.serving_only_everywhere_from(new_sha)
        row.only_new_after_exit = None if stable is None else stable - ended
        row.stale_after_new = sum(
            s.served_other_after(new_sha) for s in load_results.stats.values()
        )
        row.session_cut_offsets = [t - ended for t in row.sessions.cut_times()]
        for port, stats in load_results.stats.items():
            if stats.failed_at:
                row.failure_offsets[port] = (stats.failed_at[0] - ended,
                                             stats.failed_at[-1] - ended)
        time.sleep(0.5)  # postlogd writes asynchronously
        postfix_log = self.postfix.log()[postfix_offset:]
        dovecot_log = self.dovecot.log()[dovecot_offset:]
        row.postfix_reloads = postfix_log.count(POSTFIX_RELOAD)
        row.postfix_starts = postfix_log.count(POSTFIX_START)
        row.postfix_throttled = postfix_log.count(POSTFIX_THROTTLE)
        for message in re.findall(r"fatal: (.*)", postfix_log):
            if message not in row.postfix_fatal:
                row.postfix_fatal.append(message)
        row.dovecot_reloads = dovecot_log.count(DOVECOT_RELOAD)
        row.dovecot_starts = dovecot_log.count(DOVECOT_START)
        row.pids_unchanged = (self.postfix.master_pid() == pids[0],
                              self.dovecot.master_pid() == pids[1])
        return row

    def run(self, counts: list[int]) -> tuple[list[Row], dict[str, dict[int, float]]]:
        rows: list[Row] = []
        rates: dict[str, dict[int, float]] = {}
        strategies = self.args.strategy_list
        for count in counts:
            say(f"== {count} lineage(s)")
            self.fresh_daemons(f"{count}-lineages")
            certbot, default = self.deploy(count)
            if not rates and self.args.rate_seconds:
                say("  client rates, one thread per port")
                rates = self.client_rates(self.args.rate_seconds)
            if "A" in strategies:
                rows.append(self.measure("A", certbot, default, count))
            if "K" in strategies:
                self.set_sessions(certbot, default, "keep")
                rows.append(self.measure("K", certbot, default, count))
                self.set_sessions(certbot, default, "cut")  # B is the stock Dovecot
            if "B" in strategies:
                self.to_article(certbot, default)
                rows.append(self.measure("B", certbot, default, count))
        return rows, rates

    def client_rates(self, seconds: float) -> dict[str, dict[int, float]]:
        """Handshakes per second of each client, one thread on one port at a time."""
        rates: dict[str, dict[int, float]] = {}
        for client in ("light", "verify"):
            for endpoint in lab_load.mail_endpoints(ports=LOAD_PORTS):
                with lab_load.HandshakeLoad([endpoint], lab.LAB_HOSTNAME, threads=1,
                                            client=client, max_seconds=seconds + 5) as load:
                    time.sleep(seconds)
                stats = load.stop().stats[endpoint.port]
                rates.setdefault(client, {})[endpoint.port] = stats.rate
        return rates


# --- report ----------------------------------------------------------------------------


def fmt_seconds(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:+.2f}"


def markdown(rows: list[Row]) -> str:
    head = (
        ["strategy", "lineages"]
        + [f"{port}: attempted / failed" for port in LOAD_PORTS]
        + ["new cert on every port (s after certbot exit)", "Postfix reloads / restarts",
           "Dovecot reloads / restarts", "IMAP sessions cut", "POP3 sessions cut",
           "certbot renew (s)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        assert row.load is not None and row.sessions is not None
        cells = [STRATEGIES[row.strategy], str(row.lineages)]
        for port in LOAD_PORTS:
            stats = row.load.stats[port]
            cells.append(f"{stats.attempts} / {stats.failures}")
        cells += [
            fmt_seconds(row.new_cert_after_exit),
            f"{row.postfix_reloads} / {row.postfix_starts}",
            f"{row.dovecot_reloads} / {row.dovecot_starts}",
            f"{row.sessions.cut('imap')} of {row.sessions.opened('imap')}",
            f"{row.sessions.cut('pop3')} of {row.sessions.opened('pop3')}",
            f"{row.renew_seconds:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    out = []
    for row in rows:
        assert row.load is not None and row.sessions is not None
        notes = []
        if row.renew_error:
            notes.append(f"certbot renew: {row.renew_error}")
        for port in LOAD_PORTS:
            stats = row.load.stats[port]
            if stats.errors:
                first, last = row.failure_offsets[port]
                errors = "; ".join(f"{msg} x{n}" for msg, n in stats.errors.items())
                notes.append(f"port {port}: failures from {first:+.2f} s to {last:+.2f} s"
                             f" ({errors})")
        if row.stale_after_new:
            notes.append(f"{row.stale_after_new} handshake(s) still got the old leaf after the"
                         " new one was first served; only the new one from"
                         f" {fmt_seconds(row.only_new_after_exit)} s")
        report = row.sessions
        if report.cut():
            by_mode = ", ".join(f"{protocol} {mode} {report.cut(protocol, mode)}/"
                                f"{report.opened(protocol, mode)}"
                                for protocol in ("imap", "pop3") for mode in ("noop", "idle")
                                if report.opened(protocol, mode))
            offsets = row.session_cut_offsets
            notes.append(f"sessions cut ({by_mode}) between {offsets[0]:+.2f} s and"
                         f" {offsets[-1]:+.2f} s ({'; '.join(report.reasons())})")
        if row.postfix_throttled:
            notes.append(f"Postfix logged 'throttling' {row.postfix_throttled} time(s)")
        if row.postfix_fatal:
            notes.append("Postfix fatal: " + "; ".join(f"'{m}'" for m in row.postfix_fatal[:3]))
        postfix_same, dovecot_same = row.pids_unchanged
        notes.append(f"master PIDs unchanged: Postfix {'yes' if postfix_same else 'no'},"
                     f" Dovecot {'yes' if dovecot_same else 'no'}")
        rates = ", ".join(f"{port}: {row.load.stats[port].rate:.0f}/s" for port in LOAD_PORTS)
        notes.append(f"handshake rate {rates}")
        out.append(f"- {STRATEGIES[row.strategy]}, {row.lineages} lineage(s): "
                   + "; ".join(notes) + ".")
    return "\n".join(out)


def machine(certbot_version: str) -> str:
    return (
        f"Machine: {os.cpu_count()} CPU(s) (nproc {tool_version(['nproc'])}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"certbot {certbot_version}, "
        f"Postfix {tool_version(['postconf', '-h', 'mail_version'])}, "
        f"Dovecot {tool_version(['dovecot', '--version'])}, "
        f"{tool_version(['openssl', 'version'])}."
    )


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--lineages", default="1,10",
                        help="comma list of lineage counts to renew in one run (default 1,10)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long the load keeps running after certbot exits; Dovecot "
                             "cuts sessions ~6 s after a reload (default 10)")
    parser.add_argument("--threads", type=int, default=2,
                        help="client threads per port (default 2)")
    parser.add_argument("--sessions", type=int, default=10,
                        help="logged-in IMAP sessions held open on 993, half NOOP-ing every"
                             " second, half in IDLE (default 10)")
    parser.add_argument("--pop3-sessions", type=int, default=4,
                        help="logged-in POP3 sessions held open on 995, half NOOP-ing every"
                             " second, half silent (default 4)")
    parser.add_argument("--strategies", default="A,K,B",
                        help="comma list of A (plugin), K (plugin, sessions keep), B (article)"
                             " (default A,K,B)")
    parser.add_argument("--dovecot24", metavar="ROOT",
                        help="run Dovecot 2.4 from this Debian 13 chroot "
                             "(sh tools/debian13-chroot --check --suite trixie prints it)")
    parser.add_argument("--client", choices=("light", "verify"), default="light",
                        help="handshake client: light (default) or dialogues.handshake")
    parser.add_argument("--rate-seconds", type=float, default=1.5,
                        help="seconds per client and port for the client rate comparison"
                             " (0 to skip; default 1.5)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    try:
        args.counts = [int(n) for n in args.lineages.split(",") if n.strip()]
    except ValueError:
        parser.error("--lineages takes a comma list of numbers, e.g. 1,10")
    if not args.counts or min(args.counts) < 1 or max(args.counts) > 20:
        parser.error("--lineages: counts between 1 and 20")
    if not 1 <= args.threads <= 8:
        parser.error("--threads: between 1 and 8")
    if not 0 <= args.seconds <= 60 or not 0 <= args.rate_seconds <= 10:
        parser.error("--seconds: 0 to 60; --rate-seconds: 0 to 10")
    if not 0 <= args.sessions <= 20 or not 0 <= args.pop3_sessions <= 20:
        parser.error("--sessions, --pop3-sessions: 0 to 20 (two users, 10 each)")
    args.strategy_list = [s.strip().upper() for s in args.strategies.split(",") if s.strip()]
    if not args.strategy_list or set(args.strategy_list) - set(STRATEGIES):
        parser.error("--strategies: a comma list of A, K, B")
    if args.dovecot24 and not os.path.exists(f"{args.dovecot24}/usr/sbin/dovecot"):
        parser.error(f"--dovecot24: {args.dovecot24} has no /usr/sbin/dovecot")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-bench-"))
    bench = Bench(args, scratch)
    began = time.monotonic()
    try:
        bench.start()
        # While Dovecot 2.4's chroot is in place: `dovecot --version` names the one measured.
        about = machine(lab.Certbot(bench.pebble, scratch / "unused").version())
        rows, rates = bench.run(args.counts)
    except (lab.LabError, lab_load.LoadError, tls_client.VerifyError, OSError,
            imaplib.IMAP4.error, poplib.error_proto, subprocess.CalledProcessError) as exc:
        say(f"benchmark failed: {exc}")
        return 2
    finally:
        bench.stop()
        if args.keep:
            say(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(about)
    print(f"Load: {args.threads} thread(s) per port, {args.client} client, "
          f"{args.sessions} logged-in IMAP sessions on {IMAP_PORT} and {args.pop3_sessions}"
          f" POP3 sessions on {POP3_PORT} (half NOOP every second, half IDLE/silent),"
          f" {WARMUP_SECONDS:g} s warm-up, "
          f"{args.seconds:g} s after certbot exits.\n")
    print(markdown(rows))
    print()
    print(details(rows))
    if rates:
        print()
        print("Client rates, handshakes/s with one thread on one port at a time: " + "; ".join(
            f"{client}: " + ", ".join(f"{port} {rate:.0f}" for port, rate in per_port.items())
            for client, per_port in rates.items()))
    say(f"total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
