"""A hand-edited robots.json cannot switch revocation off: a broken entry fails
closed for that robot, the other entries still apply, and the CLI refuses to
rewrite a table it would silently drop an entry from."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.keys import REGISTRY, ROBOTS
from cloud.robots import RobotRegistry
from shared.errors import ConfigError
from shared.protocol import Reject, Welcome
from tests.security.attacks import fetch_spec, handshake, refusal
from tests.security.test_security_access import in_process


def _edit(path: Path, **changes: dict) -> None:
    data = json.loads(path.read_text())
    for name, fields in changes.items():
        data["robots"][name].update(fields)
    path.write_text(json.dumps(data))


async def test_a_broken_entry_fails_closed_and_the_other_revocations_still_land(tmp_path: Path) -> None:
    async with in_process(tmp_path) as (app, _, url):
        path = app[REGISTRY].path
        creds = {name: RobotRegistry(path).add(name) for name in ("arm-1", "arm-2", "arm-3")}
        app[REGISTRY].reload()
        spec = fetch_spec()
        links = {}
        for name, cred in creds.items():
            ws, _, welcome = await handshake(url, name, spec, cred)
            assert isinstance(welcome, Welcome), name
            links[name] = ws
        # A hand edit: a date string where seconds belong, and a real revocation of another robot.
        _edit(path, **{"arm-1": {"expires": "2030-01-01"}, "arm-2": {"revoked": True}})
        (code1, closed1), (code2, closed2) = [await refusal(links[n], timeout=10) for n in ("arm-1", "arm-2")]
        assert closed1 and closed2 and code2 == "revoked" and code1 == "revoked"
        assert "arm-1" in app[REGISTRY].invalid and "expires" in app[REGISTRY].invalid["arm-1"]
        ws, _, reply = await handshake(url, "arm-1", spec, creds["arm-1"])
        assert isinstance(reply, Reject) and reply.code == "auth_failed", "refused until the entry is fixed"
        ws, _, reply = await handshake(url, "arm-3", spec, creds["arm-3"])
        assert isinstance(reply, Welcome), "the valid entries still apply"
        await ws.close()


@pytest.mark.parametrize("field,value", [
    ("stored_key", "zz"), ("created", "yesterday"), ("revoked", "no"), ("expires", float("nan")), ("extra", 1),
])
def test_each_bad_field_is_named(tmp_path: Path, field: str, value: object) -> None:
    path = tmp_path / "robots.json"
    RobotRegistry(path).add("arm-1")
    data = json.loads(path.read_text())
    data["robots"]["arm-1"][field] = value
    path.write_text(json.dumps(data))
    reg = RobotRegistry(path)
    assert reg.get("arm-1") is None and field in reg.invalid["arm-1"]
    with pytest.raises(ConfigError, match="by hand"):
        reg.add("arm-2")  # rewriting the file would drop the broken entry without a word


def test_a_file_that_is_not_a_table_is_refused_and_the_table_in_memory_kept(tmp_path: Path) -> None:
    path = tmp_path / "robots.json"
    reg = RobotRegistry(path)
    reg.add("arm-1")
    path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        reg.reload()
    assert reg.get("arm-1") is not None


def test_robots_list_shows_a_broken_entry(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    path = tmp_path / "data" / "robots.json"
    RobotRegistry(path).add("arm-1")
    _edit(path, **{"arm-1": {"revoked": "maybe"}})
    r = subprocess.run([sys.executable, "-m", "cloud", "robots", "list", "--config", str(run)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "INVALID" in r.stdout and "revoked" in r.stdout


def test_the_operators_commands_load_no_torch() -> None:
    """``cloud-learner robots add/list/revoke`` are typed at a prompt on the learner host (and run by
    every security test): the CLI imports torch only in the commands that train or serve."""
    code = "import sys, cloud.cli\nassert 'torch' not in sys.modules, 'cloud.cli imported torch'\n"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], check=True, timeout=60)


def test_enroll_writes_the_credential_0600_even_over_a_loose_leftover_temp_file(tmp_path: Path) -> None:
    import os
    import stat

    from edge_agent.enrollment import _write_secret

    path = tmp_path / "state" / "credential"
    path.parent.mkdir()
    leftover = path.with_name("credential.tmp")
    leftover.write_text("old")
    os.chmod(leftover, 0o644)  # left by a crash, readable by others
    _write_secret(path, "fr1_secret\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == "fr1_secret\n"


def test_one_ipv6_host_counts_as_one_source_across_its_64() -> None:
    from cloud.admission import SourceCounter

    caps = SourceCounter(total=100, per_source=2)
    assert caps.admit("2001:db8::1") is None and caps.admit("2001:db8::ffff:2") is None
    assert caps.admit("2001:db8::3") is not None, "a third address of the same /64 is the same host"
    assert caps.admit("2001:db8:0:1::1") is None, "another /64 is another source"
    assert caps.admit("10.0.0.1") is None and caps.admit("10.0.0.2") is None, "IPv4 counts per address (NAT)"
    caps.release("2001:db8::1")
    assert caps.admit("2001:db8::9") is None, "a released slot is free for the same /64"


async def test_racing_handshakes_of_one_robot_leave_no_link_outside_the_table(tmp_path: Path) -> None:
    """Two handshakes of one id that overlap must not leave a welcomed link that revocation
    cannot see: every link is in the table or closed by the link that replaced it."""
    async with in_process(tmp_path) as (app, _, url):
        cred = RobotRegistry(app[REGISTRY].path).add("thief")
        app[REGISTRY].reload()
        spec = fetch_spec()
        results = await asyncio.gather(*[handshake(url, "thief", spec, cred) for _ in range(6)], return_exceptions=True)
        # a link replaced before its welcome is closed during the handshake: an exception here
        welcomed = [r[0] for r in results if isinstance(r, tuple) and isinstance(r[2], Welcome)]
        assert welcomed, "at least one link is let in"
        RobotRegistry(app[REGISTRY].path).revoke("thief")  # the learner follows the file by itself
        closed = await asyncio.gather(*[refusal(ws, timeout=10) for ws in welcomed])
        assert all(was_closed for _, was_closed in closed), closed
        assert "thief" not in app[ROBOTS]
