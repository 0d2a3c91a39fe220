"""Every reason code a link is refused or closed with: on the wire (a Reject's ``code``),
in the learner's ``/status`` -> ``rejections`` counts, and in the robot's log.

A ``str`` enum: a member *is* its wire string, so ``RejectCode.HOLD == "hold"``, a
member keys the same ``/status`` entry as the string, and msgpack/json write the
plain value. docs/security.md lists them; tests/shared/test_shared_stream.py keeps
the two in step.
"""

from __future__ import annotations

import enum


class RejectCode(str, enum.Enum):
    # a frame or message the peer sent is malformed or out of turn (shared.protocol)
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    BAD_META = "bad_meta"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_STATE = "bad_state"  # a message the peer may not send now
    BAD_FRAME = "bad_frame"  # a websocket-level fault: a text frame, a broken frame
    CLOSED = "closed"  # bytes fed to a connection that already closed
    PROTOCOL_ERROR = "protocol_error"
    # admission and handshake (cloud.gateway)
    TOO_MANY_HANDSHAKES = "too_many_handshakes"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    HELLO_TOO_LARGE = "hello_too_large"
    CLOSED_BEFORE_HELLO = "closed_before_hello"  # counted only: a cut or a port probe
    AUTH_FAILED = "auth_failed"
    REVOKED = "revoked"
    CREDENTIAL_EXPIRED = "credential_expired"
    CREDENTIAL_OK = "credential_ok"  # a hello without a spec (`edge-agent enroll`/`check`): not a fault
    NO_SHARD = "no_shard"  # cluster: no shard serves this robot
    # the robot's own refusals and goodbyes (edge_agent)
    LEARNER_UNVERIFIED = "learner_unverified"
    PIN_MISMATCH = "pin_mismatch"
    AGENT_STOPPING = "agent_stopping"
    ENROLLED = "enrolled"
    # the stream (shared.protocol.stream, cloud.ingest, cloud.quotas)
    TOO_MANY_INFLIGHT = "too_many_inflight"
    RATE_LIMITED = "rate_limited"
    STREAM_GAP = "stream_gap"
    HOLD = "hold"  # learner storage failing: keep the data, retry
    QUOTA_EXCEEDED = "quota_exceeded"
    # chunk checks (shared.chunk, shared.compression, cloud.ingest, cloud.buffer)
    BAD_CHECKSUM = "bad_checksum"
    BAD_SCHEMA = "bad_schema"
    BAD_CHUNK = "bad_chunk"
    BAD_COMPRESSION = "bad_compression"
    WRONG_ROBOT = "wrong_robot"
    SPEC_MISMATCH = "spec_mismatch"
    TOO_LARGE = "too_large"

    def __str__(self) -> str:  # "hold", not "RejectCode.HOLD", in logs and f-strings on every Python
        return self.value


# Refusals that end by themselves: the robot keeps its data, backs off and retries.
TRANSIENT = frozenset({RejectCode.HOLD, RejectCode.STREAM_GAP, RejectCode.RATE_LIMITED, RejectCode.TOO_MANY_CONNECTIONS,
                       RejectCode.TOO_MANY_INFLIGHT, RejectCode.HANDSHAKE_TIMEOUT, RejectCode.AGENT_STOPPING,
                       # the learner is busy or this robot is over a quota for now: wait, keep the data
                       RejectCode.TOO_MANY_HANDSHAKES, RejectCode.QUOTA_EXCEEDED})
