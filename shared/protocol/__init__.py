"""Link protocol v1, sans-I/O: framing, messages, and the two connection state machines."""

from .connection import CloudConnection, EdgeConnection, State
from .frames import FRAME_VERSION, Frame, MsgType, decode_frame, encode_frame
from .limits import Limits
from .messages import PROTOCOL_VERSIONS, Ack, Chunk, Hello, Lost, Message, Policy, Reject, Status, Welcome

__all__ = [
    "FRAME_VERSION", "PROTOCOL_VERSIONS", "Ack", "Chunk", "CloudConnection", "EdgeConnection", "Frame",
    "Hello", "Limits", "Lost", "Message", "MsgType", "Policy", "Reject", "State", "Status", "Welcome",
    "decode_frame", "encode_frame",
]
