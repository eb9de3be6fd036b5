"""verify --prometheus: the textfile format, checked by promtool and read by a real
node_exporter; atomic replacement; failures as one sentence."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trustme
from certbot import errors
from cryptography import x509
from lab.metrics import labels_of, node_exporter, parse, promtool_check, scrape, values

from certbot_postfix_tls._internal import certs, metrics, verify

# --- fixtures: real certificates, results as verify makes them ------------------

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _leaf(ca: trustme.CA, name: str, key_type: trustme.KeyType) -> x509.Certificate:
    cert = ca.issue_cert(name, key_type=key_type).cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(cert)


def _result(port: int, sni: str | None, expected: str, served: x509.Certificate | None,
            served_sha256: str | None) -> verify.EndpointResult:
    return verify.EndpointResult(
        service="postfix", address="127.0.0.1", port=port, tls="starttls", sni=sni,
        status="OK" if served_sha256 == expected else "CRITICAL",
        served_sha256=served_sha256, expected_sha256=expected, chain_complete=None,
        name_matches=None, days_left=None, message="",
        served_not_after=verify._not_after(served) if served is not None else None,
        served_not_before=certs.not_before(served) if served is not None else None,
        served_algorithm=verify.key_algorithm(served) if served is not None else "",
    )


def _snapshot() -> metrics.Snapshot:
    ca = trustme.CA()
    good = _leaf(ca, "mail.example.org", trustme.KeyType.ECDSA)
    other = _leaf(ca, "stale.example.net", trustme.KeyType.RSA)
    good_sha = verify._sha256(good.public_bytes(verify.Encoding.DER))
    other_sha = verify._sha256(other.public_bytes(verify.Encoding.DER))
    expected = verify.ExpectedCert(good_sha, (), ("mail.example.org",), verify._not_after(good),
                                   certs.not_before(good))
    return metrics.Snapshot(
        status="CRITICAL",
        timestamp=NOW.timestamp() + 0.25,
        results=[
            _result(25, None, good_sha, good, good_sha),
            _result(25, "mail.example.org", good_sha, good, good_sha),
            _result(2526, "mail.example.org", good_sha, other, other_sha),  # another cert
            _result(587, "mail.example.org", good_sha, None, None),  # refused
        ],
        lineages={"mail.example.org": expected},
        services=["dovecot", "postfix"],
        pending=["postfix"],
    )


def test_render_follows_the_exporters_conventions() -> None:
    snapshot = _snapshot()
    text = metrics.render(snapshot)
    samples = parse(text)
    for family in metrics.FAMILIES:
        assert f"# HELP {metrics.PREFIX}{family} " in text
        assert f"# TYPE {metrics.PREFIX}{family} gauge" in text
    good = snapshot.lineages["mail.example.org"]
    # Epoch gauges, the served leaf's key algorithm as a label.
    assert values(samples, "cert_not_after_seconds", port="25", sni="") == [
        good.not_after.timestamp()]
    assert labels_of(samples, "cert_not_after_seconds")[0].keys() == {
        "lineage", "service", "address", "port", "sni", "algorithm"}
    assert values(samples, "cert_not_after_seconds", port="25", algorithm="ecdsa-p256")
    assert values(samples, "cert_not_after_seconds", port="2526", algorithm="rsa2048")
    assert not values(samples, "cert_not_after_seconds", port="587")  # nothing served
    # The start of validity too, with the same labels: alert rules relative to the lifetime.
    assert values(samples, "cert_not_before_seconds", port="25", sni="") == [
        good.not_before.timestamp()]
    assert labels_of(samples, "cert_not_before_seconds") == labels_of(
        samples, "cert_not_after_seconds")
    assert values(samples, "lineage_not_before_seconds", lineage="mail.example.org") == [
        good.not_before.timestamp()]
    assert values(samples, "lineage_not_after_seconds", lineage="mail.example.org") == [
        good.not_after.timestamp()]
    assert values(samples, "served_matches_lineage", port="25") == [1, 1]
    assert values(samples, "served_matches_lineage", port="2526") == [0]
    assert values(samples, "served_matches_lineage", port="587") == [0]
    assert values(samples, "endpoint_up", port="2526") == [1]
    assert values(samples, "endpoint_up", port="587") == [0]
    assert values(samples, "pending_reload", service="postfix") == [1]
    assert values(samples, "pending_reload", service="dovecot") == [0]
    assert values(samples, "verify_status") == [2]
    assert values(samples, "last_verify_timestamp_seconds") == [NOW.timestamp() + 0.25]
    # Bounded labels: no message, fingerprint or server-supplied text.
    for labels in (dict(labels) for _, labels in samples):
        assert set(labels) <= {"lineage", "service", "address", "port", "sni", "algorithm"}
    assert "sha256" not in text.replace("served_sha256", "")


def test_promtool_accepts_the_file() -> None:
    proc = promtool_check(metrics.render(_snapshot()))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_without_endpoints_is_valid_too() -> None:
    text = metrics.render(metrics.Snapshot("UNKNOWN", NOW.timestamp()))
    assert parse(text) == {("verify_status", frozenset()): 3,
                           ("last_verify_timestamp_seconds", frozenset()): NOW.timestamp()}
    proc = promtool_check(text)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_label_values_are_escaped() -> None:
    snapshot = _snapshot()
    odd = 'we"ird\\name\nx'
    snapshot.lineages = {odd: snapshot.lineages["mail.example.org"]}
    text = metrics.render(snapshot)
    assert values(parse(text), "lineage_not_after_seconds", lineage=odd)
    assert promtool_check(text).returncode == 0


def test_node_exporter_serves_the_file(tmp_path: Path) -> None:
    """The real textfile collector reads the file without error; a scrape has every
    family; the temporary file of an atomic write is never read."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    target = directory / "certbot-postfix-tls.prom"
    metrics.write(str(target), _snapshot())
    (directory / ".certbot-postfix-tls.prom.tmp").write_text("garbage{\n")  # a write cut short
    with node_exporter(str(directory)) as url:
        text = scrape(url)
    assert 'node_textfile_scrape_error 0' in text
    assert parse(text) == parse(target.read_text())
    assert f'node_textfile_mtime_seconds{{file="{target}"}}' in text


