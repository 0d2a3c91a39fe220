"""The spool: real segment files in tmp_path, real fsync, a real SIGKILLed writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from edge_agent.spool import Spool, SpoolCorrupt

ROOT = Path(__file__).resolve().parents[2]


def _body(seq: int) -> bytes:
    """A deterministic, seq-specific body of varying length."""
    unit = f"chunk-{seq:06d}|".encode()
    return unit * (3 + seq % 7)


def _append(sp: Spool, n: int) -> list[int]:
    out = []
    for _ in range(n):
        seq_guess = sp.last_seq + 1
        body = _body(seq_guess)
        seq = sp.append(f"ep-{seq_guess}", seq_guess % 50 + 1, len(body) * 2, zlib.crc32(body), body)
        out.append(seq)
    return out


def _check(sp: Spool, seq: int) -> None:
    rec = sp.read(seq)
    body = _body(seq)
    assert rec.seq == seq
    assert rec.episode_id == f"ep-{seq}"
    assert rec.rows == seq % 50 + 1
    assert rec.raw_size == len(body) * 2
    assert rec.body_crc == zlib.crc32(body)
    assert rec.body == body


def _segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def _append_tracking(sp: Spool, d: Path, n: int) -> dict[int, tuple[Path, int, int]]:
    """Append n records; return seq -> (segment, offset, length), measured from file sizes only."""
    where = {}
    for _ in range(n):
        before = {p: p.stat().st_size for p in _segments(d)}
        (seq,) = _append(sp, 1)
        after = {p: p.stat().st_size for p in _segments(d)}
        (seg,) = [p for p in after if after[p] != before.get(p, 0)]
        where[seq] = (seg, before.get(seg, 0), after[seg] - before.get(seg, 0))
    return where


# ---------------------------------------------------------------- basics


def test_append_read_round_trip(tmp_path):
    sp = Spool(tmp_path)
    seqs = _append(sp, 10)
    assert seqs == list(range(1, 11))
    for s in seqs:
        _check(sp, s)
    assert sp.pending() == 10
    sp.close()
    sp2 = Spool(tmp_path)  # and from disk
    assert (sp2.acked_seq, sp2.last_seq) == (0, 10)
    for s in seqs:
        _check(sp2, s)
    sp2.close()


def test_empty_episode_id_and_body_round_trip(tmp_path):
    sp = Spool(tmp_path)
    seq = sp.append("", 0, 0, 0, b"")
    rec = sp.read(seq)
    assert (rec.seq, rec.episode_id, rec.rows, rec.body) == (1, "", 0, b"")
    sp.close()
    assert Spool(tmp_path).read(1).body == b""


def test_sequences_never_repeat_across_reopen(tmp_path):
    seen: list[int] = []
    for _ in range(4):
        sp = Spool(tmp_path)
        seen += _append(sp, 3)
        sp.close()
    assert seen == list(range(1, 13))


def test_sequences_never_repeat_after_everything_acked_and_deleted(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    _append(sp, 7)
    assert len(_segments(tmp_path)) > 1
    sp.ack(7)
    assert _segments(tmp_path) == []
    assert sp.pending() == 0
    assert _append(sp, 1) == [8]  # same process, after the active segment was deleted
    sp.ack(8)
    sp.close()
    assert _segments(tmp_path) == []

    sp2 = Spool(tmp_path)
    assert (sp2.acked_seq, sp2.last_seq, sp2.pending()) == (8, 8, 0)
    assert _append(sp2, 2) == [9, 10]
    _check(sp2, 9)
    sp2.close()


def _seg_ranges(d: Path, last_seq: int) -> list[tuple[int, int]]:
    firsts = [int(p.stem) for p in _segments(d)]
    return [(f, (firsts[i + 1] - 1) if i + 1 < len(firsts) else last_seq) for i, f in enumerate(firsts)]


def test_ack_deletes_only_fully_acked_segments(tmp_path):
    sp = Spool(tmp_path, segment_bytes=400)
    _append(sp, 12)
    ranges = _seg_ranges(tmp_path, 12)
    assert len(ranges) >= 3 and ranges[0][0] == 1
    # ack into the middle of a segment holding several records
    first, last = next((f, l) for f, l in ranges[1:] if l > f)
    mid = first  # the segments before are fully acked, this one only partly
    sp.ack(mid)
    assert [f for f, _ in _seg_ranges(tmp_path, 12)] == [f for f, l in ranges if l > mid]
    assert sp.acked_seq == mid
    for s in range(mid + 1, 13):
        _check(sp, s)
    with pytest.raises(KeyError):
        sp.read(mid)  # acked records are forgotten
    # acking an older mark again changes nothing
    sp.ack(1)
    assert [f for f, _ in _seg_ranges(tmp_path, 12)] == [f for f, l in ranges if l > mid]
    sp.close()


def test_reopen_with_acked_records_in_a_kept_segment(tmp_path):
    sp = Spool(tmp_path, segment_bytes=400)
    _append(sp, 12)
    ranges = _seg_ranges(tmp_path, 12)
    mid, _ = next((f, l) for f, l in ranges[1:] if l > f)
    sp.ack(mid)
    sp.close()
    sp2 = Spool(tmp_path, segment_bytes=400)  # reopen with acked records still in a kept segment
    assert (sp2.acked_seq, sp2.last_seq) == (mid, 12)
    for s in range(mid + 1, 13):
        _check(sp2, s)
    with pytest.raises(KeyError):
        sp2.read(mid)  # an acked record in a kept segment is not resurrected
    assert _append(sp2, 1) == [13]
    sp2.close()


def test_ack_beyond_last_seq_is_capped(tmp_path):
    sp = Spool(tmp_path)
    _append(sp, 3)
    sp.ack(100)
    assert sp.acked_seq == 3
    assert _append(sp, 1) == [4]
    sp.close()


# ---------------------------------------------------------------- torn tails and corruption


def test_torn_tail_mid_record_is_cut_on_reopen(tmp_path):
    sp = Spool(tmp_path)
    where = _append_tracking(sp, tmp_path, 5)
    sp.close()
    (seg,) = _segments(tmp_path)
    _, off5, len5 = where[5]
    full = seg.stat().st_size
    with open(seg, "r+b") as fh:
        fh.truncate(off5 + len5 // 2)  # power cut half-way through record 5
    sp2 = Spool(tmp_path)
    assert sp2.last_seq == 4
    for s in range(1, 5):
        _check(sp2, s)
    assert seg.stat().st_size == off5 < full
    # the torn record was never reported as appended, so its seq may be given again
    assert _append(sp2, 1) == [5]
    _check(sp2, 5)
    sp2.close()
    sp3 = Spool(tmp_path)
    for s in range(1, 6):
        _check(sp3, s)
    sp3.close()


def test_torn_tail_in_the_length_prefix_is_cut(tmp_path):
    sp = Spool(tmp_path)
    _append(sp, 3)
    sp.close()
    (seg,) = _segments(tmp_path)
    with open(seg, "ab") as fh:
        fh.write(b"\x05\x00")  # 2 of 8 prefix bytes
    sp2 = Spool(tmp_path)
    assert sp2.last_seq == 3
    for s in (1, 2, 3):
        _check(sp2, s)
    sp2.close()


@pytest.mark.parametrize("garbage", [b"\x00" * 64, os.urandom(333), b"\xff" * 8 + b"junk"], ids=["zeros", "random", "ff-junk"])
def test_garbage_tail_is_cut_and_complete_records_kept(tmp_path, garbage):
    sp = Spool(tmp_path)
    _append(sp, 5)
    sp.close()
    (seg,) = _segments(tmp_path)
    good = seg.stat().st_size
    with open(seg, "ab") as fh:
        fh.write(garbage)
    sp2 = Spool(tmp_path)
    assert sp2.last_seq == 5
    for s in range(1, 6):
        _check(sp2, s)
    assert seg.stat().st_size == good
    assert _append(sp2, 1) == [6]
    sp2.close()


def test_segment_holding_only_a_torn_record_is_removed(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    _append(sp, 6)
    sp.close()
    last = _segments(tmp_path)[-1]
    first_in_last = int(last.stem)
    with open(last, "r+b") as fh:
        fh.truncate(5)
    sp2 = Spool(tmp_path, segment_bytes=200)
    assert not last.exists()
    assert sp2.last_seq == first_in_last - 1
    for s in range(1, first_in_last):
        _check(sp2, s)
    assert _append(sp2, 1) == [first_in_last]
    sp2.close()


def test_leftover_tmp_file_is_removed_on_open(tmp_path):
    sp = Spool(tmp_path)
    _append(sp, 2)
    sp.close()
    (tmp_path / "state.json.tmp").write_bytes(b"99")
    (tmp_path / "acked.tmp").write_bytes(b"99")
    sp2 = Spool(tmp_path)
    assert not (tmp_path / "state.json.tmp").exists()
    assert not (tmp_path / "acked.tmp").exists()
    assert (sp2.acked_seq, sp2.last_seq) == (0, 2)
    sp2.close()


def _flip_middle_of_record(where: dict[int, tuple[Path, int, int]], seq: int) -> None:
    seg, off, length = where[seq]
    pos = off + length // 2 + 4
    data = bytearray(seg.read_bytes())
    data[pos] ^= 0xFF
    seg.write_bytes(bytes(data))


def test_flipped_byte_never_yields_a_corrupt_record(tmp_path):
    """What happens today: the scan stops at the bad record; records before it are intact."""
    sp = Spool(tmp_path)
    where = _append_tracking(sp, tmp_path, 6)
    sp.close()
    _flip_middle_of_record(where, 3)
    sp2 = Spool(tmp_path)
    for s in (1, 2):
        _check(sp2, s)
    with pytest.raises(KeyError):
        sp2.read(3)  # the damaged record is never handed out
    for s in range(3, 7):
        try:
            _check(sp2, s)  # whatever is still readable is byte-exact
        except KeyError:
            pass
    sp2.close()


def test_flipped_byte_keeps_later_good_records_and_reports_the_bad_one(tmp_path):
    sp = Spool(tmp_path)
    where = _append_tracking(sp, tmp_path, 6)
    sp.close()
    _flip_middle_of_record(where, 3)
    sp2 = Spool(tmp_path)
    for s in (1, 2, 4, 5, 6):
        _check(sp2, s)
    with pytest.raises(KeyError):
        sp2.read(3)
    assert sp2.lost_range(3) is not None and sp2.lost_range(3)[:2] == (3, 3)
    assert sp2.lost_range(2) is None and sp2.lost_range(4) is None
    sp2.close()
    sp3 = Spool(tmp_path)  # reported once, still known after another restart
    assert sp3.lost_range(3)[:2] == (3, 3)
    assert sum(1 for r in sp3.lost if r[0] <= 3 <= r[1]) == 1
    sp3.close()


def test_flipped_byte_does_not_cause_sequence_reuse(tmp_path):
    sp = Spool(tmp_path)
    where = _append_tracking(sp, tmp_path, 6)
    sp.close()
    _flip_middle_of_record(where, 3)
    sp2 = Spool(tmp_path)
    assert _append(sp2, 1)[0] == 7
    sp2.close()


def test_flipped_byte_in_the_last_record_does_not_cause_sequence_reuse(tmp_path):
    sp = Spool(tmp_path)
    where = _append_tracking(sp, tmp_path, 6)
    sp.close()
    _flip_middle_of_record(where, 6)  # complete and fsynced when append returned
    sp2 = Spool(tmp_path)
    assert _append(sp2, 1)[0] > 6
    sp2.close()


def test_flipped_byte_in_an_earlier_segment_keeps_later_segments(tmp_path):
    sp = Spool(tmp_path, segment_bytes=250)
    where = _append_tracking(sp, tmp_path, 9)
    sp.close()
    segs = _segments(tmp_path)
    assert len(segs) >= 3
    _flip_middle_of_record(where, 1)
    sp2 = Spool(tmp_path, segment_bytes=250)
    assert sp2.last_seq == 9  # no sequence is reused
    for s in range(int(segs[1].stem), 10):
        _check(sp2, s)
    with pytest.raises(KeyError):
        sp2.read(1)
    assert _append(sp2, 1) == [10]
    sp2.close()


# ---------------------------------------------------------------- the cloud's mark


def test_adopt_cloud_mark_beyond_local_counter(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    _append(sp, 3)
    sp.adopt_cloud_mark(40)  # e.g. a fresh disk on a robot the cloud knows
    assert (sp.acked_seq, sp.last_seq, sp.pending()) == (40, 40, 0)
    assert _segments(tmp_path) == []
    assert _append(sp, 2) == [41, 42]
    _check(sp, 41)
    sp.close()
    sp2 = Spool(tmp_path)
    assert (sp2.acked_seq, sp2.last_seq) == (40, 42)
    _check(sp2, 41)
    _check(sp2, 42)
    assert _append(sp2, 1) == [43]
    sp2.close()


def test_adopt_cloud_mark_on_an_empty_spool_survives_reopen(tmp_path):
    sp = Spool(tmp_path)
    sp.adopt_cloud_mark(17)
    sp.close()
    sp2 = Spool(tmp_path)
    assert _append(sp2, 1) == [18]
    sp2.close()


def test_adopt_cloud_mark_below_local_counter_acks_up_to_it(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    _append(sp, 8)
    sp.adopt_cloud_mark(5)
    assert (sp.acked_seq, sp.last_seq) == (5, 8)
    for s in (6, 7, 8):
        _check(sp, s)
    assert _append(sp, 1) == [9]
    sp.adopt_cloud_mark(2)  # an older mark changes nothing
    assert sp.acked_seq == 5
    sp.close()


# ---------------------------------------------------------------- SIGKILL


_CHILD = textwrap.dedent(
    """
    import sys, zlib
    sys.path.insert(0, {root!r})
    from edge_agent.spool import Spool

    def body(seq):
        unit = f"chunk-{{seq:06d}}|".encode()
        return unit * (3 + seq % 7)

    sp = Spool({d!r}, segment_bytes=4096)
    print("READY", sp.last_seq, flush=True)
    while True:
        seq = sp.last_seq + 1
        b = body(seq)
        got = sp.append(f"ep-{{seq}}", seq % 50 + 1, len(b) * 2, zlib.crc32(b), b)
        assert got == seq
        print(got, flush=True)
    """
)


def _run_child_and_kill(d: Path, min_records: int) -> list[int]:
    script = _CHILD.format(root=str(ROOT), d=str(d))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reported: list[int] = []
    try:
        first = proc.stdout.readline().decode()
        assert first.startswith("READY"), proc.stderr.read().decode()
        deadline = time.monotonic() + 20
        while len(reported) < min_records and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            reported.append(int(line))
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in rest.decode().splitlines():
        if line.strip().isdigit():
            reported.append(int(line))
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return reported


def test_sigkilled_writer_loses_nothing_it_reported(tmp_path):
    reported = _run_child_and_kill(tmp_path, 150)
    assert len(reported) >= 150
    assert reported == list(range(1, len(reported) + 1))
    sp = Spool(tmp_path, segment_bytes=4096)
    assert sp.last_seq >= reported[-1]
    for s in range(1, sp.last_seq + 1):  # every reported one, and anything written after it, intact
        _check(sp, s)
    assert len(_segments(tmp_path)) > 1
    # a second run continues the numbering; no sequence repeats
    sp.close()
    before = sp.last_seq
    more = _run_child_and_kill(tmp_path, 20)
    assert more[0] == before + 1
    sp2 = Spool(tmp_path, segment_bytes=4096)
    for s in range(1, sp2.last_seq + 1):
        _check(sp2, s)
    sp2.close()


def test_record_damaged_after_it_was_written_is_caught_on_read(tmp_path):
    from edge_agent.spool import SpoolCorrupt

    sp = Spool(tmp_path)
    where = _append_tracking(sp, tmp_path, 4)
    _flip_middle_of_record(where, 2)  # bit rot while the spool is open
    _check(sp, 1)
    with pytest.raises(SpoolCorrupt):
        sp.read(2)
    assert sp.lost_range(2)[:2] == (2, 2)
    _check(sp, 3)
    _check(sp, 4)
    assert _append(sp, 1) == [5]
    sp.close()
    sp2 = Spool(tmp_path)
    assert sp2.lost_range(2) is not None
    for s in (1, 3, 4, 5):
        _check(sp2, s)
    sp2.ack(5)  # once the cloud is past it, the loss no longer needs reporting
    assert sp2.lost_range(2) is None
    sp2.close()


def test_many_lost_ranges_are_all_kept_across_reopen(tmp_path):
    """Loss reports live in their own file: none is dropped to fit the fixed-size state slot."""
    sp = Spool(tmp_path, segment_bytes=1 << 30)
    for _ in range(400):
        sp.append("e", 1, 1, 0, b"x" * 10)
    for seq in range(2, 400, 2):  # every other record damaged when read back
        loc = sp._index[seq]
        with open(loc.segment, "r+b") as fh:
            fh.seek(loc.offset + loc.length - 1)
            last = fh.read(1)[0]
            fh.seek(loc.offset + loc.length - 1)
            fh.write(bytes([last ^ 0xFF]))
        with pytest.raises(SpoolCorrupt):
            sp.read(seq)
    sp.close()
    again = Spool(tmp_path)
    assert all(again.lost_range(seq) is not None for seq in range(2, 400, 2))
    assert again.lost_range(3) is None and again.read(3).seq == 3


def test_a_record_missing_from_disk_is_reported_lost_not_a_crash(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    for _ in range(6):
        sp.append("e", 1, 1, 0, b"x" * 50)
    victim = sp._index[3]
    sp.close()
    reopened = Spool(tmp_path)
    victim.segment.unlink()  # lost outside our control after the index was built
    reopened._index.pop(3)
    with pytest.raises(SpoolCorrupt):
        reopened.read(3)
    assert reopened.lost_range(3) is not None
    with pytest.raises(KeyError):
        reopened.read(3)  # now a reported loss, like any other
