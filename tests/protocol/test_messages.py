from __future__ import annotations

import pytest

from socksx.protocol.address import Address, read_address_from
from socksx.protocol.buffer import Reader
from socksx.protocol.constants import Command, Method, ReplyCode
from socksx.protocol.errors import (
    LocalProtocolError,
    MalformedMessage,
    UnsupportedCommand,
    UnsupportedVersion,
)
from socksx.protocol.messages import (
    REQUEST_READERS,
    Greeting,
    MethodSelection,
    Reply,
    Request,
    UserPassReply,
    UserPassRequest,
    maybe_read_greeting,
    maybe_read_method_selection,
    maybe_read_reply,
    maybe_read_request,
    maybe_read_userpass_reply,
    maybe_read_userpass_request,
    register_request_reader,
)
from tests.vectors import ErrorVector, Vector, check_error_vector, check_vector
from tests.vectors import rfc1928 as v1928
from tests.vectors import rfc1929 as v1929

PARSED = [
    *((maybe_read_greeting, v) for v in v1928.GREETINGS),
    *((maybe_read_method_selection, v) for v in v1928.METHOD_SELECTIONS),
    *((maybe_read_request, v) for v in v1928.REQUESTS),
    *((maybe_read_reply, v) for v in v1928.REPLIES),
    *((maybe_read_userpass_request, v) for v in v1929.USERPASS_REQUESTS),
    *((maybe_read_userpass_reply, v) for v in v1929.USERPASS_REPLIES),
]

REFUSED = [
    *((maybe_read_greeting, v) for v in v1928.GREETING_ERRORS),
    *((maybe_read_method_selection, v) for v in v1928.METHOD_SELECTION_ERRORS),
    *((maybe_read_request, v) for v in v1928.REQUEST_ERRORS),
    *((maybe_read_reply, v) for v in v1928.REPLY_ERRORS),
    *((maybe_read_userpass_request, v) for v in v1929.USERPASS_REQUEST_ERRORS),
    *((maybe_read_userpass_reply, v) for v in v1929.USERPASS_REPLY_ERRORS),
]


def _id(case: tuple[object, Vector | ErrorVector]) -> str:
    parse, vector = case
    return f"{parse.__name__.removeprefix('maybe_read_')}: {vector.name}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", PARSED, ids=_id)
def test_vector(case) -> None:
    parse, vector = case
    check_vector(parse, vector)


@pytest.mark.parametrize("case", REFUSED, ids=_id)
def test_error_vector(case) -> None:
    parse, vector = case
    check_error_vector(parse, vector)


def test_every_rfc1928_reply_code_has_a_vector() -> None:
    codes = {v.msg.rep for v in v1928.REPLIES}
    assert codes == {code for code in ReplyCode if code <= 0x08}


# -- greeting -------------------------------------------------------------------------------


def test_greeting_version_is_checked_on_the_first_octet() -> None:
    with pytest.raises(UnsupportedVersion):
        maybe_read_greeting(b"\x04")
    assert maybe_read_greeting(b"\x05") is None


def test_greeting_nmethods_zero_is_refused_before_more_arrives() -> None:
    with pytest.raises(MalformedMessage):
        maybe_read_greeting(b"\x05\x00")


def test_greeting_with_255_methods_round_trips() -> None:
    greeting = Greeting(tuple(range(255)))
    wire = greeting.to_bytes()
    assert wire[:2] == b"\x05\xff"
    assert maybe_read_greeting(wire) == (greeting, 257)


@pytest.mark.parametrize("methods", [(), tuple([0] * 256), (256,), (-1,)])
def test_greeting_constructor_rejects_illegal_offers(methods) -> None:
    with pytest.raises(LocalProtocolError):
        Greeting(methods)


# -- RFC 1929 -------------------------------------------------------------------------------


def test_userpass_request_fields_of_255_octets_round_trip() -> None:
    request = UserPassRequest(b"u" * 255, b"p" * 255)
    wire = request.to_bytes()
    assert len(wire) == 1 + 1 + 255 + 1 + 255
    assert maybe_read_userpass_request(wire) == (request, len(wire))


@pytest.mark.parametrize(
    ("username", "password"),
    [(b"", b"p"), (b"u", b""), (b"u" * 256, b"p"), (b"u", b"p" * 256)],
)
def test_userpass_request_constructor_rejects_illegal_lengths(username, password) -> None:
    with pytest.raises(LocalProtocolError):
        UserPassRequest(username, password)


def test_userpass_password_is_not_in_repr() -> None:
    assert "s3cret" not in repr(UserPassRequest(b"alice", b"s3cret"))


def test_userpass_empty_username_is_refused_before_the_rest_arrives() -> None:
    with pytest.raises(MalformedMessage):
        maybe_read_userpass_request(b"\x01\x00")


@pytest.mark.parametrize(("status", "ok"), [(0, True), (1, False), (2, False), (0xFF, False)])
def test_userpass_reply_ok_only_for_status_zero(status, ok) -> None:
    assert UserPassReply(status).ok is ok
    assert maybe_read_userpass_reply(bytes([1, status])) == (UserPassReply(status), 2)


# -- requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(Command), ids=lambda c: c.name)
def test_request_encodes_every_command_byte(command) -> None:
    wire = Request(command, Address("192.0.2.1", 80)).to_bytes()
    assert wire == bytes([5, command, 0]) + bytes.fromhex("01 c0000201 0050")


