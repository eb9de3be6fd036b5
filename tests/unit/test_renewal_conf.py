"""Renewal configurations as certbot 5.x writes them ([acme_renewal_info],
preferred_profile/required_profile) are read without complaint wherever the plugin
reads them; doctor names a lineage too large for the short-lived profile it asks for."""

from __future__ import annotations

from pathlib import Path

import trustme

from certbot_postfix_tls._internal import renewal_conf
from certbot_postfix_tls._internal.dane import records
from certbot_postfix_tls._internal.doctor import profiles, registry
from certbot_postfix_tls._internal.doctor.context import Context
from certbot_postfix_tls._internal.state import DeployedLineage, State

# What certbot 5.8 writes after a renewal with --preferred-profile and an ARI check.
CERTBOT_5 = """\
# renew_before_expiry = 30 days
version = 5.8.0
archive_dir = {config}/archive/{name}
cert = {config}/live/{name}/cert.pem
privkey = {config}/live/{name}/privkey.pem
chain = {config}/live/{name}/chain.pem
fullchain = {config}/live/{name}/fullchain.pem

# Options used in the renewal process
[renewalparams]
account = 0123456789abcdef0123456789abcdef
reuse_key = True
server = https://acme-v02.api.letsencrypt.org/directory
authenticator = standalone
key_type = ecdsa
{profile_key} = {profile}
[acme_renewal_info]
ari_retry_after = 2026-12-05T23:00:00
"""


def _conf(config: Path, name: str, profile: str = "shortlived",
          key: str = "preferred_profile") -> Path:
    path = config / "renewal" / f"{name}.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CERTBOT_5.format(config=config, name=name, profile=profile,
                                     profile_key=key))
    return path


def _lineage(config: Path, name: str, count: int) -> None:
    names = [name] + [f"n{i}.example.org" for i in range(count - 1)]
    leaf = trustme.CA().issue_cert(*names)
    live = config / "live" / name
    live.mkdir(parents=True)
    (live / "cert.pem").write_bytes(leaf.cert_chain_pems[0].bytes())


def test_certbot_5_renewal_configuration_is_read(tmp_path: Path) -> None:
    path = _conf(tmp_path, "mail.example.org", "tlsserver", "required_profile")
    conf = renewal_conf.read(str(path))
    assert conf is not None and conf.name == "mail.example.org"
    assert conf.profile == "tlsserver"
    assert conf.renewal("reuse_key") == "True"
    assert conf.get("ari_retry_after", "acme_renewal_info") == "2026-12-05T23:00:00"
    assert conf.get("cert") == f"{tmp_path}/live/mail.example.org/cert.pem"
    # DANE's reuse_key reads the same file.
    assert records.reuse_key(str(tmp_path), "mail.example.org") is True
    assert renewal_conf.read(str(tmp_path / "renewal" / "missing.conf")) is None
    broken = tmp_path / "renewal" / "broken.conf"
    broken.write_bytes(b"[renewalparams\n\xff")
    assert renewal_conf.read(str(broken)) is None
    assert [c.name for c in renewal_conf.all_confs(str(tmp_path))] == ["mail.example.org"]


def test_doctor_names_a_lineage_too_large_for_its_profile(tmp_path: Path) -> None:
    assert profiles.profile_checks in registry.CHECKS
    context = Context(str(tmp_path), State(), "127.0.0.1", [])
    assert profiles.profile_checks(context) == []  # no renewal configuration at all
    _conf(tmp_path, "big.example.org")
    _lineage(tmp_path, "big.example.org", 26)
    _conf(tmp_path, "small.example.org", "tlsserver", "required_profile")
    _lineage(tmp_path, "small.example.org", 25)
    _conf(tmp_path, "classic.example.org", "classic")
    _lineage(tmp_path, "classic.example.org", 40)
    [finding] = profiles.profile_checks(context)
    assert (finding.name, finding.status) == ("renewal-profile", "WARNING")
    assert finding.message.startswith(
        f"lineage big.example.org has 26 names but {tmp_path}/renewal/big.example.org.conf "
        "asks for the shortlived profile (preferred_profile), which Let's Encrypt issues for "
        "at most 25 names: its next renewal will be refused"), finding.message
    assert "fix: split it into lineages of at most 25 names" in finding.message
    (tmp_path / "renewal" / "big.example.org.conf").unlink()
    [finding] = profiles.profile_checks(context)
    assert finding.status == "OK" and "(small.example.org)" in finding.message


def test_profile_names_from_the_state_when_live_is_unreadable(tmp_path: Path) -> None:
    # A monitoring user cannot read live/: the names the plugin recorded count.
    _conf(tmp_path, "big.example.org", "shortlived", "required_profile")
    names = [f"n{i}.example.org" for i in range(30)]
    state = State()
    state.lineages["big.example.org"] = DeployedLineage(
        "big.example.org", "/k", "/f", "/c", names=names)
    [finding] = profiles.profile_checks(Context(str(tmp_path), state, "127.0.0.1", []))
    assert finding.status == "WARNING" and "(required_profile)" in finding.message
