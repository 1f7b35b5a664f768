"""SETUP_UDP_TUNNEL (CMD 07): UDP tunnels between two gateways (docs/PROTOCOL.md "UDP tunnels").

One server plays both roles. A request whose DST is a gateway (a ``[[tunnel.peer]]``) makes it
gateway A for its client (``near``); the gateway form, DST 0.0.0.0:0 or [::]:0 on a TLS
listener, makes it gateway B for the gateway that sent it (``far``). Every tunnel end is in
``server.tunnels`` (id -> object with ``snapshot()``) while it runs.

    _end.py    lifetime, keepalive and dead-peer timers, counters, snapshot
    _links.py  PROTO 01 frames in TLS, PROTO 02 sealed datagrams
    near.py    gateway A: policy, dialing B (TLS, RFC 1929, request), the client's UDP
    far.py     gateway B: policy, the shared PROTO 02 endpoint, per-datagram rules, site B's UDP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from socksx.protocol.constants import ReplyCode
from socksx.protocol.tunnel import TunnelRequest, is_gateway_form
from socksx.server.tunnel._end import TunnelEnd
from socksx.server.tunnel.far import serve_far
from socksx.server.tunnel.near import NearTunnel, peer_allowed, serve_near

if TYPE_CHECKING:
    from socksx.server.session import Session

__all__ = ["config_changed", "handle"]


def handle(session: Session, request: object) -> None:
    """Serve one SETUP_UDP_TUNNEL in the role its DST asks for (REP 07 when disabled)."""
    assert isinstance(request, TunnelRequest)
    if not session.server.config.tunnel.enabled:
        session.send_reply(ReplyCode.COMMAND_NOT_SUPPORTED)
        session.result = "tunnel-disabled"
        return
    if is_gateway_form(request.address):
        serve_far(session, request)
    else:
        serve_near(session, request)


def config_changed(server: Any) -> None:
    """After a reload: end the tunnels the new config no longer allows.

    Tunnels disabled: every end. A gateway A end whose peer is no longer listed (and not
    allowed by ``allow_any_peer``): that end, which closes its TLS connection, so B's end goes
    too. Rules are re-read by running tunnels on their next datagram.
    """
    config = server.config
    for end in list(server.tunnels.values()):
        if not isinstance(end, TunnelEnd):
            continue
        if not config.tunnel.enabled:
            end.end("tunnel-disabled")
        elif isinstance(end, NearTunnel) and not peer_allowed(config, end.address):
            end.end("peer-removed")
