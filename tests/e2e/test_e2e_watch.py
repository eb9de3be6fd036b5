"""Watch it and roll it out, with real parts: verify --prometheus read by a real
node_exporter while the deployment is broken three ways; the watchdog's systemd
units, and their command run as the unit's unprivileged user; the Ansible role
(Debian's ansible-core) rolling out to two mail servers, canary first.

The two "servers" of the fleet test are two Postfix instances in the lab,
/etc/postfix-mx1 on 127.0.0.2 and /etc/postfix-mx2 on 127.0.0.3, each with its
own certbot directories: two inventory hosts with ansible_connection=local and
per-host variables (what differs between real hosts is only the connection).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import lab
import pytest
from conftest import REPO, need, need_lab, once
from lab import plans
from lab.dovecot import DovecotLab, write_self_signed
from lab.flows import HOST, install, issue, leaf, served
from lab.metrics import node_exporter, parse, promtool_check, scrape, values

from certbot_postfix_tls._internal import constants, dialogues, tls_client

# Second tier: .ci/heavy runs it (pytest -m tier2); the README's test command does not.
pytestmark = pytest.mark.tier2

CLI = [sys.executable, "-m", "certbot_postfix_tls"]
UNIT = "certbot-postfix-tls-verify"
DEBIAN = REPO / "debian"
ROLE_PLAYBOOK = REPO / "contrib" / "ansible" / "site.yml"


def verify_metrics(certbot: lab.Certbot, path: Path, *argv_prefix: str,
                   ) -> tuple[subprocess.CompletedProcess[str], dict]:
    """verify --prometheus PATH (as the user argv_prefix switches to); its samples."""
    proc = subprocess.run(
        [*argv_prefix, *CLI, "--config-dir", str(certbot.config_dir), "verify",
         "--prometheus", str(path)],
        capture_output=True, text=True, timeout=180, check=False, cwd="/",
    )
    return proc, parse(path.read_text())


def other_certificate_on_2526(postfix: lab.PostfixLab, directory: Path, name: str) -> None:
    """An operator's override: port 2526 serves another certificate."""
    cert, key = directory / "other.pem", directory / "other.key"
    write_self_signed(str(cert), str(key), name=name)
    combined = directory / "other-chain.pem"
    combined.write_bytes(key.read_bytes() + cert.read_bytes())
    combined.chmod(0o600)
    postfix.postconf(
        "-M", f"2526/inet=2526 inet n - y - - smtpd -o smtpd_tls_chain_files={combined}")
    lab.process.run(["postfix", "-c", postfix.config_dir, "reload"], what="reload")


# --- metrics, broken three ways -------------------------------------------------------


