"""Deploy and renewal time for N lineages on one server.

For each N: issue N certificates from Pebble, deploy each with
``certbot install -i postfix-tls`` (one install per lineage, as an operator
adding hosted domains would), then renew them all in one
``certbot renew --force-renewal`` run. Reports wall times, reloads per
service counted from the daemons' own logs, and whether every name is then
served by SNI on every endpoint. Runs in the lab's private namespaces.

    sudo .venv/bin/python bench/sni_scale.py --lineages 1,10,50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The lab (namespace, Pebble, throwaway daemons) is test equipment under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import lab  # noqa: E402
from lab.dovecot import DovecotLab  # noqa: E402

from certbot_postfix_tls._internal import services  # noqa: E402
from certbot_postfix_tls._internal.state import State  # noqa: E402


def names_for(count: int) -> list[str]:
    return [lab.LAB_HOSTNAME] + [f"mail{i}.example.net" for i in range(1, count)]


@dataclass
class Row:
    lineages: int
    deploy_s: float
    renew_s: float
    postfix_reloads: int
    dovecot_reloads: int
    checks: int
    checks_ok: int


def one_round(count: int, scratch: Path, pebble: lab.Pebble) -> Row:
    mta = lab.PostfixLab()
    main_cf, master_cf = lab.debian_stock_config()
    mta.install_config(main_cf, master_cf)
    Path(mta.log_file).unlink(missing_ok=True)
    mta.start()
    imap = DovecotLab()
    imap.install_config(snakeoil=True)
    Path(imap.log_file).unlink(missing_ok=True)
    imap.start()
    try:
        certbot = lab.Certbot(pebble, scratch / f"certbot-{count}")
        names = names_for(count)
        for name in names:
            certbot.run("certonly", "-a", "standalone", "-d", name, *certbot.acme_args())
        started = time.monotonic()
        for name in names:
            certbot.run("install", "-i", "postfix-tls", "--cert-name", name)
        deployed = time.monotonic() - started
        reloads_before = mta.log().count("reload -- version"), imap.log().count("SIGHUP received")
        started = time.monotonic()
        certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                    *certbot.acme_args())
        renewed = time.monotonic() - started
        time.sleep(1)  # postlogd writes asynchronously
        state = State.load(str(certbot.config_dir))
        results = services.check_all(state, retry_seconds=0)
        return Row(
            lineages=count,
            deploy_s=deployed,
            renew_s=renewed,
            postfix_reloads=mta.log().count("reload -- version") - reloads_before[0],
            dovecot_reloads=imap.log().count("SIGHUP received") - reloads_before[1],
            checks=len(results),
            checks_ok=sum(r.status == "OK" for r in results),
        )
    finally:
        imap.stop()
        mta.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lineages", default="1,10,50")
    args = parser.parse_args()
    counts = [int(n) for n in args.lineages.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bench-sni-"))
    lab.enter_private_namespace(scratch / "namespace")
    pebble = lab.Pebble(scratch / "pebble")
    pebble.start()
    rows = []
    try:
        for count in counts:
            rows.append(one_round(count, scratch, pebble))
            print(f"done: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        pebble.stop()
    print("| lineages | deploy all (s) | per install (s) | renew all (s) | Postfix reloads "
          "| Dovecot reloads | SNI checks OK after renewal |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.lineages} | {row.deploy_s:.1f} | {row.deploy_s / row.lineages:.1f} "
              f"| {row.renew_s:.1f} | {row.postfix_reloads} | {row.dovecot_reloads} "
              f"| {row.checks_ok} of {row.checks} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
