"""Several certificates on one server: SNI on every port, default by rule, undeploy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lab
import pytest
from conftest import once
from lab.dovecot import DovecotLab
from lab.flows import HOST, OTHER, PORTS, assert_serving, install, issue, leaf, served

from certbot_postfix_tls._internal import hooks, sni
from certbot_postfix_tls._internal.state import State


def normalized_config(certbot: lab.Certbot) -> dict[str, str]:
    """What the deploy produced, with this run's temp paths taken out."""
    base = str(certbot.config_dir)
    files = {
        # postconf -n: the settings in force (postconf -e appends new ones in the
        # order they first appeared, which is not what "same state" means).
        "main.cf": lab.process.run(["postconf", "-n"], what="postconf").stdout,
        "sni-map": Path(sni.map_path(base)).read_text(),
        "dovecot": Path("/etc/dovecot/conf.d/99-certbot-postfix-tls.conf").read_text(),
    }
    return {k: v.replace(base, "CONFIG") for k, v in files.items()}


def test_two_lineages_in_both_orders(
    certbot: lab.Certbot, postfix_lab: lab.PostfixLab, dovecot_lab: DovecotLab
) -> None:
    issue(certbot, OTHER, HOST)
    install(certbot, OTHER)
    install(certbot, HOST)  # the second deploy must not take the first one's place
    assert_serving(certbot, [OTHER, HOST], default=HOST)  # myhostname's lineage is default
    first = normalized_config(certbot)
    for path in (sni.map_path(str(certbot.config_dir)),
                 sni.index_path(str(certbot.config_dir), "hash")):
        assert os.stat(path).st_mode & 0o777 == 0o600  # postmap -F embeds private keys

    certbot.run("rollback", "--installer", "postfix-tls", "--checkpoints", "2")
    install(certbot, HOST)
    install(certbot, OTHER)
    assert_serving(certbot, [OTHER, HOST], default=HOST)
    assert normalized_config(certbot) == first  # order does not matter


def postconf_settings() -> tuple[str, str]:
    """main.cf's explicit settings and master.cf's entries, as postconf reads them."""
    def postconf(*args: str) -> str:
        return subprocess.run(["postconf", *args], capture_output=True, text=True,
                              check=True).stdout

    return postconf("-n"), postconf("-M")


def test_default_flag_and_undeploy(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, snakeoil_pair: None,
) -> None:
    once(request, "undeploy is the plugin's own command")
    issue(certbot, HOST, OTHER)
    before = postconf_settings()
    install(certbot, HOST)
    install(certbot, OTHER, "--postfix-tls-default")
    assert State.load(str(certbot.config_dir)).default == OTHER
    assert_serving(certbot, [OTHER, HOST], default=OTHER)

    cli = [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", str(certbot.config_dir)]
    cli += ["undeploy", "--work-dir", str(certbot.base / "work")]
    out = subprocess.run([*cli, "--cert-name", OTHER], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    state = State.load(str(certbot.config_dir))
    assert state.default == HOST and list(state.lineages) == [HOST]
    for protocol, port, tls in PORTS:  # the removed name now gets the default
        assert served(protocol, port, tls, OTHER) == leaf(certbot, HOST)
    assert all(hooks.intact(str(certbot.config_dir), kind) for kind in hooks.KINDS)
    verify = [sys.executable, "-m", "certbot_postfix_tls", "--config-dir",
              str(certbot.config_dir), "verify"]
    assert subprocess.run(verify, capture_output=True, timeout=120, check=False).returncode == 0

    out = subprocess.run([*cli, "--cert-name", HOST], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the last lineage" in out.stdout
    # Postfix has the TLS settings it had before the first deploy (submission included).
    assert postconf_settings() == before
    assert not any(os.path.exists(hooks.hook_path(str(certbot.config_dir), k))
                   for k in hooks.KINDS)
    assert not Path("/etc/dovecot/conf.d/99-certbot-postfix-tls.conf").exists()
    assert "#certbot-postfix-tls#" not in Path("/etc/dovecot/conf.d/10-ssl.conf").read_text()


def test_five_lineages_renewed_with_one_reload(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab,
) -> None:
    once(request, "the two-lineage tests cover Debian's certbot")
    names = [HOST] + [f"mail.{c}.example" for c in "bcde"]
    issue(certbot, *names)
    for name in names:
        install(certbot, name)
    old = {name: leaf(certbot, name) for name in names}
    reloads = postfix_lab.log().count("reload -- version")
    dovecot_reloads = dovecot_lab.log().count("SIGHUP received")
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *certbot.acme_args())
    time.sleep(1)  # postlogd writes asynchronously
    assert postfix_lab.log().count("reload -- version") == reloads + 1
    assert dovecot_lab.log().count("SIGHUP received") == dovecot_reloads + 1
    assert all(leaf(certbot, name) != old[name] for name in names)
    assert_serving(certbot, names, default=HOST)
