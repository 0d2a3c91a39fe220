"""The pure-DDS backend: ROS 2 topics over Cyclone DDS without a ROS 2 install.

ROS 2 over DDS is conventions: topic ``/x`` is DDS topic ``rt/x``, type
``pkg/msg/T`` is ``pkg::msg::dds_::T_``, samples are XCDR1 (classic CDR).
Each DDS type here is generated from the rosbags definition of the ROS type,
so discovery (type name and XTypes type information) looks like a ROS node's,
while samples themselves travel as CDR bytes produced and parsed by rosbags.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from cyclonedds.core import Listener, Policy, Qos
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.idl import IdlStruct, make_idl_struct
from cyclonedds.idl import types as T
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from shared.errors import ConfigError

from . import types
from .backend import Backend, MessageCallback, Publisher
from .config import QosConfig

log = logging.getLogger("fleetrl.ros2")

LOOPBACK_XML = (
    '<CycloneDDS><Domain Id="any"><General>'
    '<Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces>'
    "<AllowMulticast>false</AllowMulticast></General>"
    "<Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>64</MaxAutoParticipantIndex>"
    '<Peers><Peer address="127.0.0.1"/></Peers></Discovery></Domain></CycloneDDS>'
)

_BASE: dict[str, Any] = {
    "bool": bool, "byte": T.byte, "char": T.uint8, "int8": T.int8, "uint8": T.uint8,
    "int16": T.int16, "uint16": T.uint16, "int32": T.int32, "uint32": T.uint32,
    "int64": T.int64, "uint64": T.uint64, "float32": T.float32, "float64": T.float64,
}
_structs: dict[str, type[IdlStruct]] = {}
_lock = threading.Lock()


class _Cdr:
    """A received sample, left as bytes; the reader sets ``sample_info`` on it."""

    __slots__ = ("data", "sample_info")

    def __init__(self, data: bytes):
        self.data = data


def _field_type(node: tuple[Any, Any]) -> Any:
    kind, detail = int(node[0]), node[1]
    if kind == 1:  # BASE: (name, string bound)
        name, bound = detail
        if name == "string":
            return T.bounded_str[bound] if bound else str  # type: ignore[misc]  # cyclonedds types are subscripted at run time
        if name not in _BASE:
            raise TypeError(f"ROS base type {name!r} has no DDS mapping here")
        return _BASE[name]
    if kind == 2:  # NAME: nested message
        return _struct(detail)
    inner, n = detail
    if kind == 3:  # ARRAY
        return T.array[_field_type(inner), n]  # type: ignore[misc]
    return T.sequence[_field_type(inner), n] if n else T.sequence[_field_type(inner)]  # type: ignore[misc]  # SEQUENCE


def _struct(ros_type: str) -> type[IdlStruct]:
    """The DDS struct equivalent to a ROS 2 message type (cached, nested types included)."""
    if ros_type not in _structs:
        _, fields = types.typestore().fielddefs[ros_type]
        ann = {name: _field_type(node) for name, node in fields}
        if not ann:  # empty ROS messages carry one uint8 on the wire (rosidl convention)
            ann = {"structure_needs_at_least_one_member": T.uint8}
        cls_name = ros_type.replace("/", "_")
        _structs[ros_type] = make_idl_struct(cls_name, types.dds_type_name(ros_type), ann)
    return _structs[ros_type]


def _carrier(ros_type: str) -> type[IdlStruct]:
    """A type with the ROS type's name and layout whose samples stay CDR bytes both ways."""
    key = "carrier:" + ros_type
    with _lock:
        if key not in _structs:
            base = _struct(ros_type)
            cls = make_idl_struct(
                ros_type.replace("/", "_") + "_cdr", types.dds_type_name(ros_type),
                dict(base.__annotations__), dataclassify=False,
            )
            cls.serialize = lambda self, *a, **k: self.data  # type: ignore[method-assign]
            cls.deserialize = classmethod(lambda c, data, *a, **k: _Cdr(bytes(data)))  # type: ignore[method-assign,assignment]
            cls.deserialize_key = classmethod(lambda c, *a, **k: None)  # type: ignore[method-assign,assignment]  # ROS types are keyless
            _structs[key] = cls
        return _structs[key]


