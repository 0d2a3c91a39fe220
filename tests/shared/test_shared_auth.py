"""Robot credentials (shared.auth) and how the two link ends use them in the handshake."""

from __future__ import annotations

import base64
import re

import pytest

from shared import auth
from shared.errors import ProtocolError
from shared.protocol import CloudConnection, EdgeConnection, Hello, State, Welcome

SPEC = {"observation": {}, "action_dim": 1}
ROBOT = "robot-1"


def _cred_of(key: bytes) -> str:
    return auth.PREFIX + base64.urlsafe_b64encode(key).decode().rstrip("=")


def _exchange(key: bytes, robot_id: str = ROBOT) -> tuple[str, str, str]:
    sn, cn = auth.nonce(), auth.nonce()
    return sn, cn, auth.prove(key, robot_id, sn, cn)


def _to_hello(credential: str | None, robot_id: str = ROBOT) -> tuple[EdgeConnection, CloudConnection, Hello]:
    edge = EdgeConnection(robot_id, SPEC, [], credential=credential)
    cloud = CloudConnection()
    edge.receive(cloud.challenge())
    hello = cloud.receive(edge.hello(0))
    assert isinstance(hello, Hello)
    return edge, cloud, hello


# ------------------------------------------------------------------ credentials


def test_credential_format_round_trips():
    cred = auth.new_credential()
    assert cred.startswith("fr1_")
    assert re.fullmatch(r"fr1_[A-Za-z0-9_-]+", cred)  # URL- and shell-safe, no padding
    key = auth.client_key(cred)
    assert isinstance(key, bytes) and len(key) == auth.KEY_BYTES
    assert _cred_of(key) == cred
    assert auth.client_key(_cred_of(key)) == key


def test_credentials_are_random():
    creds = {auth.new_credential() for _ in range(50)}
    assert len(creds) == 50
    assert len({auth.client_key(c) for c in creds}) == 50


@pytest.mark.parametrize(
    "bad",
    ["", "fr1", "fr2_" + "A" * 43, "FR1_" + "A" * 43, "A" * 47, "xfr1_" + "A" * 43, " fr1_" + "A" * 43],
)
def test_client_key_rejects_a_bad_prefix(bad):
    with pytest.raises(ValueError, match="fr1_"):
        auth.client_key(bad)


@pytest.mark.parametrize("n", [0, 1, 16, 31, 33, 64])
def test_client_key_rejects_a_wrong_length(n):
    with pytest.raises(ValueError, match="length"):
        auth.client_key(_cred_of(b"\x07" * n))


def test_stored_key_is_the_sha256_and_not_the_key():
    key = auth.client_key(auth.new_credential())
    stored = auth.stored_key(key)
    assert len(stored) == 32 and stored != key
    assert stored == auth.stored_key(key)


def test_nonces_are_fresh_and_fit_a_challenge():
    nonces = {auth.nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in nonces)


# ------------------------------------------------------------------ proofs


def test_verify_accepts_the_right_key():
    key = auth.client_key(auth.new_credential())
    sn, cn, proof = _exchange(key)
    assert auth.verify(auth.stored_key(key), ROBOT, sn, cn, proof) is True


def test_verify_refuses_another_key():
    key, other = (auth.client_key(auth.new_credential()) for _ in range(2))
    sn, cn, proof = _exchange(other)
    assert auth.verify(auth.stored_key(key), ROBOT, sn, cn, proof) is False


def test_verify_refuses_another_robot_id():
    key = auth.client_key(auth.new_credential())
    sn, cn, proof = _exchange(key, robot_id="robot-2")
    assert auth.verify(auth.stored_key(key), ROBOT, sn, cn, proof) is False
    assert auth.verify(auth.stored_key(key), "robot-2", sn, cn, proof) is True


def test_verify_refuses_a_replayed_proof_under_a_new_server_nonce():
    key = auth.client_key(auth.new_credential())
    sn, cn, proof = _exchange(key)  # captured from an earlier link
    assert auth.verify(auth.stored_key(key), ROBOT, auth.nonce(), cn, proof) is False


def test_verify_refuses_another_client_nonce():
    key = auth.client_key(auth.new_credential())
    sn, cn, proof = _exchange(key)
    assert auth.verify(auth.stored_key(key), ROBOT, sn, auth.nonce(), proof) is False


@pytest.mark.parametrize("mangle", [
    lambda p: "zz" + p[2:],  # not hex
    lambda p: p[:-1],  # odd length
    lambda p: p.replace(p[0], "g", 1),
    lambda p: "not hex at all",
], ids=["zz", "odd", "g", "words"])
def test_verify_refuses_malformed_hex(mangle):
    key = auth.client_key(auth.new_credential())
    sn, cn, proof = _exchange(key)
    assert auth.verify(auth.stored_key(key), ROBOT, sn, cn, mangle(proof)) is False


