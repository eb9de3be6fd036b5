"""``certbot-postfix-tls undeploy --cert-name NAME``: take one lineage out of service.

The other lineages stay served; when the removed one was the default, the rule
of SPEC section 9 picks the next. With the last lineage the plugin removes
everything it owns (SNI table, Dovecot file, hooks, state) and clears the
certificate settings it set in main.cf: Postfix then has no certificate until
another is configured, which the output says.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from certbot import errors

from certbot_postfix_tls._internal import dovecot, hooks, postfix, services, sni
from certbot_postfix_tls._internal.state import State

Say = Callable[[str], None]


def undeploy(config_dir: str, name: str, say: Say, warn: Say) -> list[str]:
    """Remove ``name``; reload and verify what stays. Returns the verification problems."""
    state = State.load(config_dir)
    if name not in state.lineages:
        known = ", ".join(sorted(state.lineages)) or "none"
        raise errors.Error(
            f"{name} was not deployed by postfix-tls (deployed: {known}); nothing changed."
        )
    removed = state.lineages[name]
    state.remove(name)
    mta = postfix.Postfix(state.postfix_dir)
    config = mta.read()
    imap = dovecot.Dovecot(state.dovecot_config) if state.dovecot_config else None

    if state.lineages:
        state.default = sni.choose_default(state, config.main.get("myhostname", ""))
        default = state.lineages[str(state.default)]
        if config.version >= (3, 4):
            mta.postconf("-e", f"smtpd_tls_chain_files={default.chain_file}")
        else:
            mta.postconf("-e", f"smtpd_tls_cert_file={default.fullchain_path}",
                         f"smtpd_tls_key_file={default.key_path}")
        if state.sni_map_type:
            sni.write_map(state, config_dir, mta.config_dir, state.sni_map_type)
        if imap is not None:
            imap.apply(imap.plan(
                dovecot.CertFiles(default.fullchain_path, default.key_path),
                sasl_listener=postfix.dovecot_socket(config)
                if postfix.uses_dovecot_socket(config) else None,
                sni=sni.dovecot_sni(state),
            ))
        state.save(config_dir)
        say(f"undeployed {name}; default certificate: {state.default}; still served: "
            f"{', '.join(sorted(state.lineages))}")
    else:
        cleared = ["smtpd_tls_chain_files=", "tls_server_sni_maps="]
        if config.version < (3, 4):
            cleared = ["smtpd_tls_cert_file=", "smtpd_tls_key_file="]
        mta.postconf("-e", *cleared)
        if state.sni_map_type:
            for path in (sni.map_path(config_dir), sni.index_path(config_dir, state.sni_map_type)):
                _unlink(path)
        if imap is not None:
            if postfix.uses_dovecot_socket(config):
                warn("submission authenticates through the Dovecot socket the plugin's file "
                     "declared: add that unix_listener to Dovecot's own configuration, or "
                     "logins on 587 fail")
            imap.apply(imap.removal_plan())
            _unlink(imap.plugin_file)
        hooks.remove_hooks(config_dir)
        _unlink(State.path(config_dir))
        warn(f"{name} was the last lineage: Postfix ({mta.config_dir}) now has no server "
             "certificate, so STARTTLS and port 587 fail until you configure one "
             "(certbot install -i postfix-tls --cert-name NAME)")
    shutil.rmtree(os.path.dirname(removed.chain_file), ignore_errors=True)

    if imap is not None and state.lineages:
        imap.check()
    mta.check()
    return services.reload_and_verify(state, state.services(), warn)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
