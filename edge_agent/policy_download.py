"""Reassembles a policy sent in parts; survives a cut link (the next hello
asks the cloud to resume from the bytes already here).

The rule lives sans-I/O in :class:`shared.protocol.stream.PolicyReceiver`; this
name stays for the callers that know it (the bench, older tests)."""

from __future__ import annotations

from shared.protocol.stream import PolicyReceiver

PolicyDownload = PolicyReceiver

__all__ = ["PolicyDownload"]
