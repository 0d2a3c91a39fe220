"""Link protocol v1, sans-I/O: framing, messages, the two connection state machines,
the stream rules of an open link (``stream``), the reason codes (``codes``) and the operator
commands a learner may send (``commands``), and cloud-served inference (``inference``)."""

from .codes import RejectCode
from .connection import CloudConnection, EdgeConnection, State
from .frames import FRAME_VERSION, Frame, MsgType, decode_frame, encode_frame
from .limits import Limits
from .messages import (
    PROTOCOL_VERSIONS, Ack, ActChunk, ActRequest, Challenge, Chunk, Command, Hello, Lost, Message, Policy, Reject, Status, TunnelClose, TunnelData,
    TunnelOpen, Welcome,
)

__all__ = [
    "FRAME_VERSION", "PROTOCOL_VERSIONS", "Ack", "ActChunk", "ActRequest", "Challenge", "Chunk", "CloudConnection", "Command", "EdgeConnection", "Frame",
    "Hello", "Limits", "Lost", "Message", "MsgType", "Policy", "Reject", "RejectCode", "State", "Status", "TunnelClose", "TunnelData", "TunnelOpen", "Welcome",
    "decode_frame", "encode_frame",
]
