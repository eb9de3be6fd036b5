"""``certbot-postfix-tls demo``: the whole job on loopback, no domain needed.

Everything runs in the lab's private namespaces (see lab.py): a local Pebble
ACME server, a throwaway Postfix (and Dovecot when installed) with Debian's
stock configuration, and the real certbot with this plugin. The machine's
own mail system and /etc are never touched; the scratch directory is removed
at the end.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lab
from certbot_postfix_tls._internal import certs, dialogues, services, tls_client, verify
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.postfix import listeners as postfix_listeners
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.state import State
from lab import load as lab_load
from lab.dovecot import DovecotLab

NAME = lab.LAB_HOSTNAME
EXTRA_PORT = "2525"  # a non-standard listener, to show endpoints come from master.cf


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(title: str) -> None:
    _say(f"\n== {title}")


def _endpoints(with_dovecot: bool) -> list[tls_client.Endpoint]:
    found = postfix_listeners.endpoints(Postfix().read(), "127.0.0.1")
    if with_dovecot:
        found += Dovecot().effective_endpoints("127.0.0.1")
    return found


def _show_endpoints(expected: verify.ExpectedCert | None, with_dovecot: bool) -> None:
    for endpoint in _endpoints(with_dovecot):
        where = f"{endpoint.label} {endpoint.address}:{endpoint.port} ({endpoint.tls})"
        try:
            shake = dialogues.handshake(endpoint, NAME)
        except tls_client.VerifyError as exc:
            _say(f"  {where}: {exc}")
            continue
        info = verify.describe_der(shake.leaf_der)
        verdict = ""
        if expected is not None:
            result = verify.check_endpoint(endpoint, expected, NAME, retry_seconds=2)
            verdict = f" -> {result.status}: {result.message}"
        _say(f"  {where}: serves {info}{verdict}")


def _config_bytes(with_dovecot: bool) -> dict[str, bytes]:
    """The files a rollback must restore byte for byte."""
    paths = [Path("/etc/postfix/main.cf"), Path("/etc/postfix/master.cf")]
    if with_dovecot:
        paths += sorted(p for p in Path("/etc/dovecot").rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in paths}


def _renew_under_load(certbot: lab.Certbot, mta: lab.PostfixLab, imap: DovecotLab | None) -> None:
    """Renew while clients keep handshaking; count failures, reloads, time to new cert."""
    state = State.load(str(certbot.config_dir))
    wanted = {25, 587, 993}
    endpoints = [e for e in services.endpoints(state) if e.port in wanted]
    postfix_reloads = mta.log().count("reload -- version")
    dovecot_reloads = imap.log().count("SIGHUP received") if imap else 0
    with lab_load.HandshakeLoad(endpoints, NAME, threads=2, max_seconds=120) as load:
        time.sleep(1)
        started = time.monotonic()
        certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                    *certbot.acme_args())
        ended = time.monotonic()
        time.sleep(2)
    results = load.stop()
    new_leaf = certs.load_material(
        certs.Lineage.from_live_dir(str(certbot.config_dir / "live" / NAME),
                                    str(certbot.config_dir))
    ).leaf_sha256
    time.sleep(0.5)  # postlogd writes asynchronously
    for port, stats in sorted(results.stats.items()):
        why = "; ".join(f"{count}x {error}" for error, count in stats.errors.items())
        _say(f"  port {port}: {stats.attempts} handshakes attempted, {stats.failures} failed"
             + (f" ({why})" if why else ""))
    served_at = results.first_time_serving_everywhere(new_leaf)
    if served_at is None:
        _say("  the new certificate was NOT served on every port")
    else:
        lead = ended - served_at
        when = f"{lead:.2f} s before" if lead >= 0 else f"{-lead:.2f} s after"
        _say(f"  new certificate served on every port {when} certbot exited (certbot renew "
             f"took {ended - started:.1f} s, its post hook verifies before it returns)")
    _say(f"  reloads: Postfix {mta.log().count('reload -- version') - postfix_reloads}"
         + (f", Dovecot {imap.log().count('SIGHUP received') - dovecot_reloads}" if imap else "")
         + f"; master pids {mta.master_pid()}"
         + (f", {imap.master_pid()}" if imap else "") + " unchanged")


def _indent(text: str) -> str:
    """certbot's output without its closing banner (donations, 'enabled HTTPS')."""
    lines = []
    for line in text.strip().splitlines():
        if line.startswith(("Congratulations", "- - -")):
            break
        lines.append(f"  | {line}")
    return "\n".join(lines)


