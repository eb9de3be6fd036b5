"""``certbot-postfix-tls doctor``: the usual mail-TLS failures, each as a check.

The checks follow the troubleshooting list mail administrators work through by
hand: key permissions (the deployed keys, and any key under archive/ that others or
the key group can read), 587 without mandatory TLS, an incomplete chain, AUTH
offered before TLS (or not at all), port 25 refusing plaintext, expiry,
missing, altered or stale hooks (an interpreter or package gone), a renewal
left unreloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from certbot import errors

from certbot_postfix_tls._internal import hooks, permissions, postfix, services, verify
from certbot_postfix_tls._internal.state import State


@dataclass
class Check:
    name: str
    status: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


def _key_checks(state: State) -> list[Check]:
    result = []
    for name, lineage in sorted(state.lineages.items()):
        problems = permissions.key_problems(lineage.key_path, lineage.key_group)
        other_readable = any("every user on the machine" in p for p in problems)
        status = "CRITICAL" if other_readable else ("WARNING" if problems else "OK")
        message = "; ".join(problems) or (
            f"{lineage.key_path}: root and group {lineage.key_group} only"
        )
        result.append(Check(f"key-permissions {name}", status, message))
    return result


def _exposure_checks(config_dir: str, state: State) -> list[Check]:
    """Every private key under archive/ that others, or a key group it was not
    deployed for, can read: one check each, with the chmod that fixes it."""
    deployed = {name: lineage.key_group for name, lineage in state.lineages.items()}
    exposures = permissions.exposed_keys(config_dir, deployed)
    checks = [
        Check("key-exposure", "CRITICAL" if exposure.world else "WARNING", exposure.sentence())
        for exposure in exposures
    ]
    if not checks:
        checks.append(Check(
            "key-exposure", "OK",
            f"no private key under {config_dir}/archive is readable beyond root and the key "
            "group of the lineages deployed with it"))
    return checks


def _hook_checks(config_dir: str) -> list[Check]:
    problems = hooks.problems(config_dir)
    if not problems:
        return [Check("renewal-hooks", "OK",
                      "deploy and post hooks installed, root-owned, isolated, and their "
                      "interpreter runs this plugin")]
    return [Check("renewal-hooks", "WARNING", problem) for problem in problems]


def _submission_checks(config: postfix.PostfixConfig, state: State) -> list[Check]:
    checks = []
    submission = config.services_on_port(postfix.SUBMISSION_PORT)
    if not submission:
        checks.append(Check(
            "submission-service", "WARNING",
            "master.cf has no service on port 587: mail clients cannot submit; rerun "
            "certbot install -i postfix-tls (it adds one with mandatory TLS)"))
    for service in submission:
        level = service.overrides.get("smtpd_tls_security_level") or (
            postfix.effective_smtpd_level(config.main))
        auth_only = service.overrides.get("smtpd_tls_auth_only",
                                          config.main.get("smtpd_tls_auth_only", "no"))
        if level != "encrypt":
            checks.append(Check(
                "submission-tls", "CRITICAL",
                f"master.cf service {service.name} (587) has smtpd_tls_security_level="
                f"{level}: clients may send passwords without TLS; set -o "
                "smtpd_tls_security_level=encrypt"))
        elif auth_only.lower() != "yes":
            checks.append(Check(
                "submission-tls", "WARNING",
                f"master.cf service {service.name} (587) lacks -o smtpd_tls_auth_only=yes"))
        else:
            checks.append(Check("submission-tls", "OK",
                                f"{service.name} (587) requires TLS before AUTH"))
    for service in config.services_on_port(25):
        level = service.overrides.get("smtpd_tls_security_level") or (
            postfix.effective_smtpd_level(config.main))
        if level == "encrypt":
            checks.append(Check(
                "port25-plaintext", "WARNING",
                f"{service.name} (25) requires TLS: servers that cannot do TLS cannot "
                "deliver to you (RFC 3207 forbids this on a public MX)"))
        else:
            checks.append(Check("port25-plaintext", "OK",
                                f"{service.name} (25) accepts plaintext and offers STARTTLS"))
    return checks


def _auth_checks(endpoints: list[verify.Endpoint], sni: str | None) -> list[Check]:
    checks = []
    for endpoint in endpoints:
        if endpoint.port != postfix.SUBMISSION_PORT or endpoint.tls != "starttls":
            continue
        try:
            shake = verify.handshake(endpoint, sni)
        except verify.VerifyError as exc:
            checks.append(Check("submission-auth", "CRITICAL", str(exc)))
            continue
        before = any(c.upper().startswith("AUTH") for c in shake.capabilities_before_tls)
        after = any(c.upper().startswith("AUTH") for c in shake.capabilities_after_tls)
        where = f"{endpoint.address}:{endpoint.port}"
        if before:
            checks.append(Check("submission-auth", "CRITICAL",
                                f"{where} offers AUTH before STARTTLS: passwords can cross "
                                "the network in clear; set -o smtpd_tls_auth_only=yes"))
        elif not after:
            checks.append(Check("submission-auth", "WARNING",
                                f"{where} offers no AUTH after STARTTLS, so nobody can log in "
                                "to send mail: add a SASL backend (Dovecot's auth socket: "
                                "certbot install -i postfix-tls --postfix-tls-sasl dovecot)"))
        else:
            checks.append(Check("submission-auth", "OK",
                                f"{where} offers AUTH only after STARTTLS"))
    return checks


def run(config_dir: str) -> tuple[list[verify.EndpointResult], list[Check]]:
    """Every check; endpoint results are the same as ``verify``'s."""
    state = State.load(config_dir)
    checks: list[Check] = []
    results: list[verify.EndpointResult] = []
    if not state.lineages:
        checks.append(Check("deployed", "UNKNOWN",
                            f"nothing deployed by postfix-tls in {config_dir}"))
        checks += [c for c in _exposure_checks(config_dir, state) if c.status != "OK"]
        return results, checks
    if state.pending:
        checks.append(Check(
            "pending-reload", "CRITICAL",
            f"a renewal was deployed but {', '.join(state.pending)} was not reloaded "
            "successfully: run certbot-postfix-tls hook post and read its error"))
    checks += _hook_checks(config_dir)
    checks += _key_checks(state)
    checks += _exposure_checks(config_dir, state)
    try:
        mta = postfix.Postfix(state.postfix_dir)
        config = mta.read()
        checks += _submission_checks(config, state)
        checks += [Check("submission-wrappermode", "CRITICAL", problem)
                   for problem in postfix.submission_wrappermode(config)]
        checks += [Check("not-checked", "OK", f"not checked: {label}: {why}") for label, why
                   in postfix.unchecked_endpoints(config, state.verify_ports,
                                                  state.verify_address)]
        checks += [Check(name, "CRITICAL", message) for name, message in services.stopped(state)]
        endpoints = services.endpoints(state)
        results = services.check_all(state, endpoints_to_check=endpoints, retry_seconds=0)
        default = state.lineages.get(str(state.default))
        checks += _auth_checks(endpoints, default.names[0] if default and default.names else None)
    except (errors.Error, verify.VerifyError) as exc:
        checks.append(Check("configuration", "UNKNOWN", str(exc)))
    return results, checks
