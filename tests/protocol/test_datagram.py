from __future__ import annotations

import pytest

from socksx.protocol.address import Address
from socksx.protocol.constants import MAX_UDP_PAYLOAD
from socksx.protocol.datagram import UdpHeader, decode_udp_datagram, encode_udp_datagram
from socksx.protocol.errors import LocalProtocolError, MalformedMessage
from tests.vectors import TRAILING
from tests.vectors import udp as vudp


@pytest.mark.parametrize("vector", vudp.DATAGRAMS, ids=lambda v: v.name)
def test_datagram_vector(vector) -> None:
    """Datagrams are whole: the header decodes, DATA is everything after it, to the last octet."""
    wire = vector.wire
    header, data = vector.msg.header, vector.msg.data
    offset = len(wire) - len(data)
    assert decode_udp_datagram(wire) == (header, offset)
    assert wire[offset:] == data
    assert encode_udp_datagram(header.address, data, header.frag) == wire
    assert decode_udp_datagram(bytearray(wire)) == (header, offset)
    assert decode_udp_datagram(memoryview(wire)) == (header, offset)
    # More octets are more DATA, never a second message.
    assert decode_udp_datagram(wire + TRAILING) == (header, offset)


@pytest.mark.parametrize("vector", vudp.DATAGRAMS, ids=lambda v: v.name)
def test_truncated_datagram_header_is_malformed_and_truncated_data_is_shorter_data(
    vector,
) -> None:
    """There is no "need more" for a datagram: a cut header is garbage."""
    wire = vector.wire
    offset = len(wire) - len(vector.msg.data)
    for i in range(offset):
        with pytest.raises(MalformedMessage):
            decode_udp_datagram(wire[:i])
    for i in range(offset, len(wire)):
        assert decode_udp_datagram(wire[:i]) == (vector.msg.header, offset)


@pytest.mark.parametrize("vector", vudp.DATAGRAM_ERRORS, ids=lambda v: v.name)
def test_datagram_error_vector(vector) -> None:
    with pytest.raises(vector.exc) as info:
        decode_udp_datagram(vector.wire)
    assert type(info.value) is vector.exc
    assert info.value.reply == vector.reply


def test_largest_payload_is_kept_whole() -> None:
    data = bytes(range(256)) * (MAX_UDP_PAYLOAD // 256) + b"\x01" * (MAX_UDP_PAYLOAD % 256)
    wire = encode_udp_datagram(Address("192.0.2.1", 53), data)
    header, offset = decode_udp_datagram(wire)
    assert header == UdpHeader(0, Address("192.0.2.1", 53))
    assert wire[offset:] == data


def test_encode_defaults_to_frag_zero_and_empty_data() -> None:
    assert encode_udp_datagram(Address("192.0.2.1", 53)) == bytes.fromhex(
        "0000 00 01 c0000201 0035"
    )


@pytest.mark.parametrize("frag", [256, -1])
def test_out_of_range_frag_raises_local_protocol_error(frag) -> None:
    with pytest.raises(LocalProtocolError):
        encode_udp_datagram(Address("192.0.2.1", 53), b"x", frag)