def dds_qos(qos: QosConfig, default_reliable: bool) -> Qos:
    reliable = qos.reliability == "reliable" or (qos.reliability is None and default_reliable)
    return Qos(
        Policy.Reliability.Reliable(max_blocking_time=0) if reliable else Policy.Reliability.BestEffort,
        Policy.Durability.TransientLocal if qos.durability == "transient_local" else Policy.Durability.Volatile,
        Policy.History.KeepLast(qos.depth),
        Policy.DataRepresentation(use_cdrv0_representation=True),  # ROS 2 speaks XCDR1
    )


class _DdsPublisher(Publisher):
    def __init__(self, writer: DataWriter, cls: type[IdlStruct]):
        self._writer, self._cls = writer, cls

    def publish(self, cdr: bytes) -> None:
        sample = self._cls.__new__(self._cls)
        sample.data = cdr  # type: ignore[attr-defined]  # the raw-CDR struct made in _struct
        self._writer.write(sample)


class _Domains:
    """Loopback-only domains are process-wide in Cyclone: one per id, made on first use and
    kept for the life of the process (so a later participant cannot silently get another config)."""

    held: dict[int, Any] = {}

    @classmethod
    def acquire(cls, domain_id: int) -> None:
        """Make ``domain_id`` loopback-only in this process; ConfigError if it is already open
        with other settings (joining it would put this participant on the network)."""
        with _lock:
            if domain_id in cls.held:
                return
            try:
                cls.held[domain_id] = Domain(domain_id, LOOPBACK_XML)
            except Exception as e:  # the domain already exists in this process with its own config
                raise ConfigError(
                    f"localhost_only: DDS domain {domain_id} is already open in this process with network settings "
                    f"(another ROS 2 participant, e.g. the robot driver, opened it first), so it cannot be kept on "
                    f"loopback ({e}); use another domain_id, or set localhost_only = false to accept the network"
                ) from None
            log.info("event=ros2_localhost_only domain=%d interface=127.0.0.1 multicast=false", domain_id)

    @classmethod
    def release(cls, domain_id: int) -> None:
        """Kept: dropping the domain would let the next participant recreate it from the environment."""


class DdsBackend(Backend):
    name = "dds"

    def __init__(self, domain_id: int, localhost_only: bool = True):
        self.domain_id, self.localhost_only = domain_id, localhost_only
        if localhost_only:
            _Domains.acquire(domain_id)
        self._dp = DomainParticipant(domain_id)
        self._topics: dict[str, Topic] = {}
        self._entities: list[Any] = []
        self._closed = False

    def _topic(self, topic: str, ros_type: str) -> Topic:
        name = types.dds_topic_name(topic)
        if name not in self._topics:
            self._topics[name] = Topic(self._dp, name, _carrier(ros_type))
        return self._topics[name]

    def subscribe(self, topic: str, ros_type: str, qos: QosConfig, callback: MessageCallback) -> None:
        def on_data(reader: DataReader | None) -> None:
            if reader is None:  # fired while the reader is still being created: drained below
                return
            now = time.monotonic_ns()
            samples = reader.take(N=64)
            if self._closed:
                return
            for s in samples:
                if isinstance(s, _Cdr):  # skip dispose / no-writers notifications
                    try:
                        callback(s.data, now)
                    except Exception:  # a bad callback must not take down the DDS thread
                        log.exception("event=ros2_callback_failed topic=%s", topic)

        reader = DataReader(self._dp, self._topic(topic, ros_type), qos=dds_qos(qos, False), listener=Listener(on_data_available=on_data))
        self._entities.append(reader)
        on_data(reader)  # samples that arrived during creation (transient-local) raise no new notification

    def publisher(self, topic: str, ros_type: str, qos: QosConfig) -> Publisher:
        writer = DataWriter(self._dp, self._topic(topic, ros_type), qos=dds_qos(qos, True))
        self._entities.append(writer)
        return _DdsPublisher(writer, _carrier(ros_type))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._entities.clear()
        self._topics.clear()
        self._dp = None  # type: ignore[assignment]  # cyclonedds deletes entities with their last reference
        if self.localhost_only:
            _Domains.release(self.domain_id)
