"""The stream rules of an open link, sans-I/O (shared.protocol.stream, shared.protocol.codes):
credit, ack order, policy parts and resume, the message rate, and the reason codes."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import FleetError, InvalidState, ProtocolError, SchemaError, WeightsError
from shared.protocol import CloudConnection, EdgeConnection, Policy, Reject, decode_frame, Limits
from shared.protocol.codes import TRANSIENT, RejectCode
from shared.protocol.stream import AckOrder, PolicyReceiver, PolicySender, RateLimit, UploadWindow
from shared.weights import sha256

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ reason codes


def test_a_reject_code_is_its_wire_string_everywhere():
    assert RejectCode.HOLD == "hold" and str(RejectCode.HOLD) == "hold" and f"{RejectCode.HOLD}" == "hold"
    assert {RejectCode.HOLD: 1} == {"hold": 1}  # the same /status rejections key
    data = CloudConnection().reject(RejectCode.TOO_MANY_CONNECTIONS, "full")
    meta = msgpack.unpackb(data[12:])
    assert meta["code"] == "too_many_connections" and type(meta["code"]) is str
    assert Reject.parse(decode_frame(data, Limits())).code == "too_many_connections"


def test_an_error_keeps_its_code_as_the_plain_string():
    e = ProtocolError("x", RejectCode.STREAM_GAP)
    assert e.code == "stream_gap" and type(e.code) is str
    assert SchemaError("y", code="stream_gap").code == "stream_gap"  # a free string still works


def test_reject_codes_are_unique_and_transient_ones_are_members():
    assert len({c.value for c in RejectCode}) == len(RejectCode)
    assert TRANSIENT <= set(RejectCode)
    assert RejectCode.HOLD in TRANSIENT and "hold" in TRANSIENT and "auth_failed" not in TRANSIENT
    # a crowd of handshakes (a learner restart, or a flood) and a per-robot quota are waited out, not shown as refusals
    assert {"too_many_handshakes", "quota_exceeded"} <= TRANSIENT


def test_every_code_docs_security_lists_is_a_reject_code():
    """docs/security.md's "Limits and refusals" table names the codes a robot is refused with."""
    text = (ROOT / "docs" / "security.md").read_text()
    start = text.index("| limit | config key | default | code |")
    rows = text[start : text.index("\n\n", start)].splitlines()[2:]
    codes = {c for row in rows for c in re.findall(r"`([a-z_]+)`", row.rsplit("|", 2)[-2])}
    assert {"frame_too_large", "too_many_inflight", "rate_limited", "quota_exceeded", "stream_gap"} <= codes
    assert codes <= {c.value for c in RejectCode}, codes - {c.value for c in RejectCode}


def test_invalid_state_is_local_misuse_not_a_peer_fault():
    assert not issubclass(InvalidState, ProtocolError) and issubclass(InvalidState, FleetError)
    edge = EdgeConnection("robot-1", {}, [])
    with pytest.raises(InvalidState):
        edge.chunk(1, "ep", 1, 1, 0, b"x")
    with pytest.raises(ProtocolError) as ei:  # the peer sent a broken frame: its fault
        edge.receive(CloudConnection().reject(RejectCode.HOLD, "x")[:5])
    assert ei.value.code == "truncated"


# ------------------------------------------------------------------ the robot's credit window


def test_window_sends_at_most_credit_past_the_durable_mark():
    w = UploadWindow(acked=10, credit=3)
    sent = []
    while (seq := w.next(limit_seq=100, acked=10)) is not None:
        w.sent(seq)
        sent.append(seq)
    assert sent == [11, 12, 13] and w.inflight == 3
    assert w.next(100, acked=12) == 14  # two made durable: two more may go
    w.sent(14)
    assert w.next(100, acked=12) == 15
    w.sent(15)
    assert w.next(100, acked=12) is None


