"""undeploy takes certbot's own lock on its work directory (it recovers an unfinished
operation from IN_PROGRESS and writes checkpoints there): a running certbot makes it
stop before any change, in one sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from certbot import errors

from certbot_postfix_tls._internal.ops import undeploy

HOLD = """
import sys
from certbot import util
util.lock_dir_until_exit(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
"""


def test_undeploy_refuses_while_certbot_holds_its_lock(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "IN_PROGRESS").mkdir(parents=True)
    (work / "IN_PROGRESS" / "marker").write_text("an unfinished checkpoint")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(work)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(errors.Error) as caught:
            undeploy.undeploy(str(tmp_path / "config"), str(work), "mail.example",
                              print, print)
    finally:
        holder.communicate("")
    message = str(caught.value)
    assert str(work) in message and "nothing changed" in message and "\n" not in message
    assert (work / "IN_PROGRESS" / "marker").exists()  # no recovery without the lock
