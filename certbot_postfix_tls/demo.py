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

from certbot_postfix_tls import lab, postfix, verify

NAME = lab.LAB_HOSTNAME
EXTRA_PORT = "2525"  # a non-standard listener, to show endpoints come from master.cf


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(title: str) -> None:
    _say(f"\n== {title}")


def _show_endpoints(expected: verify.ExpectedCert | None) -> None:
    config = postfix.Postfix().read()
    for endpoint in postfix.endpoints(config, "127.0.0.1"):
        where = f"{endpoint.label} {endpoint.address}:{endpoint.port} ({endpoint.tls})"
        try:
            shake = verify.handshake(endpoint, NAME)
        except verify.VerifyError as exc:
            _say(f"  {where}: {exc}")
            continue
        info = verify.describe_der(shake.leaf_der)
        verdict = ""
        if expected is not None:
            result = verify.check_endpoint(endpoint, expected, NAME, retry_seconds=2)
            verdict = f" -> {result.status}: {result.message}"
        _say(f"  {where}: serves {info}{verdict}")


def _config_bytes() -> tuple[bytes, bytes]:
    return Path("/etc/postfix/main.cf").read_bytes(), Path("/etc/postfix/master.cf").read_bytes()


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

        _step("2. Postfix with Debian's stock configuration, started on loopback")
        mta = lab.PostfixLab()
        main_cf, master_cf = lab.debian_stock_config()
        mta.install_config(main_cf, master_cf)
        mta.postconf("-M", f"{EXTRA_PORT}/inet={EXTRA_PORT} inet n - y - - smtpd")
        mta.start()
        cleanups.append(mta.stop)
        _say(f"  master pid {mta.master_pid()}; what each port serves before certbot:")
        _show_endpoints(None)

        _step(f"3. certbot run -a standalone -i postfix-tls -d {NAME}")
        certbot = lab.Certbot(pebble, scratch / "certbot")
        before = _config_bytes()
        started = time.monotonic()
        proc = certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", NAME,
                           *certbot.acme_args())
        _say(_indent(proc.stdout))
        _say(f"  (certbot {certbot.version()} took {time.monotonic() - started:.1f} s)")

        _step("4. What each port serves now (verified by handshake, SNI " + NAME + ")")
        expected = verify.ExpectedCert.from_fullchain(
            str(certbot.config_dir / "live" / NAME / "fullchain.pem")
        )
        _show_endpoints(expected)
        _say(f"  master pid {mta.master_pid()} (postfix reload, never a restart)")

        _step("5. certbot rollback --installer postfix-tls")
        certbot.run("rollback", "--installer", "postfix-tls")
        after = _config_bytes()
        same = "yes" if after == before else "NO"
        _say(f"  main.cf and master.cf restored byte for byte: {same}")
        _show_endpoints(None)
        _say("\nDone: the throwaway Postfix and Pebble are stopped and their files removed.")
        return 0 if after == before else 2
    except (lab.LabError, verify.VerifyError, OSError) as exc:
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