def test_window_stops_at_the_spools_last_seq_and_skips_a_lost_range():
    w = UploadWindow(acked=0, credit=16)
    assert w.next(limit_seq=0, acked=0) is None
    assert w.next(limit_seq=5, acked=0) == 1
    w.sent(3)  # a lost range 1..3 reported in place of its chunks
    assert w.next(5, 0) == 4
    with pytest.raises(ValueError):
        w.sent(2)


def test_window_jumps_to_a_mark_the_cloud_already_holds():
    w = UploadWindow(acked=0, credit=4)
    assert w.next(limit_seq=50, acked=40) == 41  # a welcome's mark past what this session sent


def test_window_counts_acks_received_apart_from_durable():
    w = UploadWindow(acked=5, credit=2)
    assert w.ack(7) and w.received == 7
    assert not w.ack(6) and w.received == 7  # a stale ack does not move it back
    assert w.acked == 5  # credit frees only when the spool has made it durable


@settings(max_examples=200, deadline=None)
@given(last=st.integers(1, 60), credit=st.integers(1, 8), acked0=st.integers(0, 10),
       lost=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=4), data=st.data())
def test_window_sends_every_seq_once_in_order_never_past_credit(last, credit, acked0, lost, data):
    """A model run: the spool holds acked0+1..acked0+last with some lost ranges; acks come in
    random steps. Every chunk goes once, every lost range is reported once, in order, within credit."""
    limit = acked0 + last
    ranges: list[tuple[int, int]] = []
    for first, extra in sorted(lost):
        first += acked0
        end = min(first + extra, limit)
        if first <= limit and all(first > b for _, b in ranges):
            ranges.append((first, end))
    w, acked, out = UploadWindow(acked0, credit), acked0, []
    for _ in range(10 * last + 10):
        while (seq := w.next(limit, acked)) is not None:
            assert seq - acked <= credit
            r = next((r for r in ranges if r[0] <= seq <= r[1]), None)
            w.sent(r[1] if r else seq)
            out.append(r if r else seq)
        if acked == limit:
            break
        acked = data.draw(st.integers(acked + 1, w.next_seq - 1), label="durable mark")  # the window was full
    want = []
    s = acked0 + 1
    while s <= limit:
        r = next((r for r in ranges if r[0] <= s <= r[1]), None)
        want.append(r if r else s)
        s = (r[1] if r else s) + 1
    assert out == want


# ------------------------------------------------------------------ the learner's ack order


def test_acks_release_in_arrival_order_as_writes_become_durable():
    order = AckOrder(max_inflight=4)
    for seq in (1, 2, 5, 6):  # 5: a lost range 3..5 is acked by its last seq
        order.accept(seq)
    assert order.durable(2) is None  # 1 is still being written: no ack may cover it
    assert order.durable(5) is None
    assert order.durable(1) == 5  # 1, 2 and 5 are durable: one ack covers them
    assert order.durable(6) == 6 and order.pending == 0 and order.acked == 6
    with pytest.raises(ValueError):
        order.durable(6)


def test_a_robot_past_twice_its_credit_is_refused():
    order = AckOrder(max_inflight=2)
    for seq in range(1, 5):
        order.accept(seq)
    with pytest.raises(ProtocolError) as ei:
        order.accept(5)
    assert ei.value.code == "too_many_inflight"
    order.durable(1)
    order.accept(5)  # an ack freed room


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(1, 13))))
def test_ack_order_never_acks_past_a_write_not_yet_durable(perm):
    order, released = AckOrder(max_inflight=6), []
    for seq in range(1, 13):
        order.accept(seq)
    done: set[int] = set()
    for seq in perm:
        done.add(seq)
        r = order.durable(seq)
        if r is not None:
            released.append(r)
            assert all(s in done for s in range(1, r + 1))
    assert released == sorted(released) and released[-1] == 12


# ------------------------------------------------------------------ policy parts and resume


def parts_of(sender: PolicySender, blob: bytes, version: int, latest=None) -> list[tuple[int, int]]:
    sender.begin(version, len(blob))
    out = []
    while (span := sender.next_part(version if latest is None else latest)) is not None:
        out.append(span)
    return out


