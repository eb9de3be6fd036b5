"""One verdict per TLS port: ``verify``'s per lineage and name when the plugin deployed
something, else one per probed port of what is configured."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from certbot import errors

from certbot_postfix_tls._internal import certs, daemons, expiry, services, tls_client, verify
from certbot_postfix_tls._internal.doctor.certificates import (
    chain_complete,
    load_der,
    newest,
    serving_setting,
)
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.tls_client import Endpoint, VerifyError


def reload_of(endpoint: Endpoint) -> str:
    """The command that makes the endpoint's daemon load its files again."""
    return daemons.by_name(endpoint.service).advice.reload


def endpoint_results(context: Context) -> list[verify.EndpointResult]:
    """One verdict per probed port, for ``verify`` and ``doctor`` without a deployment:
    what it served (or why it failed), chain, expiry, and whether it is its lineage's
    newest certificate."""
    results = []
    now = datetime.now(timezone.utc)
    for item in context.probes:
        endpoint = item.endpoint
        base: dict[str, Any] = dict(
            service=endpoint.service, address=endpoint.address, port=endpoint.port,
            tls=endpoint.tls, sni=None, endpoint=endpoint)
        if item.shake is None:
            error = item.error or VerifyError("no handshake")
            result = verify.EndpointResult(
                **base, status="CRITICAL", served_sha256=None, expected_sha256="",
                chain_complete=None, name_matches=None, days_left=None, message=str(error),
                kind=error.kind)
            lines = verify.summarize([result])
            result.message = lines[0] if lines else str(error)
            results.append(result)
            continue
        leaf = load_der(item.shake.leaf_der)
        served = certs.sha256_hex(item.shake.leaf_der)
        setting = serving_setting(context, item)
        latest = newest(context, setting) if setting else None
        expected = latest.sha256 if latest is not None else served
        end = certs.not_after(leaf) if leaf is not None else None
        judged = expiry.judge(certs.not_after(leaf), certs.not_before(leaf), now) \
            if leaf is not None else None
        days = judged.days_left if judged else None
        complete = chain_complete(item.shake)
        problems = []
        if not complete:
            problems.append("serves the certificate without its intermediate")
        if expected != served and latest is not None and end and end < latest.not_after:
            problems.append("serves an older certificate than its lineage's newest "
                            f"(renewed, not loaded: {reload_of(endpoint)})")
        if judged is not None and judged.status == "CRITICAL":
            problems.append(f"serves a certificate that {judged.reason()}")
        where = tls_client.where_of(endpoint)
        if problems:
            status, message = "CRITICAL", f"{where} {'; '.join(problems)}."
        elif judged is not None and judged.status == "WARNING":
            status = "WARNING"
            message = f"{where} serves a certificate that {judged.reason()}."
        else:
            status = "OK"
            valid = expiry.duration(judged.left) if judged else "an unknown time"
            message = (f"{where} serves {verify.describe_der(item.shake.leaf_der)} with its chain "
                       f"over {item.shake.protocol or 'TLS'}, valid for {valid} more.")
        results.append(verify.EndpointResult(
            **base, status=status, served_sha256=served, expected_sha256=expected,
            chain_complete=complete, name_matches=None, days_left=days, message=message,
            kind="ok" if status == "OK" else "diagnosed", served_not_after=end,
            served_not_before=certs.not_before(leaf) if leaf is not None else None,
            served_algorithm=verify.key_algorithm(leaf) if leaf is not None else ""))
    return results


def judge(context: Context) -> None:
    """Fill ``context.results``: verify's handshakes per lineage name when deployed (or
    ``results_error``, why they could not run), else the probed ports' verdicts."""
    if not context.deployed:
        context.results = endpoint_results(context)
        return
    try:
        context.results = services.check_all(context.state,
                                             endpoints_to_check=context.endpoints,
                                             retry_seconds=0)
    except (errors.Error, VerifyError) as exc:
        context.results_error = str(exc)