def run(keep: bool = False) -> int:
    """Run the demo; returns the exit code."""
    scratch = Path(tempfile.mkdtemp(prefix="certbot-postfix-tls-demo-"))
    cleanups: list[Callable[[], None]] = []
    try:
        lab.enter_private_namespace(scratch / "namespace")
        _say("certbot-postfix-tls demo: everything below runs in a private mount and network")
        _say("namespace; this machine's /etc/postfix, /etc/letsencrypt and mail ports stay as")
        _say("they are.")

        _step("1. A local ACME server (Pebble) with a throwaway CA")
        pebble = lab.Pebble(scratch / "pebble")
        pebble.start()
        cleanups.append(pebble.stop)
        _say(f"  {pebble.directory_url}")

        _step("2. Postfix and Dovecot with Debian's stock configuration, on loopback")
        mta = lab.PostfixLab()
        main_cf, master_cf = lab.debian_stock_config()
        mta.install_config(main_cf, master_cf)
        mta.postconf("-M", f"{EXTRA_PORT}/inet={EXTRA_PORT} inet n - y - - smtpd")
        mta.start()
        cleanups.append(mta.stop)
        imap: DovecotLab | None = None
        if shutil.which("dovecot", path="/usr/sbin:/usr/bin") is not None:
            imap = DovecotLab()
            imap.install_config(snakeoil=True)
            imap.start()
            cleanups.append(imap.stop)
            _say(f"  Postfix master pid {mta.master_pid()}, Dovecot master pid "
                 f"{imap.master_pid()}")
        else:
            _say(f"  Postfix master pid {mta.master_pid()} (Dovecot is not installed)")
        _say("  what each port serves before certbot (Debian's snakeoil, or nothing):")
        _show_endpoints(None, imap is not None)

        _step(f"3. certbot run -a standalone -i postfix-tls -d {NAME}")
        certbot = lab.Certbot(pebble, scratch / "certbot")
        before = _config_bytes(imap is not None)
        started = time.monotonic()
        proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                           *certbot.acme_args())
        _say(_indent(proc.stdout))
        _say(f"  (the demo has no DNS, so its deploys carry --postfix-tls-dane ignore, from "
             f"{certbot.cli_ini()}: without it every TLSA lookup would fail and the renewal "
             "below would be held, as on a server whose resolver is down)")
        _say(f"  (certbot {certbot.version()} took {time.monotonic() - started:.1f} s)")

        _step("4. What each port serves now (verified by handshake, SNI " + NAME + ")")
        expected = verify.ExpectedCert.from_fullchain(
            str(certbot.config_dir / "live" / NAME / "fullchain.pem")
        )
        _show_endpoints(expected, imap is not None)
        _say(f"  Postfix master pid {mta.master_pid()}"
             + (f", Dovecot master pid {imap.master_pid()}" if imap else "")
             + " (reloaded, never restarted)")

        _step("5. certbot renew --force-renewal, under load (handshakes on 25, 587, 993)")
        _renew_under_load(certbot, mta, imap)

        _step("6. certbot rollback --installer postfix-tls --checkpoints 1")
        certbot.run("rollback", "--installer", "postfix-tls")
        after = _config_bytes(imap is not None)
        same = "yes" if after == before else "NO"
        _say(f"  main.cf, master.cf{' and /etc/dovecot' if imap else ''} restored byte for "
             f"byte: {same}")
        _show_endpoints(None, imap is not None)
        _say("\nDone: the throwaway Postfix and Pebble are stopped and their files removed.")
        return 0 if after == before else 2
    except (lab.LabError, tls_client.VerifyError, OSError) as exc:
        _say(f"demo failed: {exc}")
        return 2
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        if keep:
            _say(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run())