def test_metrics_show_each_breakage(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, tmp_path: Path,
) -> None:
    """A real node_exporter serves what verify --prometheus wrote; renewed without a
    reload, Postfix stopped, a port serving another certificate: each shows as
    served_matches_lineage 0 / endpoint_up 0 and verify_status 2."""
    once(request, "verify is the plugin's own command")
    issue(certbot, HOST)
    install(certbot, HOST)
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    prom = textfile / "certbot-postfix-tls.prom"

    proc, samples = verify_metrics(certbot, prom)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert promtool_check(prom.read_text()).returncode == 0
    ports = {int(dict(labels)["port"]) for name, labels in samples if name == "endpoint_up"}
    assert {25, 587, 143, 993} <= ports
    assert set(values(samples, "served_matches_lineage")) == {1}
    assert set(values(samples, "endpoint_up")) == {1}
    assert values(samples, "verify_status") == [0]
    assert values(samples, "pending_reload") == [0, 0]
    with node_exporter(str(textfile)) as url:
        scraped = parse(scrape(url))
    assert scraped == samples
    assert values(scraped, "cert_not_after_seconds", port="25", sni="", lineage=HOST)

    # 1. Renewed and deployed by the deploy hook, never reloaded (no post hook ran).
    # Dovecot keeps serving the old certificate until reloaded; new smtpd processes
    # read the rebuilt key+chain file, so Postfix's ports depend on which process
    # answers: the pending marks say it either way.
    old = leaf(certbot, HOST)
    deploy_hook = shlex.join([sys.executable, "-I", "-m", "certbot_postfix_tls",
                              "--config-dir", str(certbot.config_dir), "hook", "deploy"])
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                "--no-directory-hooks", "--deploy-hook", deploy_hook, *certbot.acme_args())
    assert leaf(certbot, HOST) != old
    assert served("imap", 993, "implicit", HOST) == old
    watchdog_user = ["setpriv", "--reuid=61184", "--regid=61184", "--clear-groups"]
    for as_user in ((), watchdog_user):  # root, and the watchdog's unprivileged user
        proc, samples = verify_metrics(certbot, prom, *as_user)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert set(values(samples, "served_matches_lineage", service="dovecot")) == {0}
        assert set(values(samples, "endpoint_up")) == {1}
        assert values(samples, "pending_reload", service="postfix") == [1]
        assert values(samples, "pending_reload", service="dovecot") == [1]
        assert values(samples, "verify_status") == [2]
        assert promtool_check(prom.read_text()).returncode == 0
    hook = subprocess.run([*CLI, "--config-dir", str(certbot.config_dir), "hook", "post"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert hook.returncode == 0, hook.stdout + hook.stderr
    proc, samples = verify_metrics(certbot, prom)
    assert proc.returncode == 0 and set(values(samples, "served_matches_lineage")) == {1}

    # 2. Postfix stopped: its ports stay in the metrics, as down.
    postfix_lab.stop()
    try:
        proc, samples = verify_metrics(certbot, prom)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Postfix" in proc.stdout and "not running" in proc.stdout
        for port in ("25", "587"):
            assert set(values(samples, "endpoint_up", service="postfix", port=port)) == {0}
            assert set(values(samples, "served_matches_lineage", port=port)) == {0}
            assert not values(samples, "cert_not_after_seconds", port=port)
        assert set(values(samples, "endpoint_up", service="dovecot")) == {1}
        assert values(samples, "verify_status") == [2]
        with node_exporter(str(textfile)) as url:
            assert parse(scrape(url)) == samples
    finally:
        postfix_lab.start()

    # 3. A port serving another certificate.
    other_certificate_on_2526(postfix_lab, tmp_path, "stale.example.net")
    proc, samples = verify_metrics(certbot, prom)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # Without SNI; a client sending the lineage's name still gets it from the SNI table.
    assert values(samples, "served_matches_lineage", port="2526", sni="") == [0]
    assert set(values(samples, "endpoint_up", port="2526")) == {1}
    assert values(samples, "cert_not_after_seconds", port="2526", sni="",
                  algorithm="ecdsa-p256")
    assert set(values(samples, "served_matches_lineage", port="25")) == {1}
    assert values(samples, "verify_status") == [2]
    assert promtool_check(prom.read_text()).returncode == 0


# --- the watchdog's systemd units --------------------------------------------------------


def read_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in order, as systemd reads a unit file (repeated keys kept)."""
    entries, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def _command(value: str, state_root: str) -> list[str]:
    """An Exec line's argv: its prefixes dropped, %S (the state root) expanded."""
    return shlex.split(value.lstrip("-+@:!").replace("%S", state_root))


def test_watchdog_units_run_verify_unprivileged(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    dovecot_lab: DovecotLab, tmp_path: Path,
) -> None:
    """The service runs verify --prometheus as a dynamic (unprivileged) user, only once a
    deployment exists, from a 6-hourly randomized timer; its exact command works as such
    a user (no groups) on a real deployment, and its publishing steps put the metrics
    where the stock node_exporter reads them."""
    once(request, "the units run the plugin's own command")
    service_file = DEBIAN / f"python3-certbot-postfix-tls.{UNIT}.service"
    timer_file = DEBIAN / f"python3-certbot-postfix-tls.{UNIT}.timer"
    service, timer = read_unit(service_file), read_unit(timer_file)

    assert unit_values(service, "Service", "DynamicUser") == ["yes"]
    assert unit_values(service, "Service", "User") == []  # never root
    assert unit_values(service, "Service", "Type") == ["oneshot"]
    # Runs only once a deployment exists (the default Postfix instance's state, or "|"
    # another instance's).
    plugin_dir = Path(constants.CLI_DEFAULTS["config_dir"], constants.PLUGIN_DIR)
    assert unit_values(service, "Unit", "ConditionPathExists") == [
        f"|{plugin_dir / constants.STATE_FILE}"]
    assert unit_values(service, "Unit", "ConditionPathExistsGlob") == [
        f"|{plugin_dir / 'instances' / '*' / constants.STATE_FILE}"]
    [exec_start] = unit_values(service, "Service", "ExecStart")
    assert not exec_start.startswith(("+", "!"))  # runs as the unit's user
    state_dir = unit_values(service, "Service", "StateDirectory")
    assert state_dir == ["certbot-postfix-tls"]
    argv = _command(exec_start, "/var/lib")
    assert argv[:3] == ["/usr/bin/certbot-postfix-tls", "verify", "--prometheus"]
    assert argv[3] == "/var/lib/certbot-postfix-tls/certbot-postfix-tls.prom"
    publish = unit_values(service, "Service", "ExecStopPost")
    assert [_command(p, "/var/lib")[0] for p in publish] == ["/bin/chown", "/bin/mv"]
    assert _command(publish[-1], "/var/lib")[-1] == (
        "/var/lib/prometheus/node-exporter/certbot-postfix-tls.prom")
    # Hourly: a 160-hour certificate is CRITICAL only in its last 5 hours.
    assert unit_values(timer, "Timer", "OnCalendar") == ["hourly"]
    assert unit_values(timer, "Timer", "RandomizedDelaySec")
    assert unit_values(timer, "Timer", "Persistent") == ["true"]
    assert unit_values(timer, "Install", "WantedBy") == ["timers.target"]
    assert unit_values(service, "Install", "WantedBy") == []  # started by the timer only

    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # systemd's own reading of the files (no running systemd needed)
        units = tmp_path / "units"
        units.mkdir()
        # The package's binary is not installed here: the only change is its path.
        cli = str(Path(sys.executable).parent / "certbot-postfix-tls")
        (units / f"{UNIT}.service").write_text(
            service_file.read_text().replace("/usr/bin/certbot-postfix-tls", cli))
        shutil.copy(timer_file, units / f"{UNIT}.timer")
        checked = subprocess.run(
            [analyze, "--man=no", "verify", str(units / f"{UNIT}.service"),
             str(units / f"{UNIT}.timer")],
            capture_output=True, text=True, timeout=60, check=False)
        assert checked.returncode == 0 and UNIT not in checked.stdout + checked.stderr, (
            checked.stdout + checked.stderr)
        security = subprocess.run(
            [analyze, "security", "--offline=yes", str(units / f"{UNIT}.service")],
            capture_output=True, text=True, timeout=60, check=False)
        assert "Service runs under a transient non-root user identity" in security.stdout, (
            security.stdout + security.stderr)
        calendar = subprocess.run(
            [analyze, "calendar", "--iterations=3", "hourly"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert "Normalized form: *-*-* *:00:00" in calendar

    # The unit's command, as its user, against a deployment in the default config dir.
    need_lab()  # /etc and /var below are the lab's overlays
    issue(certbot, HOST)
    install(certbot, HOST)
    default_config = Path(constants.CLI_DEFAULTS["config_dir"])
    assert not default_config.exists()
    default_config.symlink_to(certbot.config_dir)
    try:
        uid = 61184  # the first uid systemd gives a DynamicUser
        state_root = Path("/var/lib")
        (state_root / state_dir[0]).mkdir(mode=0o755)
        os.chown(state_root / state_dir[0], uid, uid)  # what StateDirectory= does
        textfile = Path("/var/lib/prometheus/node-exporter")
        textfile.mkdir(parents=True, exist_ok=True)
        run_as = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                  "--no-new-privs"]
        cli = str(Path(sys.executable).parent / "certbot-postfix-tls")
        argv = [cli, *_command(exec_start, str(state_root))[1:]]
        proc = subprocess.run([*run_as, *argv], capture_output=True, text=True, timeout=180,
                              check=False, cwd="/")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        written = Path(argv[-1])
        assert written.stat().st_uid == uid
        for step in publish:  # as root ("+"), after the run
            subprocess.run(_command(step, str(state_root)), check=True, timeout=60)
        published = textfile / "certbot-postfix-tls.prom"
        assert published.stat().st_uid == 0 and published.stat().st_mode & 0o777 == 0o644
        assert not written.exists()
        with node_exporter(str(textfile)) as url:
            samples = parse(scrape(url))
        assert values(samples, "verify_status") == [0]
        assert set(values(samples, "served_matches_lineage")) == {1}
    finally:
        default_config.unlink()
        shutil.rmtree(Path("/var/lib") / state_dir[0], ignore_errors=True)
        Path("/var/lib/prometheus/node-exporter/certbot-postfix-tls.prom").unlink(missing_ok=True)


def lab_served(address: str, port: int, name: str) -> bytes:
    """The leaf a Postfix instance on address serves for name (STARTTLS)."""
    endpoint = tls_client.Endpoint("postfix", "smtp", address, port, "starttls", str(port))
    return dialogues.handshake(endpoint, name).leaf_der


# --- the Ansible role ------------------------------------------------------------------

FLEET = (("mx1.example.org", "127.0.0.2"), ("mx2.example.org", "127.0.0.3"))


def start_instance(default: lab.PostfixLab, name: str, address: str) -> lab.PostfixLab:
    """A second Postfix instance (Debian's stock configuration) listening on address."""
    short = name.split(".")[0]
    instance = lab.PostfixLab(config_dir=f"/etc/postfix-{short}",
                              log_file=f"/var/log/postfix-{short}.log",
                              queue_directory=f"/var/spool/postfix-{short}")
    main_cf, master_cf = lab.debian_stock_config()
    data_dir = f"/var/lib/postfix-{short}"
    instance.install_config(
        main_cf + f"queue_directory = {instance.queue_directory}\ndata_directory = {data_dir}\n",
        master_cf)
    instance.postconf("-e", f"inet_interfaces={address}", f"myhostname={name}")
    # Postfix binds only addresses an interface has (the lab's loopback is private).
    if address not in lab.process.run(["ip", "-4", "addr", "show", "dev", "lo"],
                                      what="ip addr").stdout:
        lab.process.run(["ip", "addr", "add", f"{address}/8", "dev", "lo"], what="ip addr add")
    os.makedirs(instance.queue_directory, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    shutil.chown(data_dir, "postfix", "postfix")
    dirs = default.postconf("-h", "alternate_config_directories").split()
    default.postconf("-e", f"alternate_config_directories={' '.join([*dirs, instance.config_dir])}")
    lab.process.run(["postfix", "-c", instance.config_dir, "start"], what="postfix start",
                    stderr_tty=True)
    lab.wait_for_port(25, host=address)
    return instance


def inventory(certbot: lab.Certbot, bases: dict[str, Path], path: Path) -> None:
    """Two hosts, both local, each with its own certbot directories and Postfix instance."""
    bindir = Path(certbot.python).parent
    hosts = {
        name: {
            "certbot_postfix_tls_domains": [name],
            "certbot_postfix_tls_config_dir": str(bases[name] / "config"),
            "certbot_postfix_tls_work_dir": str(bases[name] / "work"),
            "certbot_postfix_tls_logs_dir": str(bases[name] / "logs"),
            "certbot_postfix_tls_install_args": [
                "--postfix-tls-postfix-dir", f"/etc/postfix-{name.split('.')[0]}",
                "--postfix-tls-services", "postfix",
                # The lab has no DNS: TLSA lookups would fail and hold every renewal
                # (as lab.Certbot's deploys, this one opts out, visibly).
                "--postfix-tls-dane", "ignore"],
        }
        for name in bases
    }
    group_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,  # already root
        "certbot_postfix_tls_install": "none",  # the tree's own plugin, in the venv
        "certbot_postfix_tls_certbot": str(bindir / "certbot"),
        "certbot_postfix_tls_cli": str(bindir / "certbot-postfix-tls"),
        "certbot_postfix_tls_acme_server": certbot.pebble.directory_url,
        "certbot_postfix_tls_environment": {"REQUESTS_CA_BUNDLE": str(certbot.pebble.ca_bundle)},
        "certbot_postfix_tls_certonly_args": ["--http-01-port", str(lab.HTTP01_PORT)],
    }
    # JSON is YAML: the yaml inventory plugin reads it.
    path.write_text(json.dumps({"mail": {"hosts": hosts, "vars": group_vars}}, indent=2))


def ansible_playbook(inventory_path: Path, home: Path, *extra: str,
                     ) -> subprocess.CompletedProcess[str]:
    config = home / "ansible.cfg"  # defaults only, whatever the machine has in /etc/ansible
    config.touch()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),  # ansible keeps its temporary files under it
        "LC_ALL": "C.UTF-8",  # ansible-core refuses another locale encoding
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_LOCAL_TEMP": str(home / "local-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory_path), str(ROLE_PLAYBOOK), *extra],
        capture_output=True, text=True, timeout=600, check=False, env=env, cwd=str(home),
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, failed, ...}."""
    result: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        if " : " in line:
            host, _, counts = line.partition(" : ")
            result[host.strip()] = {k: int(v) for k, v in
                                    (item.split("=") for item in counts.split())}
    return result


def test_ansible_role_canary_first_idempotent_and_gated(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    tmp_path: Path,
) -> None:
    """First run: both hosts deployed, the canary's whole role before the other host;
    second run: no change, no reload; a canary whose port serves another certificate
    fails the gate and the rollout stops there; fixed, the rollout goes on."""
    once(request, "the role drives the newest certbot of the venv")
    need("ansible-playbook")
    instances: dict[str, lab.PostfixLab] = {}
    try:
        for name, address in FLEET:
            instances[name] = start_instance(postfix_lab, name, address)
        bases = {}
        for name, _address in FLEET:
            bases[name] = certbot.base / name.split(".")[0]
            bases[name].mkdir(mode=0o755)
        hosts = tmp_path / "inventory.yml"
        inventory(certbot, bases, hosts)
        home = tmp_path / "home"
        home.mkdir()
        (mx1, mx1_address), (mx2, mx2_address) = FLEET

        def leaf_of(name: str) -> bytes:
            return leaf(lab.Certbot(certbot.pebble, bases[name], certbot.python), name)

        def serving(name: str, address: str) -> bytes:
            return lab_served(address, 25, name)

        # 1. Both deployed, canary first.
        first = ansible_playbook(hosts, home)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out
        counts = recap(out)
        assert counts[mx1]["failed"] == counts[mx2]["failed"] == 0
        assert counts[mx1]["changed"] >= 2 and counts[mx2]["changed"] >= 2  # issued, deployed
        gate = out.index("TASK [certbot_postfix_tls : Every port serves the new certificate]")
        assert out.index(f"ok: [{mx1}]", gate) < out.index(f"[{mx2}]")
        states = {name: next((bases[name] / "config" / "postfix-tls").rglob("state.json"))
                  for name in bases}
        assert states[mx1].stat().st_mtime < states[mx2].stat().st_mtime
        for name, address in FLEET:
            assert serving(name, address) == leaf_of(name), name

        # 2. Nothing to do: nothing changed, nothing reloaded.
        reloads = {name: inst.log().count("reload -- version") for name, inst in instances.items()}
        before = {name: path.read_bytes() for name, path in states.items()}
        second = ansible_playbook(hosts, home)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out
        assert {host: c["changed"] for host, c in recap(out).items()} == {mx1: 0, mx2: 0}, out
        assert {name: inst.log().count("reload -- version")
                for name, inst in instances.items()} == reloads
        assert {name: path.read_bytes() for name, path in states.items()} == before

        # 3. The canary fails its gate: the rollout stops before mx2, which has work
        # waiting (a renewal made without the plugin's hooks).
        other_certificate_on_2526(instances[mx1], tmp_path, "stale.example.net")
        mx2_old = leaf_of(mx2)
        lab.Certbot(certbot.pebble, bases[mx2], certbot.python).run(
            "renew", "--cert-name", mx2, "--force-renewal", "--no-random-sleep-on-renew",
            "--no-directory-hooks")
        assert leaf_of(mx2) != mx2_old
        third = ansible_playbook(hosts, home)
        out = third.stdout + third.stderr
        assert third.returncode != 0, out
        assert recap(out)[mx1]["failed"] == 1, out
        assert f"{mx1_address}:2526" in out and "stale.example.net" in out
        assert f"[{mx2}]" not in out.split("PLAY RECAP")[0]  # never touched
        assert serving(mx2, mx2_address) == mx2_old

        # 4. Canary fixed: the rollout reaches mx2, which gets its renewed certificate.
        instances[mx1].postconf("-MX", "2526/inet")
        lab.process.run(["postfix", "-c", instances[mx1].config_dir, "reload"], what="reload")
        fourth = ansible_playbook(hosts, home)
        out = fourth.stdout + fourth.stderr
        assert fourth.returncode == 0, out
        assert {host: c["changed"] for host, c in recap(out).items()} == {mx1: 0, mx2: 1}, out
        assert serving(mx2, mx2_address) == leaf_of(mx2)
    finally:
        for instance in instances.values():
            instance.stop()



def test_ansible_check_mode_shows_the_plan_and_changes_nothing(
    request: pytest.FixtureRequest, certbot: lab.Certbot, postfix_lab: lab.PostfixLab,
    tmp_path: Path,
) -> None:
    """--check --diff on a host whose certificate waits for its install: the host is
    reported changed, the task's diff is the plan's, nothing on the host changes and
    nothing reloads; after a real run, --check reports no change."""
    once(request, "the role drives the newest certbot of the venv")
    need("ansible-playbook")
    name, address = FLEET[0]
    instance = start_instance(postfix_lab, name, address)
    try:
        base = certbot.base / name.split(".")[0]
        base.mkdir(mode=0o755)
        hosts, home = tmp_path / "inventory.yml", tmp_path / "home"
        inventory(certbot, {name: base}, hosts)
        home.mkdir()
        host = lab.Certbot(certbot.pebble, base, certbot.python)
        issue(host, name)
        roots = (instance.config_dir, str(base / "config"), str(base / "work"))
        before = plans.stat_tree(*roots)
        reloads = instance.log().count("reload -- version")

        check = ansible_playbook(hosts, home, "--check", "--diff")
        out = check.stdout + check.stderr
        assert check.returncode == 0, out
        assert recap(out)[name]["changed"] >= 1, out
        task = out.index("TASK [certbot_postfix_tls : What certbot install would change")
        shown = out[task:]
        assert f"--- a{instance.config_dir}/main.cf" in shown, out
        assert "+smtpd_tls_chain_files = " in shown and "key material (create" in shown
        plans.assert_no_key_material(base / "config", out)
        assert plans.stat_tree(*roots) == before
        assert instance.log().count("reload -- version") == reloads

        real = ansible_playbook(hosts, home)
        assert real.returncode == 0, real.stdout + real.stderr
        assert lab_served(address, 25, name) == leaf(host, name)

        again = ansible_playbook(hosts, home, "--check", "--diff")
        out = again.stdout + again.stderr
        assert again.returncode == 0, out
        assert recap(out)[name]["changed"] == 0, out
    finally:
        instance.stop()
