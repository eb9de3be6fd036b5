"""`plan`'s parts that need no lab: Postfix's preview is byte for byte what its apply
writes (the real postconf on copies of real fixtures, new parameters in the plan's
order whatever postconf's hash order), the unified diffs, the JSON and text, the exit
codes, and that key files are shown by path only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_postfix_plan import FILES, instance

from certbot_postfix_tls._internal import cli, pipeline
from certbot_postfix_tls._internal import plan as planning
from certbot_postfix_tls._internal.configurator import PostfixTLSConfigurator
from certbot_postfix_tls._internal.daemons.postfix import policy as postfix_policy
from certbot_postfix_tls._internal.state import State

KEY_BYTES = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"


@pytest.mark.parametrize("fixture", ["debian12", "custom"])
def test_postfix_preview_is_what_apply_writes(tmp_path: Path, fixture: str) -> None:
    pf = instance(tmp_path, fixture)
    plan = postfix_policy.plan_tls(pf.read(), FILES, postfix_policy.Options(smtps=True))
    before = {name: Path(pf.config_dir, name).read_bytes() for name in ("main.cf", "master.cf")}
    stamps = {name: os.stat(Path(pf.config_dir, name)).st_mtime_ns for name in before}
    shown = pf.preview(plan, State())
    assert {name: Path(pf.config_dir, name).read_bytes() for name in before} == before
    assert {name: os.stat(Path(pf.config_dir, name)).st_mtime_ns for name in before} == stamps
    assert {465, 587} <= {e.port for e in shown.endpoints}
    assert all(pf.config_dir in e.setting for e in shown.endpoints if e.setting)
    # postconf -e appends several new parameters in a per-run random order (Postfix
    # 3.7): every apply must still write the same bytes, the preview's.
    for attempt in range(3):
        copy = tmp_path / f"apply-{attempt}"
        shutil.copytree(pf.config_dir, copy)
        applied = type(pf)(str(copy))
        applied.apply(plan)
        assert shown.files == {os.path.join(pf.config_dir, name): (copy / name).read_bytes()
                               for name in before}
    new = [k for k in plan.main if k not in before["main.cf"].decode()]
    tail = shown.files[pf.main_cf].decode().splitlines()[-len(new):]
    assert [line.split(" = ")[0] for line in tail] == new


def test_unified_diff_paths_and_patch(tmp_path: Path) -> None:
    old, new = b"a = 1\nb = 2\n", b"a = 1\nb = 3\nc = 4"
    diff = planning.unified_diff("/etc/postfix/main.cf", old, new)
    assert diff.startswith("--- a/etc/postfix/main.cf\n+++ b/etc/postfix/main.cf\n")
    assert diff.endswith("+c = 4\n\\ No newline at end of file\n")
    created = planning.unified_diff("/etc/x/new.conf", None, b"x\n")
    removed = planning.unified_diff("/etc/x/old.conf", b"y\n", None)
    assert created.startswith("--- /dev/null\n+++ b/etc/x/new.conf\n")
    assert removed.startswith("--- a/etc/x/old.conf\n+++ /dev/null\n")
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed")
    target = tmp_path / "etc" / "postfix" / "main.cf"
    target.parent.mkdir(parents=True)
    target.write_bytes(old)
    subprocess.run(["patch", "-p1", "-d", str(tmp_path), "--batch", "--quiet"], input=diff,
                   text=True, check=True)
    assert target.read_bytes() == new


def _plan_with_changes() -> planning.Plan:
    shown = pipeline.Preview(
        files={"/etc/postfix/main.cf": (b"x = 1\n", b"x = 2\n")},
        key_files=[pipeline.KeyFile("/etc/letsencrypt/postfix-tls/lineages/m/key-fullchain.pem",
                                    "create")],
        group="ssl-cert",
    )
    return planning.Plan("install m", shown, reload=["postfix"])


def test_text_and_json_say_the_same_and_no_key_bytes() -> None:
    plan = _plan_with_changes()
    text = "\n".join(planning.to_text(plan))
    data = planning.to_json(plan)
    assert plan.exit_code == 1 and data["changes"]
    assert "--- a/etc/postfix/main.cf" in text and data["files"][0]["action"] == "change"
    assert data["files"][0]["diff"] in text
    assert data["key_files"] == [{"path": plan.preview.key_files[0].path, "action": "create",
                                  "mode": "0600", "owner": "root:root"}]
    assert "key material (create, content not shown)" in text
    assert data["group"] == "ssl-cert" and "group (create): ssl-cert" in text
    assert text.endswith("install m: 2 file(s) would change; nothing was changed")
    for output in (text, json.dumps(data)):
        assert KEY_BYTES.decode().splitlines()[1] not in output


def test_exit_codes() -> None:
    assert planning.Plan("install m").exit_code == 0
    assert planning.to_text(planning.Plan("install m"))[-1] == "install m: no changes"
    refused = planning.Plan("install m", refused="Postfix 2.10 is too old: ...")
    assert refused.exit_code == 2
    assert planning.to_text(refused) == ["REFUSED: install m: Postfix 2.10 is too old: ..."]
    assert planning.to_json(refused)["reload"] == []
    with pytest.raises(SystemExit) as usage:
        cli.build_parser().parse_args(["plan"])
    assert usage.value.code == 3


def test_plan_takes_every_installer_option() -> None:
    args = cli.build_parser().parse_args(["plan", "--cert-name", "m"])
    declared: dict[str, object] = {}
    PostfixTLSConfigurator.add_parser_arguments(
        lambda name, *a, **kw: declared.__setitem__(name, kw.get("default")))
    for name, default in declared.items():
        assert getattr(args, "postfix_tls_" + name.replace("-", "_")) == default, name
    args = cli.build_parser().parse_args(["plan", "--cert-name", "m", "--postfix-tls-smtps",
                                          "yes", "--postfix-tls-default"])
    assert args.postfix_tls_smtps is True and args.postfix_tls_default is True


def test_plan_reads_certbots_configuration_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """certbot install takes --postfix-tls-* from /etc/letsencrypt/cli.ini, the user's
    cli.ini and -c FILE (a later one wins, the command line over all): so does plan."""
    system, user, explicit = tmp_path / "etc.ini", tmp_path / "xdg", tmp_path / "mine.ini"
    monkeypatch.setattr(planning.constants, "CERTBOT_CONFIG_FILE", str(system))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user))
    system.write_text("# certbot's own settings are not the plan's\nemail = a@example.org\n"
                      "postfix-tls-dane = ignore\npostfix-tls-smtps = yes\n"
                      "postfix-tls-default = true\n")
    (user / "letsencrypt").mkdir(parents=True)
    (user / "letsencrypt" / "cli.ini").write_text("postfix-tls-key-group: mailkeys\n")
    explicit.write_text("postfix-tls-smtps = no\npostfix-tls-dane = auto\n")
    args = cli.parse_args(["plan", "--cert-name", "m"])
    assert (args.postfix_tls_dane, args.postfix_tls_smtps, args.postfix_tls_default,
            args.postfix_tls_key_group) == ("ignore", True, True, "mailkeys")
    args = cli.parse_args(["plan", "--cert-name", "m", "-c", str(explicit)])
    assert (args.postfix_tls_dane, args.postfix_tls_smtps) == ("auto", False)
    args = cli.parse_args(["plan", "-c", str(explicit), "--postfix-tls-dane", "ignore",
                           "--cert-name", "m"])
    assert args.postfix_tls_dane == "ignore"
    # Other commands read none of it; a file that cannot be read is named.
    assert cli.parse_args(["doctor"]).command == "doctor"
    explicit.write_bytes(b"\xff\xfe")
    with pytest.raises(planning.errors.Error, match=f"configuration file {explicit} cannot"):
        cli.parse_args(["plan", "--cert-name", "m", "-c", str(explicit)])