def test_sender_cuts_a_blob_into_parts_and_then_has_it():
    s = PolicySender(have=0, part_bytes=4)
    assert parts_of(s, b"x" * 10, 3) == [(0, 4), (4, 8), (8, 10)]
    assert s.have == 3


def test_sender_resumes_the_hellos_partial_once_and_only_for_that_version():
    s = PolicySender(have=1, partial=(2, 8), part_bytes=4)
    assert s.begin(2, 10) == 8
    assert s.next_part(2) == (8, 10) and s.next_part(2) is None and s.have == 2
    assert s.begin(3, 10) == 0  # the resume point held for the first blob only
    assert PolicySender(0, partial=(2, 8)).begin(3, 10) == 0  # another version: from the start
    assert PolicySender(0, partial=(2, 10)).begin(2, 10) == 0  # nothing left to resume: whole again


def test_a_newer_version_cuts_in_between_parts():
    s = PolicySender(have=0, part_bytes=4)
    s.begin(2, 10)
    assert s.next_part(2) == (0, 4)
    assert s.next_part(3) is None  # v3 was published: v2 stops here
    assert s.have == 0  # and is not taken as sent
    assert parts_of(s, b"y" * 6, 3) == [(0, 4), (4, 6)] and s.have == 3


def test_an_empty_blob_is_sent_as_nothing_and_had():
    s = PolicySender(have=0)
    assert parts_of(s, b"", 1) == [] and s.have == 1


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(min_size=1, max_size=300), part=st.integers(1, 64), cut=st.integers(0, 10))
def test_sender_and_receiver_deliver_a_blob_whole_across_a_cut_link(blob, part, cut):
    """The link is cut after ``cut`` parts; the next link resumes from the receiver's partial."""
    rx, digest = PolicyReceiver(1 << 20), sha256(blob)
    got = None
    sender = PolicySender(have=0, part_bytes=part)
    sender.begin(5, len(blob))
    for _ in range(cut):
        span = sender.next_part(5)
        if span is None:
            break
        got = rx.add(Policy(5, digest, len(blob), span[0], blob[span[0]:span[1]]))
    if got is None:
        sender = PolicySender(have=0, partial=rx.partial, part_bytes=part)  # the next hello
        assert sender.begin(5, len(blob)) == rx.partial[1]
        while (span := sender.next_part(5)) is not None:
            got = rx.add(Policy(5, digest, len(blob), span[0], blob[span[0]:span[1]]))
    assert got == (5, digest, blob)
    assert rx.partial == (0, 0)


def test_receiver_refuses_a_resume_it_has_nothing_of_and_a_blob_over_its_limit():
    rx = PolicyReceiver(100)
    with pytest.raises(WeightsError):
        rx.add(Policy(1, "ab" * 32, 10, 4, b"x"))
    with pytest.raises(WeightsError) as ei:
        rx.add(Policy(1, "ab" * 32, 101, 0, b"x"))
    assert ei.value.code == "too_large"


# ------------------------------------------------------------------ the message rate


def test_rate_limit_allows_a_two_second_burst_then_refills_with_the_clock():
    bucket = RateLimit(5, now=100.0)
    assert all(bucket.take(100.0) for _ in range(10))
    assert not bucket.take(100.0)
    assert bucket.take(100.2) and not bucket.take(100.2)  # 0.2 s at 5/s: one token
    assert all(bucket.take(200.0) for _ in range(10)) and not bucket.take(200.0)  # capped at the burst


def test_rate_limit_refuses_with_rate_limited_and_a_clock_going_back_adds_nothing():
    bucket = RateLimit(1, now=10.0)
    bucket.admit(10.0)
    bucket.admit(10.0)
    with pytest.raises(ProtocolError) as ei:
        bucket.admit(5.0)
    assert ei.value.code == "rate_limited"
