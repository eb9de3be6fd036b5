"""The one atomic writer and the SNI index: unique O_EXCL|O_NOFOLLOW temporary files,
nothing planted in the directory written through, the index renamed into place."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from certbot_postfix_tls._internal import certs, sni


def test_a_planted_fifo_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "metrics.prom"
    os.mkfifo(target)
    # Where the old writer put its fixed temporary name, a FIFO would block it.
    os.mkfifo(tmp_path / ".metrics.prom.tmp~")
    done = threading.Event()

    def write() -> None:
        certs.write_atomic(str(target), b"ok\n", 0o644)
        done.set()

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), "write_atomic blocked on a FIFO"
    assert stat.S_ISREG(target.lstat().st_mode) and target.read_bytes() == b"ok\n"


def test_a_planted_hard_link_keeps_its_mode_and_content(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"ok\n")
    secret.chmod(0o600)
    target = tmp_path / "metrics.prom"
    os.link(secret, target)  # same bytes: the old writer chmod-ed it in place
    certs.write_atomic(str(target), b"ok\n", 0o644)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    certs.write_atomic(str(target), b"new\n", 0o644)
    assert secret.read_bytes() == b"ok\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.stat().st_nlink == 1


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"x")
    (tmp_path / "file").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        certs.write_atomic(str(tmp_path / "file"), b"y", 0o644)
    assert (tmp_path / "elsewhere").read_bytes() == b"x"


def test_temporary_names_are_unique_and_exclusive(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    fd1, one = certs.create_temp(target)
    fd2, two = certs.create_temp(target)
    os.close(fd1)
    os.close(fd2)
    assert one != two and os.path.basename(one).startswith(".f.") and one.endswith(".tmp~")
    assert certs.stale_temps(target) == sorted([one, two])
    assert stat.S_IMODE(os.stat(one).st_mode) == 0o600


@pytest.mark.skipif(shutil.which("postmap") is None or os.geteuid() != 0,
                    reason="needs postmap and root (the index is made root's)")
def test_sni_index_is_built_beside_and_renamed(tmp_path: Path) -> None:
    """postmap -F builds a temporary index renamed over the old one: the index smtpd
    has open is never rewritten in place, and a build cut short leaves no key file."""
    key_file = tmp_path / "key-fullchain.pem"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n")
    path = str(tmp_path / "instances" / "new" / "sni-map")  # a new instance: no dir yet
    text = f"mail.example {key_file}\n"
    sni.write_map(text, path, "/etc/postfix", "hash")
    first = os.stat(path + ".db").st_ino
    killed = Path(path).parent / ".sni-map.0123456789ab.tmp.db"
    killed.write_text("cut short")  # a build a kill cut short
    sni.write_map(text + f"other.example {key_file}\n", path, "/etc/postfix", "hash")
    assert os.stat(path + ".db").st_ino != first
    assert stat.S_IMODE(os.stat(path + ".db").st_mode) == 0o600
    leftovers = [e for e in os.listdir(Path(path).parent) if ".tmp" in e]
    assert leftovers == []