def test_write_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "certbot-postfix-tls.prom"
    target.write_text("old\n")
    old_inode = target.stat().st_ino
    metrics.write(str(target), _snapshot())
    assert target.stat().st_ino != old_inode  # a new file renamed over the old one
    assert target.stat().st_mode & 0o777 == 0o644  # the exporter's user reads it
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert values(parse(target.read_text()), "verify_status") == [2]


def test_write_failures_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(errors.Error, match=r"metrics directory .*/nowhere does not exist"):
        metrics.write(str(tmp_path / "nowhere" / "x.prom"), _snapshot())
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(errors.Error, match="Cannot write the metrics file .*locked"):
            metrics.write(str(locked / "x.prom"), _snapshot())


def test_key_algorithm_labels() -> None:
    ca = trustme.CA()
    assert verify.key_algorithm(_leaf(ca, "a.example", trustme.KeyType.ECDSA)) == "ecdsa-p256"
    assert verify.key_algorithm(_leaf(ca, "a.example", trustme.KeyType.RSA)) == "rsa2048"


DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


def test_the_metrics_module_names_match_the_docs() -> None:
    """Every family the module writes is documented for operators."""
    docs = DOCS.read_text()
    for family in metrics.FAMILIES:
        assert metrics.PREFIX + family in docs, family


def test_documented_alerting_rules_are_valid(tmp_path: Path) -> None:
    """promtool accepts the alerting rules docs/monitoring.md gives, and each names
    one of the metrics."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus; see tools/bootstrap)")
    section = DOCS.read_text().split("### Alerts", 1)[1]
    rules = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "rules.yml"
    path.write_text(rules)
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exprs = re.findall(r"expr: (.*)", rules)
    assert exprs and all(metrics.PREFIX in expr for expr in exprs)
