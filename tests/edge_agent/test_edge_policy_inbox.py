"""The policy inbox: a private folder in shared memory, else the state directory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.policy_inbox import SHM, clear, inbox_dir, inboxes, write_policy
from edge_agent.realtime import make_realtime

SHM_USABLE = SHM.is_dir() and os.access(SHM, os.W_OK)


def test_inbox_is_a_private_folder_in_shared_memory_fixed_per_state_dir(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    a = inbox_dir(tmp_path / "robot-a", shm)
    assert a.parent == shm and a.is_dir() and (a.stat().st_mode & 0o777) == 0o700
    assert inbox_dir(tmp_path / "robot-a", shm) == a, "a restart finds the same folder (and clears it)"
    assert inbox_dir(tmp_path / "robot-b", shm) != a
    (a / "policy-v3.safetensors").write_bytes(b"left by a killed link process")
    clear(a)
    assert list(a.iterdir()) == []
    clear(tmp_path / "not-there")  # nothing to clear is fine


def test_a_folder_in_shared_memory_that_is_not_ours_is_not_used(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    state = tmp_path / "robot"
    planted = inbox_dir(state, shm)
    planted.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted.symlink_to(elsewhere)  # another user's link, planted under our fixed name
    assert inbox_dir(state, shm) == state / "policy-inbox"
    planted.unlink()
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)  # a folder others may write into
    assert inbox_dir(state, shm) == state / "policy-inbox"
    assert inbox_dir(state, tmp_path / "no-shm") == state / "policy-inbox"


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_realtime_off_leaves_the_thread_alone() -> None:
    assert _in_thread(lambda: (make_realtime(0), os.sched_getscheduler(0))) == (False, os.SCHED_OTHER)


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs CAP_SYS_NICE; this run is not root")
def test_realtime_puts_only_the_calling_thread_in_sched_fifo() -> None:
    ok, policy, prio = _in_thread(lambda: (make_realtime(30), os.sched_getscheduler(0), os.sched_getparam(0).sched_priority))
    assert (ok, policy, prio) == (True, os.SCHED_FIFO, 30)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER, "the process's other threads keep normal scheduling"


def test_realtime_refused_is_said_and_the_loop_runs_on(tmp_path: Path) -> None:
    """A user without CAP_SYS_NICE and with RLIMIT_RTPRIO 0 (a child process: root drops to nobody first)."""
    code = ("import logging, os, resource, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            "from edge_agent.realtime import make_realtime\n"  # imported first: nobody may not read the checkout
            "if os.geteuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
            "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
            "r = make_realtime(10)\n"
            "print('result', r, os.sched_getscheduler(0) == os.SCHED_OTHER)\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert "result False True" in out.stdout, out.stdout + out.stderr
    assert "event=realtime_unavailable" in out.stdout and "LimitRTPRIO" in out.stdout


def test_a_policy_that_does_not_fit_in_shared_memory_goes_to_the_state_dir(tmp_path: Path) -> None:
    """A container's /dev/shm is often 64 MB: a real 1 MiB tmpfs stands in for it (root only: mount)."""
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp_path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and a tmpfs mount")
    try:
        small, fallback = tmp_path / "shm", tmp_path.parent / (tmp_path.name + "-state") / "policy-inbox"
        small.mkdir()
        blob = bytes(range(256)) * 8192  # 2 MiB: more than the tmpfs holds
        path = write_policy([small, fallback], "policy-v2.safetensors", memoryview(blob))
        assert path == fallback / "policy-v2.safetensors" and path.read_bytes() == blob
        assert list(small.iterdir()) == [], "nothing half-written left in shared memory"
        tiny = write_policy([small, fallback], "policy-v3.safetensors", b"x" * 1000)
        assert tiny.parent == fallback, "a small tmpfs keeps a 16 MiB margin, so this one falls back too"
        with pytest.raises(OSError):
            write_policy([small], "policy-v4.safetensors", blob)  # no folder fits: the error, not a torn file
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(tmp_path)], check=False)


def test_inboxes_put_shared_memory_first_and_the_state_dir_last(tmp_path: Path) -> None:
    found = inboxes(tmp_path / "robot")
    assert found[-1] == tmp_path / "robot" / "policy-inbox"
    assert len(found) == (2 if SHM_USABLE else 1)
