"""JOIN_MCAST_GROUP / LEAVE_MCAST_GROUP: the control channel of a set of memberships.

The session's greenlet owns the channel and is the only one that writes to it: a reader
greenlet turns client requests into events, relays post theirs (a membership ended, a new group
key), and the channel answers each in order. At most one request is outstanding: the reader
parses the next request only after the previous one was answered.

A JOIN is judged in this order: [mcast] enabled (else REP 07), the address is a multicast group
(else 08), not already held on this channel (01), TLS when ``require_tls_for_join`` says so
(02), the access rules for command "join" (02), the first matching ``[[mcast.policy]]``
(permission none: B2), the channel's group limit and the policy's member limit (B3), the relay
starting (01 when it cannot). A refused JOIN closes the channel only when it holds no
membership; so does a membership the server ended (B4/B5/B7). After a LEAVE the channel stays
open for more JOINs (then ``timeouts.idle`` bounds it while it holds nothing). Closing the
channel leaves every group it joined.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING, Any

from gevent import socket as gsocket
from gevent.event import Event
from gevent.pool import Group
from gevent.queue import Empty, Queue

from socksx.errors import UpstreamError
from socksx.log import logger
from socksx.protocol.address import Address
from socksx.protocol.connection import ConnectionClosed
from socksx.protocol.constants import Notice, ReplyCode
from socksx.protocol.errors import RemoteProtocolError
from socksx.protocol.mcast import (
    GroupKeys,
    JoinReply,
    JoinRequest,
    LeaveRequest,
    McastNotice,
    RekeyNotice,
    group_problem,
)
from socksx.protocol.messages import Reply
from socksx.server.mcast.manager import manager_for
from socksx.server.mcast.member import Member
from socksx.server.mcast.policy import choose_policy
from socksx.server.mcast.relay import Relay, RelayError

if TYPE_CHECKING:
    from socksx.server.session import Session

__all__ = ["Channel", "handle"]

_GRANT = {
    "both": ReplyCode.SUCCEEDED,
    "receive": ReplyCode.MCAST_RECEIVE_ONLY,
    "send": ReplyCode.MCAST_SEND_ONLY,
}
_NOTICE_RESULT = {
    Notice.MCAST_EXPIRED: "expired",
    Notice.MCAST_EXPELLED: "expelled",
    Notice.MCAST_RELAY_DOWN: "relay-down",
}


class Channel:
    """One control connection's memberships (group -> (relay, member)) and its event queue."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.inbox: Queue[tuple[Any, ...]] = Queue()
        self.members: dict[Address, tuple[Relay, Member]] = {}
        self.replied = Event()
        self.opened = False

    def post(self, event: tuple[Any, ...]) -> None:
        """Queue an event for the channel (relays call this; it never blocks)."""
        self.inbox.put(event)

    # -- the loop -------------------------------------------------------------------------

    def run(self, first: object, readers: Group) -> None:
        """Answer the first request, then serve events until the channel should close."""
        if not self._request(first):
            return
        readers.spawn(self._read)
        idle = self.session.server.config.timeouts.idle
        while True:
            try:
                event = self.inbox.get(timeout=None if self.members else idle)
            except Empty:
                self.session.result = "idle-timeout"
                return
            kind = event[0]
            if kind == "request":
                keep = self._request(event[1])
                self.replied.set()
                if not keep:
                    return
            elif kind == "ended":
                if self._ended(event[1], event[2], event[3]) and not self.members:
                    return
            elif kind == "rekey":
                self._rekeyed(event[1], event[2], event[3])
            elif kind == "bad":
                self._malformed(event[1])
                return
            else:  # "closed"
                self.session.result = event[1]
                return

    def _read(self) -> None:
        session = self.session
        while True:
            try:
                event = session.next_event()
            except RemoteProtocolError as exc:
                self.post(("bad", exc))
                return
            except OSError as exc:
                text = (exc.strerror or str(exc) or type(exc).__name__).lower()
                self.post(("closed", f"io-error: {text}"))
                return
            if isinstance(event, ConnectionClosed):
                self.post(("closed", "ok"))
                return
            self.replied.clear()
            self.post(("request", event))
            self.replied.wait()

    # -- requests -------------------------------------------------------------------------

    def _request(self, request: object) -> bool:
        """Answer one request; False when the channel must close now."""
        if isinstance(request, JoinRequest):
            return self._join(request.address) or bool(self.members)
        if isinstance(request, LeaveRequest):
            return self._leave(request.address)
        # Another command on a multicast channel: well framed, so refuse it and carry on.
        self.session.send(Reply(ReplyCode.COMMAND_NOT_SUPPORTED))
        return self.opened

    def _refuse(self, reply: Reply | JoinReply, result: str, group: Address) -> bool:
        session = self.session
        session.result = result
        if self.opened:
            logger.info(
                "mcast join refused",
                extra={
                    "fields": {
                        "id": session.id,
                        "client": session.client_ip,
                        "user": session.user or "-",
                        "group": str(group),
                        "result": result,
                    }
                },
            )
        session.send(reply)
        return False

    def _tls_required(self) -> bool:
        value = self.session.server.config.mcast.require_tls_for_join
        if value == "auto":
            host = self.session.listener.address[0]
            return not ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
        return bool(value)

    def _join(self, group: Address) -> bool:
        session = self.session
        server = session.server
        config = server.config.mcast
        problem = group_problem(group)
        if problem is not None:
            reply = Reply(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
            return self._refuse(reply, f"not-a-group: {problem}", group)
        if group in self.members:
            return self._refuse(Reply(ReplyCode.GENERAL_FAILURE), "already-member", group)
        if self._tls_required() and not session.listener.tls:
            return self._refuse(Reply(ReplyCode.NOT_ALLOWED), "denied: tls-required", group)
        decision = server.rules.decide(
            session.client_ip, session.user, "join", group.host, group.port
        )
        if not decision.allowed:
            server.stats.rule_denials += 1
            reply = Reply(ReplyCode.NOT_ALLOWED)
            return self._refuse(reply, f"denied rule={decision.rule_id}", group)
        policy = choose_policy(
            config.policy,
            config.default_permission,
            group.host,
            group.port,
            session.user,
            session.client_ip,
        )
        if policy.permission == "none":
            denied = JoinReply(ReplyCode.MCAST_DENIED)
            return self._refuse(denied, f"mcast-denied policy={policy.id}", group)
        if len(self.members) >= config.max_groups_per_channel:
            reply = Reply(ReplyCode.MCAST_LIMIT)
            return self._refuse(reply, "mcast-limit: groups per channel", group)
        manager = manager_for(server)
        running = manager.relay_for(group)
        members = 0 if running is None else running.member_count
        if policy.max_members and members >= policy.max_members:
            reply = Reply(ReplyCode.MCAST_LIMIT)
            return self._refuse(reply, f"mcast-limit: members policy={policy.id}", group)
        try:
            relay = manager.acquire(group)
        except RelayError as exc:
            return self._refuse(Reply(ReplyCode.GENERAL_FAILURE), f"failed: {exc}", group)
        member = relay.add_member(
            self, session.user, session.client_ip, session.client_port, policy
        )
        self.members[group] = (relay, member)
        key_id, group_key = relay.keys_for(member)
        keys = GroupKeys(member.member_id, key_id, member.key, group_key) if relay.sealed else None
        session.send(JoinReply(_GRANT[policy.permission], relay.endpoint, keys))
        session.result = "ok"
        self.opened = True
        return True

    def _leave(self, group: Address) -> bool:
        entry = self.members.pop(group, None)
        if entry is None or not entry[1].active:
            self.session.send(Reply(ReplyCode.GENERAL_FAILURE, group))
            return self.opened
        relay, member = entry
        relay.remove_member(member, "left")
        self._count(member)
        self.session.send(Reply(ReplyCode.SUCCEEDED, group))
        return True

    # -- relay events ---------------------------------------------------------------------

    def _find(self, member: Member) -> Address | None:
        for group, (_, held) in self.members.items():
            if held is member:
                return group
        return None

    def _ended(self, member: Member, code: Notice, why: str) -> bool:
        group = self._find(member)
        if group is None:
            return False  # already left: the LEAVE reply said so
        del self.members[group]
        self._count(member)
        self.session.result = f"mcast-{_NOTICE_RESULT[code]}: {why}"
        self.session.send(McastNotice(code, group))
        return True

    def _rekeyed(self, member: Member, key_id: int, key: bytes) -> None:
        group = self._find(member)
        if group is not None and member.active:
            self.session.send(RekeyNotice(group, key_id, key))

    def _malformed(self, exc: RemoteProtocolError) -> None:
        # The framing of the channel is lost after malformed input: refuse, then close.
        self.session.result = f"protocol-error: {exc}"
        if exc.reply is not None:
            with contextlib.suppress(OSError):
                self.session.send(Reply(exc.reply))

    def _count(self, member: Member) -> None:
        self.session.bytes_up += member.bytes_in
        self.session.bytes_down += member.bytes_out

    def leave_all(self, why: str) -> None:
        """Leave every group still held (the channel is closing)."""
        for relay, member in list(self.members.values()):
            relay.remove_member(member, why)
            self._count(member)
        self.members.clear()


def handle(session: Session, request: object) -> None:
    """Serve a control channel whose first request is a JOIN or a LEAVE."""
    if not session.server.config.mcast.enabled:
        msg = "multicast is disabled ([mcast] enabled = false)"
        raise UpstreamError(ReplyCode.COMMAND_NOT_SUPPORTED, msg)
    with contextlib.suppress(OSError):
        session.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
    channel = Channel(session)
    readers = Group()
    try:
        channel.run(request, readers)
    finally:
        readers.kill()
        channel.leave_all("control channel closed")