def test_unknown_command_is_refused_as_soon_as_cmd_arrives() -> None:
    """REP 07 can be sent without waiting for the rest of a request we cannot parse."""
    with pytest.raises(UnsupportedCommand):
        maybe_read_request(b"\x05\x0a")


def test_request_version_is_checked_on_the_first_octet() -> None:
    with pytest.raises(UnsupportedVersion) as info:
        maybe_read_request(b"\x04")
    assert info.value.reply is None


@pytest.mark.parametrize("code", [0x05, 0x06, 0x07, 0x08, 0x09])
def test_extension_command_without_a_reader_is_refused_with_rep_07(code, monkeypatch) -> None:
    """PROTOCOL.md introduction: an unimplemented extension command is answered with REP 07."""
    monkeypatch.delitem(REQUEST_READERS, code, raising=False)
    with pytest.raises(UnsupportedCommand) as info:
        maybe_read_request(bytes([5, code, 0]) + bytes.fromhex("01 c0000201 0050"))
    assert info.value.reply is ReplyCode.COMMAND_NOT_SUPPORTED


def test_registered_reader_parses_an_extension_body(monkeypatch) -> None:
    """An extension command is one table entry: the reader sees the bytes after RSV."""
    seen: list[Command] = []

    def read_tagged(r: Reader, command: Command) -> object | None:
        seen.append(command)
        start = r.pos
        address = read_address_from(r)
        tag = r.u8()
        if address is None or tag is None:
            r.pos = start
            return None
        return (command, address, tag)

    monkeypatch.setitem(REQUEST_READERS, Command.SETUP_UDP_TUNNEL, read_tagged)
    register_request_reader(Command.SETUP_UDP_TUNNEL, read_tagged)
    wire = bytes.fromhex("05 07 00 01 c0000201 0050 2a")
    for i in range(len(wire)):
        assert maybe_read_request(wire[:i]) is None
    expected = ((Command.SETUP_UDP_TUNNEL, Address("192.0.2.1", 80), 0x2A), len(wire))
    assert maybe_read_request(wire + b"rest") == expected
    assert seen[-1] is Command.SETUP_UDP_TUNNEL


def test_domain_holding_an_ip_literal_is_treated_as_that_ip() -> None:
    """PROTOCOL.md §1.3: there is one spelling per address, so ATYP 03 "192.0.2.1" is IPv4."""
    wire = bytes.fromhex("05 01 00 03 09") + b"192.0.2.1" + b"\x00\x50"
    request, consumed = maybe_read_request(wire)
    assert consumed == len(wire)
    assert request == Request(Command.CONNECT, Address("192.0.2.1", 80))
    assert request.to_bytes() == bytes.fromhex("05 01 00 01 c0000201 0050")


# -- replies --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ReplyCode), ids=lambda c: f"{c:02x}")
def test_every_reply_code_round_trips(code) -> None:
    reply = Reply(code, Address("198.51.100.1", 4321))
    assert maybe_read_reply(reply.to_bytes()) == (reply, 10)
    assert reply.ok is (code is ReplyCode.SUCCEEDED)


@pytest.mark.parametrize("rep", sorted(set(range(256)) - set(ReplyCode)))
def test_unassigned_reply_code_is_malformed(rep) -> None:
    with pytest.raises(MalformedMessage):
        maybe_read_reply(bytes([5, rep, 0]) + bytes.fromhex("01 00000000 0000"))


def test_reply_defaults_to_the_zero_address() -> None:
    assert Reply(ReplyCode.GENERAL_FAILURE).to_bytes() == bytes.fromhex("05 01 00 01 00000000 0000")


@pytest.mark.parametrize("method", list(Method), ids=lambda m: m.name)
def test_every_method_selection_round_trips(method) -> None:
    assert maybe_read_method_selection(MethodSelection(method).to_bytes()) == (
        MethodSelection(method),
        2,
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: UserPassReply(256).to_bytes(),
        lambda: Reply(256, Address("0.0.0.0", 0)).to_bytes(),  # type: ignore[arg-type]
        lambda: Request(256, Address("0.0.0.0", 0)).to_bytes(),  # type: ignore[arg-type]
        lambda: MethodSelection(256).to_bytes(),  # type: ignore[arg-type]
    ],
    ids=["UserPassReply(256)", "Reply(256)", "Request(256)", "MethodSelection(256)"],
)
def test_out_of_range_fields_raise_local_protocol_error(build) -> None:
    with pytest.raises(LocalProtocolError):
        build()


# -- the reader every parser is built on ------------------------------------------------------


def test_reader_consumes_nothing_when_short() -> None:
    r = Reader(b"\x01\x02\x03", 1)
    assert r.remaining() == 2
    assert r.take(3) is None
    assert r.u16() == 0x0203
    assert (r.u8(), r.u16(), r.take(1), r.remaining()) == (None, None, None, 0)


def test_reader_until_finds_the_terminator_within_the_limit() -> None:
    r = Reader(b"ab\0cd")
    assert r.until(0, 2) == b"ab"
    assert r.pos == 3
    assert Reader(b"abc").until(0, 3) is None
    with pytest.raises(ValueError, match="no terminator within 3 bytes"):
        Reader(b"abcd").until(0, 3)
