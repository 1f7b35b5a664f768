"""CONNECT: resolve, check the rules on every address, connect with a timeout, relay.

Connection failures map to reply codes through one table, ``errno_to_reply`` (documented in
docs/PROTOCOL.md "Reply codes for CONNECT"):

    ECONNREFUSED                      05 connection refused
    ENETUNREACH, EADDRNOTAVAIL        03 network unreachable
    EHOSTUNREACH, EHOSTDOWN           04 host unreachable
    timeout (ETIMEDOUT, no answer)    04 host unreachable
    name not found / resolver failed  04 host unreachable
    EACCES, EPERM (local firewall)    02 not allowed by ruleset
    EAFNOSUPPORT                      08 address type not supported
    anything else                     01 general failure
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from gevent import socket as gsocket

from socksx.errors import UpstreamError
from socksx.protocol.address import Address
from socksx.protocol.constants import ReplyCode
from socksx.server.rawio import RawStream, connect_nonblocking

if TYPE_CHECKING:
    from socksx.server.session import Session

__all__ = ["ERRNO_REPLIES", "errno_to_reply", "handle", "open_upstream"]

ERRNO_REPLIES: dict[int, ReplyCode] = {
    errno.ECONNREFUSED: ReplyCode.CONNECTION_REFUSED,
    errno.ENETUNREACH: ReplyCode.NETWORK_UNREACHABLE,
    errno.EADDRNOTAVAIL: ReplyCode.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: ReplyCode.HOST_UNREACHABLE,
    errno.EHOSTDOWN: ReplyCode.HOST_UNREACHABLE,
    errno.ETIMEDOUT: ReplyCode.HOST_UNREACHABLE,
    errno.EACCES: ReplyCode.NOT_ALLOWED,
    errno.EPERM: ReplyCode.NOT_ALLOWED,
    errno.EAFNOSUPPORT: ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
}


def errno_to_reply(exc: BaseException) -> ReplyCode:
    """The reply code for a failed resolve or connect."""
    if isinstance(exc, gsocket.gaierror):
        return ReplyCode.HOST_UNREACHABLE
    if isinstance(exc, TimeoutError):
        return ReplyCode.HOST_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno is not None:
        return ERRNO_REPLIES.get(exc.errno, ReplyCode.GENERAL_FAILURE)
    return ReplyCode.GENERAL_FAILURE


def _describe(exc: BaseException) -> str:
    if isinstance(exc, gsocket.gaierror):
        return f"name resolution failed: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def open_upstream(
    targets: list[tuple[int, tuple]],
    timeout: float,
    source: str | None = None,
) -> RawStream:
    """Connect to the first target that answers, trying each in turn.

    Raises:
        UpstreamError: every target failed; its reply code comes from the last failure.
    """
    last: BaseException | None = None
    for family, sockaddr in targets:
        try:
            return connect_nonblocking(family, sockaddr, timeout, source)
        except OSError as exc:
            last = exc
    if last is None:
        raise UpstreamError(ReplyCode.HOST_UNREACHABLE, "name resolved to no usable address")
    raise UpstreamError(errno_to_reply(last), _describe(last)) from last


def handle(session: Session, request: object) -> None:
    """Serve one CONNECT (SOCKS5 or SOCKS4/4a)."""
    address: Address = request.address  # type: ignore[attr-defined]
    targets = session.resolve_and_check(address, "connect")
    upstream = open_upstream(
        targets, session.server.config.timeouts.connect, session.outward_for(targets)
    )
    try:
        bound = upstream.getsockname()
        session.send_reply(ReplyCode.SUCCEEDED, Address.from_ip(bound[0], bound[1]))
    except BaseException:
        upstream.close()
        raise
    session.relay_with(upstream, session.take_trailing())  # closes upstream at the end
