"""``pipeline.render`` as every operation calls it: what it needs gathered first (the
other instances' states, the TLSA lookups of the lineages it loads), and what the DANE
gate asked for carried out after (records published by RFC 2136, the held flag)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import certs, pipeline
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import policy as postfix_policy
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dane import archive, flag, gate, lookup, records, update
from certbot_postfix_tls._internal.dane import names as dane_names
from certbot_postfix_tls._internal.state import State


def render(
    site: pipeline.Site,
    state: State,
    config: postfix_config.PostfixConfig,
    rebuild: Iterable[str] = (),
    policy: Optional[postfix_policy.Options] = None,
    dry: bool = False,
) -> pipeline.Desired:
    """The configuration ``state`` calls for (``pipeline.render``), with DNS asked
    before and the gate's RFC 2136 updates and held flag done after. ``dry``
    (``plan``): the updates and the flag are said, not done."""
    rebuild = list(rebuild)
    others = [s for s in State.load_all(site.config_dir) if s.instance != state.instance]
    found = tlsa_lookups(site.config_dir, state, config, pipeline.to_load(state, rebuild),
                         others)
    desired = pipeline.render(site, state, config, others, found, rebuild, policy)
    for name, add in desired.dane_publish.items():
        if dry:
            desired.notes.append(f"would publish by RFC 2136 update ({name}): "
                                 + "; ".join(record for record, _ttl in add))
        else:
            update.send_update(state.lineages[name], add, [], desired.notes, desired.warnings)
    if desired.dane_flag:
        if dry:
            desired.notes.append("would raise the dane-held flag (a renewal held back for "
                                 "its TLSA records)")
        else:
            flag.raise_flag(site.config_dir)
    return desired


def tlsa_lookups(config_dir: str, state: State, config: postfix_config.PostfixConfig,
                 names: Iterable[str], others: Sequence[State] = ()
                 ) -> dict[str, list[lookup.Lookup]]:
    """The TLSA lookups of each lineage of ``names`` whose live files the gate decides on:
    the names senders use for it (``dane.names``) on the SMTP ports of every instance
    that serves it, so that every instance takes the same decision on the file they
    share."""
    found: dict[str, list[lookup.Lookup]] = {}
    configs: dict[str, postfix_config.PostfixConfig] = {state.instance: config}
    for name in names:
        deployed = state.lineages[name]
        try:
            material = certs.load_material(archive.lineage_of(config_dir, deployed))
        except errors.Error:
            continue  # render leaves it out, or refuses, and says why
        if not gate.needs_lookup(deployed, material):
            continue
        serving = [state] + [s for s in others if name in s.lineages]
        ports: set[int] = set()
        pairs: list[tuple[State, str]] = []
        for each in serving:
            try:
                if each.instance not in configs:
                    configs[each.instance] = Postfix(each.postfix_dir).read()
            except errors.Error:
                continue  # that instance's own operations say why
            ports |= set(records.smtp_ports(configs[each.instance]))
            pairs.append((each, configs[each.instance].main.get("myhostname", "")))
        cert_names = [*material.names, *deployed.names]
        mx = lookup.mail_hosts(dane_names.domains_of(cert_names), deployed.dane_resolver)
        hosts = dane_names.sender_names(pairs, name, cert_names,
                                        dane_names.local_mail_hosts(mx), deployed.dane_names)
        found[name] = lookup.lookup(hosts, sorted(ports) or [25], deployed.dane_resolver)
    return found
