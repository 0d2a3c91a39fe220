"""Link protocol v1, sans-I/O: framing, messages, and the two connection state machines."""

from .connection import CloudConnection, EdgeConnection, State
from .frames import FRAME_VERSION, Frame, MsgType, decode_frame, encode_frame
from .limits import Limits
from .messages import (
    PROTOCOL_VERSIONS, Ack, Challenge, Chunk, Hello, Lost, Message, Policy, Reject, Status, TunnelClose, TunnelData,
    TunnelOpen, Welcome,
)

__all__ = [
    "FRAME_VERSION", "PROTOCOL_VERSIONS", "Ack", "Challenge", "Chunk", "CloudConnection", "EdgeConnection", "Frame",
    "Hello", "Limits", "Lost", "Message", "MsgType", "Policy", "Reject", "State", "Status", "TunnelClose", "TunnelData", "TunnelOpen", "Welcome",
    "decode_frame", "encode_frame",
]
