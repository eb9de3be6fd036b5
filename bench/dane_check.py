"""``certbot-postfix-tls dane check`` with one held lineage of N names.

In the lab's private namespaces: Pebble, Postfix, Knot signing example.org and
Unbound validating it (tests/lab/dns.py), with a UDP relay in front of Knot that
delays every packet by half the round-trip time given (``--rtt``): the
resolver's queries then cost what they cost on the Internet, and the lookups'
parallelism shows. One lineage with N names (mail.example.org, mail1..) is
deployed, ``3 1 1`` published for its key on port 25 of every name, and renewed
with a new key: it is held. Then the new records are published and timed:

- ``dane check`` while the records are new (lookups only: still held),
- ``dane check`` twice their TTL later (lookups, rebuild, one reload, verify),
- the lookups alone (``dane.lookup.lookup``), one at a time and side by side.

Every measurement starts with the resolver's cache expired (TTL 2 s).

    sudo .venv/bin/python bench/dane_check.py --names 50 --rtt 50
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The lab (namespace, Pebble, throwaway daemons) is test equipment under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import lab  # noqa: E402
from lab import dns as labdns  # noqa: E402

from certbot_postfix_tls._internal import certs  # noqa: E402
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dane import lookup, records  # noqa: E402
from certbot_postfix_tls._internal.state import State  # noqa: E402

RELAY = "127.0.0.52"


class Relay:
    """UDP relay RELAY:53 -> Knot, each direction delayed by rtt/2."""

    def __init__(self, rtt: float) -> None:
        self.delay = rtt / 2
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RELAY, 53))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            threading.Thread(target=self._forward, args=(data, peer), daemon=True).start()

    def _forward(self, data: bytes, peer: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            upstream.settimeout(5)
            time.sleep(self.delay)
            upstream.sendto(data, (labdns.AUTHORITATIVE, 53))
            try:
                reply = upstream.recv(65535)
            except OSError:
                return
            time.sleep(self.delay)
            self.sock.sendto(reply, peer)


def tlsa_of(config_dir: Path, name: str) -> str:
    chain = certs.load_pem_chain((config_dir / "live" / name / "fullchain.pem").read_bytes())
    return records.Record.for_cert(chain[0]).text()


def cli(certbot: lab.Certbot, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "certbot_postfix_tls", "--config-dir",  # noqa: S603
                           str(certbot.config_dir), *args],
                          capture_output=True, text=True, timeout=600, check=False)
    return time.monotonic() - started, proc


def cache_expires() -> None:
    time.sleep(labdns.TTL + 0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=50, help="names of the lineage (50)")
    parser.add_argument("--rtt", type=float, default=50.0,
                        help="round trip resolver <-> authoritative server, ms (50)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-dane-"))
    lab.enter_private_namespace(scratch / "namespace")
    hosts = ["mail"] + [f"mail{i}" for i in range(1, args.names)]
    names = [f"{host}.{labdns.ZONE}" for host in hosts]
    pebble = lab.Pebble(scratch / "pebble")
    pebble.start()
    mta = lab.PostfixLab()
    mta.install_config(*lab.debian_stock_config())
    mta.start()
    relay = Relay(args.rtt / 1000)
    dnslab = labdns.DnsLab(scratch / "dns", hosts={h: "127.0.0.1" for h in hosts},
                           upstream=RELAY)
    try:
        dnslab.start()
        dnslab.use_as_system_resolver()
        certbot = lab.Certbot(pebble, scratch / "certbot", dane="auto")
        domains = [arg for name in names for arg in ("-d", name)]
        certbot.run("certonly", "-a", "standalone", *domains, *certbot.acme_args())
        certbot.run("install", "-i", "postfix-tls", "--cert-name", names[0],
                    "--postfix-tls-services", "postfix")
        old = tlsa_of(certbot.config_dir, names[0])
        dnslab.update(add=tuple((f"_25._tcp.{h}", "TLSA", old) for h in hosts),
                      delete=tuple((f"_25._tcp.{h}", "TLSA") for h in hosts))
        cache_expires()
        certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                    *certbot.acme_args())
        state = State.load(str(certbot.config_dir))
        if not state.lineages[names[0]].held:
            raise SystemExit("the renewal was not held: nothing to measure")
        new = tlsa_of(certbot.config_dir, names[0])
        dnslab.update(add=tuple((f"_25._tcp.{h}", "TLSA", r) for h in hosts for r in (old, new)),
                      delete=tuple((f"_25._tcp.{h}", "TLSA") for h in hosts))
        ports = records.smtp_ports(Postfix().read())
        lookups = len(names) * len(ports)
        cache_expires()
        waiting, first = cli(certbot, "dane", "check")
        if first.returncode != 1:
            raise SystemExit(f"dane check should still hold: {first.stdout}{first.stderr}")
        time.sleep(2 * labdns.TTL)
        cache_expires()
        activating, second = cli(certbot, "dane", "check")
        if second.returncode != 0 or "activated" not in second.stdout:
            raise SystemExit(f"dane check did not activate: {second.stdout}{second.stderr}")
        alone = {}
        for parallel in (1, lookup.PARALLEL_LOOKUPS):
            lookup.PARALLEL_LOOKUPS = parallel
            cache_expires()
            started = time.monotonic()
            found = lookup.lookup(names, ports)
            alone[parallel] = time.monotonic() - started
            if sum(1 for f in found if f.status == lookup.SECURE) != len(names):
                raise SystemExit("the lookups did not all come back validated")
        print(f"{len(names)} names x ports {', '.join(map(str, ports))} = {lookups} TLSA "
              f"lookups, resolver <-> authoritative RTT {args.rtt:.0f} ms")
        print("| measurement | seconds |")
        print("|---|---|")
        print(f"| `dane check`, records new (still held) | {waiting:.2f} |")
        print(f"| `dane check`, 2 x TTL later (activates: rebuild, reload, verify) | "
              f"{activating:.2f} |")
        print(f"| lookups alone, one at a time | {alone[1]:.2f} |")
        print(f"| lookups alone, {lookup.PARALLEL_LOOKUPS} side by side | "
              f"{alone[lookup.PARALLEL_LOOKUPS]:.2f} |")
    finally:
        dnslab.stop()
        relay.sock.close()
        mta.stop()
        pebble.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
