"""Lineages whose renewal asks Let's Encrypt for a profile they cannot get: the
``shortlived`` (160 hours) and ``tlsserver`` (45 days) profiles take at most 25 names,
so a larger lineage's next renewal is refused and its certificate runs out."""

from __future__ import annotations

import os
from typing import Optional

from cryptography import x509

from certbot_postfix_tls._internal import constants, renewal_conf
from certbot_postfix_tls._internal.doctor.certificates import leaf_of
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.findings import OK, WARNING, Finding


def _names(context: Context, conf: renewal_conf.RenewalConf) -> Optional[list[str]]:
    """The lineage's names: from its certificate, else those the plugin recorded (a
    monitoring user cannot read certbot's live/); None when neither is known."""
    path = conf.get("cert") or os.path.join(context.config_dir, "live", conf.name, "cert.pem")
    leaf = leaf_of(path)
    if leaf is not None:
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return []
        return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    deployed = context.state.lineages.get(conf.name)
    return list(deployed.names) if deployed is not None else None


def profile_checks(context: Context) -> list[Finding]:
    """A lineage with more names than its requested short-lived profile allows."""
    checks = []
    asked = []
    for conf in renewal_conf.all_confs(context.config_dir):
        profile = conf.profile
        if profile is None or profile.lower() not in constants.SHORT_PROFILES:
            continue
        asked.append(conf.name)
        names = _names(context, conf)
        if names is None or len(names) <= constants.SHORT_PROFILE_MAX_NAMES:
            continue
        key = "required_profile" if conf.renewal("required_profile") else "preferred_profile"
        checks.append(Finding(
            "renewal-profile", WARNING,
            f"lineage {conf.name} has {len(names)} names but {conf.path} asks for the "
            f"{profile} profile ({key}), which Let's Encrypt issues for at most "
            f"{constants.SHORT_PROFILE_MAX_NAMES} names: its next renewal will be refused "
            f"and the certificate will expire; fix: split it into lineages of at most "
            f"{constants.SHORT_PROFILE_MAX_NAMES} names (certbot certonly --cert-name ... "
            f"-d ...), or renew it with another profile (certbot renew --cert-name "
            f"{conf.name} --preferred-profile classic --force-renewal)"))
    if not checks and asked:
        checks.append(Finding(
            "renewal-profile", OK,
            f"the lineages asking for a short-lived profile ({', '.join(asked)}) have at "
            f"most {constants.SHORT_PROFILE_MAX_NAMES} names each"))
    return checks
