"""Reading what the plugin writes for Prometheus: parse, promtool, a real node_exporter.

Shared by the unit tests of the exporter's format and the lab's monitoring tests.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from certbot_postfix_tls._internal import metrics

Series = tuple[str, frozenset[tuple[str, str]]]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str, prefix: str = metrics.PREFIX) -> dict[Series, float]:
    """The samples of the families named ``prefix*``: {(name, labels): value}."""
    found: dict[Series, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or not match.group(1).startswith(prefix):
            continue
        labels = frozenset(
            (key, re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value))
            for key, value in _LABEL.findall(match.group(2) or "")
        )
        found[(match.group(1)[len(prefix):], labels)] = float(match.group(3))
    return found


def values(samples: dict[Series, float], family: str, **where: str) -> list[float]:
    """The values of one family, for the series whose labels include ``where``."""
    wanted = set(where.items())
    return [value for (name, labels), value in samples.items()
            if name == family and wanted <= labels]


def labels_of(samples: dict[Series, float], family: str) -> list[dict[str, str]]:
    """The label sets of one family, one dict per series."""
    return [dict(labels) for (name, labels) in samples if name == family]


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """promtool check metrics on text (skips when promtool is missing)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; see tools/bootstrap)")
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def node_exporter(directory: str, port: int = 0) -> Iterator[str]:
    """A real prometheus-node-exporter with only its textfile collector, reading
    ``directory``, on loopback; yields its /metrics URL and stops it by pid."""
    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        pytest.skip("prometheus-node-exporter is not installed (see tools/bootstrap)")
    port = port or _free_port()
    proc = subprocess.Popen(  # noqa: S603
        [binary, "--collector.disable-defaults", "--collector.textfile",
         f"--collector.textfile.directory={directory}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"node_exporter did not start: {proc.stderr.read() if proc.stderr else ''}"
                    ) from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def scrape(url: str) -> str:
    """GET a loopback URL."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return response.read().decode()
