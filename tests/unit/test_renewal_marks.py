"""The deploy hook records a renewal before anything that can fail: a lock wait that
times out (or an error, or a kill) leaves it recorded; verify and doctor report it;
the next hook run moves it into the state's pending marks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from certbot_postfix_tls._internal import constants
from certbot_postfix_tls._internal.ops import renewal
from certbot_postfix_tls._internal.state import (
    DeployedLineage,
    State,
    mark_path,
    unfinished_renewals,
)

HOLD = """
import sys, time
from certbot_postfix_tls._internal.lock import plugin_lock
with plugin_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _deployed(config_dir: Path) -> None:
    state = State(postfix_dir=str(config_dir / "no-postfix"))
    state.add(DeployedLineage("mail.example", str(config_dir / "live/mail.example/privkey.pem"),
                              str(config_dir / "live/mail.example/fullchain.pem"),
                              str(config_dir / "postfix-tls/lineages/mail.example/x.pem")))
    state.save(str(config_dir))


def test_a_lock_timeout_keeps_the_renewal(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = str(tmp_path)
    _deployed(tmp_path)
    monkeypatch.setattr(constants, "LOCK_TIMEOUT", 0.3)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, config_dir],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = renewal.run_deploy_hook(config_dir, str(tmp_path / "live/mail.example"))
        assert result.code == 2
        assert "mail.example" in result.message and "hook post" in result.message
        assert "\n" not in result.message
        assert unfinished_renewals(config_dir) == ["mail.example"]
        [finding] = renewal.unfinished_findings(config_dir)
        assert finding.status == "CRITICAL"
        assert mark_path(config_dir, "mail.example") in finding.message
        assert not State.load(config_dir).pending  # the state was never touched
    finally:
        holder.communicate("")
    # The post hook records it as pending before anything else (here the render
    # fails: there is no lineage on disk), so the renewal stays reported.
    result = renewal.run_post_hook(config_dir, lambda _line: None)
    assert result.code == 2
    assert unfinished_renewals(config_dir) == []
    state = State.load(config_dir)
    assert state.renewed == ["mail.example"] and "postfix" in state.pending


def test_an_unexpected_error_keeps_the_renewal(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only certbot's errors: e.g. a UnicodeDecodeError from a configuration read."""
    config_dir = str(tmp_path)
    _deployed(tmp_path)

    def explode(*_args: object, **_kwargs: object) -> None:
        raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")

    monkeypatch.setattr(renewal.pipeline.Site, "from_state", explode)
    result = renewal.run_deploy_hook(config_dir, str(tmp_path / "live/mail.example"))
    assert result.code == 2 and "\n" not in result.message
    state = State.load(config_dir)
    assert state.renewed == ["mail.example"] and "postfix" in state.pending
    assert unfinished_renewals(config_dir) == []  # recorded in the state instead


def test_not_deployed_lineage_leaves_no_mark(tmp_path: Path) -> None:
    config_dir = str(tmp_path)
    _deployed(tmp_path)
    result = renewal.run_deploy_hook(config_dir, str(tmp_path / "live/other.example"))
    assert result.code == 0 and "not deployed" in result.message
    assert unfinished_renewals(config_dir) == []
