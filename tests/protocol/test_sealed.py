"""Sealed datagrams (socksx/protocol/sealed.py): layout, authentication, anti-replay."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from socksx.protocol.errors import LocalProtocolError
from socksx.protocol.sealed import (
    OVERHEAD,
    ReplayWindow,
    SealedHeader,
    UnsealError,
    nonce_for,
    open_sealed,
    peek_header,
    seal,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

#: TYPE 01, ID 0x01020304, SEQ 1, plaintext "hello", key 00..1f (docs/PROTOCOL.md vector).
VECTOR = bytes.fromhex("01 01020304 0000000000000001 56c5a7eebc21e526f8ce9fb5e7c765fd ce0608b23c")


def test_vector():
    assert seal(KEY, 1, 0x01020304, 1, b"hello") == VECTOR
    assert open_sealed(KEY, VECTOR) == (SealedHeader(1, 0x01020304, 1), b"hello")


def test_nonce_layout():
    assert nonce_for(2, 0xAABBCCDD, 0x0102) == (
        b"\x02\xaa\xbb\xcc\xdd" + bytes(11) + bytes.fromhex("0000000000000102")
    )


def test_keepalive_is_29_octets():
    assert len(seal(KEY, 1, 7, 1, b"")) == OVERHEAD == 29


@pytest.mark.parametrize("bad", [(256, 1, 1), (1, 1 << 32, 1), (1, 1, 0), (1, 1, 1 << 64)])
def test_out_of_range_header_fields_are_refused(bad):
    with pytest.raises(LocalProtocolError):
        seal(KEY, *bad, b"")


def test_wrong_key_length_is_refused():
    with pytest.raises(LocalProtocolError):
        seal(b"short", 1, 1, 1, b"")


@pytest.mark.parametrize("dgram", [b"", VECTOR[:28], VECTOR[:13] + bytes(15)])
def test_short_datagrams_are_refused(dgram):
    with pytest.raises(UnsealError):
        open_sealed(KEY, dgram)


def test_seq_zero_is_refused_before_decrypting():
    forged = VECTOR[:5] + bytes(8) + VECTOR[13:]
    with pytest.raises(UnsealError, match="SEQ 0"):
        peek_header(forged)


def test_wrong_key_fails():
    with pytest.raises(UnsealError):
        open_sealed(OTHER_KEY, VECTOR)


@given(
    type_=st.integers(0, 255),
    id_=st.integers(0, 0xFFFFFFFF),
    seq=st.integers(1, (1 << 64) - 1),
    plaintext=st.binary(max_size=300),
    data=st.data(),
)
def test_round_trip_and_every_flipped_bit_is_rejected(type_, id_, seq, plaintext, data):
    dgram = seal(KEY, type_, id_, seq, plaintext)
    assert open_sealed(KEY, dgram) == (SealedHeader(type_, id_, seq), plaintext)
    bit = data.draw(st.integers(0, len(dgram) * 8 - 1))
    flipped = bytearray(dgram)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(UnsealError):
        open_sealed(KEY, bytes(flipped))


def test_window_basics():
    w = ReplayWindow()
    assert not w.check(0)
    assert w.accept(1)
    assert not w.accept(1)
    assert w.accept(70)
    assert not w.check(6)  # 70 - 64: left of the window
    assert w.check(7)  # the oldest SEQ still inside
    assert w.accept(7)
    assert not w.accept(7)


class WindowModel(RuleBasedStateMachine):
    """ReplayWindow against a naive model: the set of seen SEQs and the highest one."""

    def __init__(self) -> None:
        super().__init__()
        self.window = ReplayWindow()
        self.seen: set[int] = set()

    def _fresh(self, seq: int) -> bool:
        top = max(self.seen, default=0)
        return seq > 0 and seq not in self.seen and seq > top - 64

    @rule(seq=st.integers(0, 300))
    def accept(self, seq: int) -> None:
        expected = self._fresh(seq)
        assert self.window.check(seq) is expected
        assert self.window.accept(seq) is expected
        if expected:
            self.seen.add(seq)

    @rule(jump=st.integers(1, 200))
    def jump_ahead(self, jump: int) -> None:
        seq = max(self.seen, default=0) + jump
        assert self.window.accept(seq)
        self.seen.add(seq)

    @invariant()
    def top_matches(self) -> None:
        assert self.window.top == max(self.seen, default=0)


TestWindowModel = WindowModel.TestCase
