"""The Ledger in process: totals survive a restart, chunks spooled but not
counted (a kill in between) are counted once from the spool, lost chunks are
not counted, and a ledger write failure never fails the caller."""

from __future__ import annotations

import json

from edge_agent.ledger import Ledger
from edge_agent.spool import Spool


def _spool_chunk(spool: Spool, rows: int) -> int:
    return spool.append("ep-1", rows, 10 * rows, 0, b"x" * (10 * rows))


def test_totals_survive_a_restart(tmp_path):
    led = Ledger(tmp_path / "state", "arm-1")
    led.record(1, 50)
    led.record(2, 30, episode_done=True, success=True)
    led.record(3, 20, episode_done=True, success=False)
    led.close()
    again = Ledger(tmp_path / "state", "arm-1")
    assert (again.data["transitions"], again.data["chunks"], again.data["episodes"], again.data["successes"]) == (100, 3, 2, 1)
    assert again.last_seq == 3
    assert (tmp_path / "state" / "chunks.log").read_text().split("\n")[:3] == ["1 50", "2 30", "3 20"]
    again.close()


def test_reconcile_counts_spooled_chunks_the_ledger_missed_exactly_once(tmp_path):
    spool = Spool(tmp_path / "spool", fsync="never")
    led = Ledger(tmp_path / "state", "arm-1")
    led.record(_spool_chunk(spool, 50), 50)
    _spool_chunk(spool, 40)  # killed after the spool write, before the ledger's
    _spool_chunk(spool, 30)
    led.close()
    spool.close()

    spool = Spool(tmp_path / "spool", fsync="never")
    led = Ledger(tmp_path / "state", "arm-1")
    led.reconcile(spool)
    assert (led.data["transitions"], led.data["chunks"], led.last_seq) == (120, 3, 3)
    led.reconcile(spool)  # idempotent
    assert led.data["transitions"] == 120
    led.close()
    spool.close()


def test_a_ledger_write_failure_is_logged_not_raised(tmp_path, caplog):
    led = Ledger(tmp_path / "state", "arm-1")
    led._log.close()
    led._log = open("/dev/full", "a")  # writes fail with ENOSPC, as on a full disk
    led.record(1, 50)
    assert led.data["transitions"] == 50
    assert any("ledger_write_failed" in r.getMessage() for r in caplog.records)
    led.close()


def test_policy_versions_used_are_kept_once_in_order(tmp_path):
    led = Ledger(tmp_path / "state", "arm-1")
    led.save([0, 3])
    led.save([3, 5, 0, 7])
    assert json.loads((tmp_path / "state" / "ledger.json").read_text())["policy_versions_used"] == [0, 3, 5, 7]
    led.close()
