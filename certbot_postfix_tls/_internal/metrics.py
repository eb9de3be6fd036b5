"""``verify --prometheus FILE``: the verdict in node_exporter's textfile-collector format.

The conventions are those of the certificate exporters (ssl_exporter,
x509-certificate-exporter): validity start and expiry as epoch gauges (alert
relative to the lifetime, as ``verify`` judges: docs/monitoring.md), 0/1 gauges
for what was observed, no client-side timestamps (the textfile collector
refuses them). Every label value comes from a bounded set: deployed lineage
names, the configured services, addresses and ports, the certificates' own
names, a few key algorithms. Nothing a server sends back ends up in a label.

Endpoints of a stopped service are probed too when metrics are written, so
each series stays present with ``endpoint_up 0`` instead of vanishing (an
absent series fires no alert).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from certbot import errors

from certbot_postfix_tls._internal import certs, findings, verify

PREFIX = "certbot_postfix_tls_"

# name -> help text; every family is a gauge.
FAMILIES = {
    "cert_not_after_seconds":
        "Expiry (Unix time) of the leaf certificate the endpoint served.",
    "cert_not_before_seconds":
        "Start of validity (Unix time) of the leaf certificate the endpoint served.",
    "served_matches_lineage":
        "1 if the endpoint served the lineage's deployed certificate, else 0.",
    "endpoint_up":
        "1 if the TLS handshake with the endpoint completed, else 0.",
    "lineage_not_after_seconds":
        "Expiry (Unix time) of the certificate deployed for the lineage.",
    "lineage_not_before_seconds":
        "Start of validity (Unix time) of the certificate deployed for the lineage.",
    "pending_reload":
        "1 if a renewal was deployed but the service was not reloaded successfully.",
    "last_verify_timestamp_seconds":
        "When certbot-postfix-tls verify last ran (Unix time).",
    "verify_status":
        "Verdict of certbot-postfix-tls verify: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
}


@dataclass
class Snapshot:
    """What one verify run found, as the metrics need it."""

    status: str  # OK, WARNING, CRITICAL or UNKNOWN
    timestamp: float
    results: Sequence[verify.EndpointResult] = ()
    # lineage name -> the certificate it should serve
    lineages: Mapping[str, verify.ExpectedCert] = field(default_factory=dict)
    services: Sequence[str] = ()  # configured services (postfix, dovecot)
    pending: Sequence[str] = ()  # services awaiting a reload


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _lineage_of(result: verify.EndpointResult, lineages: Mapping[str, verify.ExpectedCert]
                ) -> str:
    # Each check was made against one lineage's expected leaf: that names the lineage.
    for name, expected in lineages.items():
        if expected.leaf_sha256 == result.expected_sha256:
            return name
    return ""


def render(snapshot: Snapshot) -> str:
    """The textfile-collector text: HELP and TYPE, then the samples of each family."""
    samples: dict[str, dict[str, float]] = {name: {} for name in FAMILIES}

    def add(family: str, labels: list[tuple[str, str]], value: float) -> None:
        # Keyed by series: the format forbids two samples of one series.
        samples[family][_labels(labels)] = value

    for result in snapshot.results:
        endpoint = [
            ("lineage", _lineage_of(result, snapshot.lineages)),
            ("service", result.service),
            ("address", result.address),
            ("port", str(result.port)),
            ("sni", result.sni or ""),
        ]
        up = result.served_sha256 is not None
        add("endpoint_up", endpoint, 1 if up else 0)
        add("served_matches_lineage", endpoint,
            1 if up and result.served_sha256 == result.expected_sha256 else 0)
        served = [*endpoint, ("algorithm", result.served_algorithm or "other")]
        if result.served_not_after is not None:
            add("cert_not_after_seconds", served, result.served_not_after.timestamp())
        if result.served_not_before is not None:
            add("cert_not_before_seconds", served, result.served_not_before.timestamp())
    for name, expected in snapshot.lineages.items():
        add("lineage_not_after_seconds", [("lineage", name)], expected.not_after.timestamp())
        if expected.not_before is not None:
            add("lineage_not_before_seconds", [("lineage", name)],
                expected.not_before.timestamp())
    for service in snapshot.services:
        add("pending_reload", [("service", service)], 1 if service in snapshot.pending else 0)
    add("last_verify_timestamp_seconds", [], snapshot.timestamp)
    add("verify_status", [], findings.EXIT_CODES[snapshot.status])

    lines: list[str] = []
    for family, help_text in FAMILIES.items():
        if not samples[family]:
            continue
        name = PREFIX + family
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{labels} {_number(value)}"
                  for labels, value in sorted(samples[family].items())]
    return "\n".join(lines) + "\n"


def write(path: str, snapshot: Snapshot) -> None:
    """Render and replace ``path`` atomically (temporary file and rename in the same
    directory: the collector never reads half a file), mode 0644 for the exporter.
    The temporary name ends in ``.tmp``, which the collector ignores."""
    text = render(snapshot)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        # Not created here: a directory made by this user may not be readable by the
        # exporter, which would then silently export nothing.
        raise errors.Error(
            f"The metrics directory {directory} does not exist: create it (the textfile "
            "collector's --collector.textfile.directory) or choose another --prometheus path."
        )
    try:
        certs.write_atomic(os.path.abspath(path), text.encode(), mode=0o644)
    except OSError as exc:
        raise errors.Error(
            f"Cannot write the metrics file {path}: {exc.strerror or exc}; give this user "
            "write access to its directory or choose another --prometheus path."
        ) from None