@pytest.mark.parametrize("mangle", [lambda p: p[:-2], lambda p: p + "00", lambda p: "", lambda p: p + p],
                         ids=["short", "long", "empty", "double"])
def test_verify_refuses_a_proof_of_the_wrong_length(mangle):
    key = auth.client_key(auth.new_credential())
    sn, cn, proof = _exchange(key)
    assert auth.verify(auth.stored_key(key), ROBOT, sn, cn, mangle(proof)) is False


def test_verify_refuses_a_proof_with_one_bit_flipped():
    key = auth.client_key(auth.new_credential())
    sn, cn, proof = _exchange(key)
    raw = bytearray.fromhex(proof)
    for i in (0, 15, 31):
        bad = bytearray(raw)
        bad[i] ^= 1
        assert auth.verify(auth.stored_key(key), ROBOT, sn, cn, bad.hex()) is False


def test_a_leaked_stored_key_alone_cannot_log_in():
    """The cloud keeps only stored_key; whoever steals it still cannot produce a valid proof."""
    key = auth.client_key(auth.new_credential())
    stored = auth.stored_key(key)
    sn, cn = auth.nonce(), auth.nonce()
    # the thief uses the stored key as if it were the key
    assert auth.verify(stored, ROBOT, sn, cn, auth.prove(stored, ROBOT, sn, cn)) is False
    # ... also through the real link ends, with the stored key wrapped as a credential
    _, cloud, hello = _to_hello(_cred_of(stored))
    assert hello.proof
    assert cloud.verify(stored) is False
    # the genuine credential does pass the same check
    _, cloud, _ = _to_hello(_cred_of(key))
    assert cloud.verify(stored) is True


# ------------------------------------------------------------ in the handshake


def test_enrolled_edge_proves_its_key_to_the_cloud():
    cred = auth.new_credential()
    stored = auth.stored_key(auth.client_key(cred))
    _, cloud, hello = _to_hello(cred)
    assert hello.client_nonce and hello.proof
    assert cloud.verify(stored) is True
    assert cloud.verify(auth.stored_key(auth.client_key(auth.new_credential()))) is False


def test_a_hello_replayed_on_a_new_link_does_not_verify():
    cred = auth.new_credential()
    stored = auth.stored_key(auth.client_key(cred))
    edge = EdgeConnection(ROBOT, SPEC, [], credential=cred)
    edge.receive(CloudConnection().challenge())
    captured = edge.hello(0)
    fresh = CloudConnection()
    fresh.challenge()  # a new link, a new server nonce
    fresh.receive(captured)
    assert fresh.verify(stored) is False


def test_edge_checks_the_server_signature():
    cred = auth.new_credential()
    stored = auth.stored_key(auth.client_key(cred))
    wrong = auth.stored_key(auth.client_key(auth.new_credential()))

    edge, cloud, _ = _to_hello(cred)
    with pytest.raises(ProtocolError) as ei:
        edge.receive(cloud.welcome("run", 0, 0, stored_key=wrong))
    assert ei.value.code == "learner_unverified"
    assert edge.state is not State.OPEN

    edge, cloud, _ = _to_hello(cred)
    with pytest.raises(ProtocolError) as ei:  # an impostor that cannot sign at all
        edge.receive(cloud.welcome("run", 0, 0))
    assert ei.value.code == "learner_unverified"
    assert edge.state is not State.OPEN

    edge, cloud, hello = _to_hello(cred)
    assert cloud.verify(stored)
    welcome = edge.receive(cloud.welcome("run", 0, 0, stored_key=stored))
    assert isinstance(welcome, Welcome)
    assert welcome.server_signature == auth.server_signature(stored, ROBOT, cloud.server_nonce, hello.client_nonce)
    assert edge.state is State.OPEN and cloud.state is State.OPEN


def test_server_signature_is_bound_to_the_exchange():
    stored = auth.stored_key(auth.client_key(auth.new_credential()))
    sn, cn = auth.nonce(), auth.nonce()
    sig = auth.server_signature(stored, ROBOT, sn, cn)
    assert sig != auth.server_signature(stored, ROBOT, auth.nonce(), cn)
    assert sig != auth.server_signature(stored, ROBOT, sn, auth.nonce())
    assert sig != auth.server_signature(stored, "robot-2", sn, cn)


def test_unenrolled_edge_sends_an_empty_proof_and_takes_an_unsigned_welcome():
    edge, cloud, hello = _to_hello(None)
    assert edge.key is None
    assert hello.proof == ""
    assert cloud.verify(auth.stored_key(auth.client_key(auth.new_credential()))) is False
    welcome = edge.receive(cloud.welcome("run", 0, 0))
    assert isinstance(welcome, Welcome) and welcome.server_signature == ""
    assert edge.state is State.OPEN and cloud.state is State.OPEN


def test_edge_refuses_a_malformed_credential_up_front():
    with pytest.raises(ValueError):
        EdgeConnection(ROBOT, SPEC, [], credential="not-a-credential")
