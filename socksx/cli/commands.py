"""The list of commands the root group registers (one module per command)."""

from __future__ import annotations

import click

from socksx.cli.bind import bind
from socksx.cli.check import check
from socksx.cli.config import config
from socksx.cli.connect import connect
from socksx.cli.mcast import mcast_join, mcast_send
from socksx.cli.passwd import passwd
from socksx.cli.server import server
from socksx.cli.top import top
from socksx.cli.tunnel import tunnel

ALL: list[click.Command] = [
    server,
    connect,
    check,
    config,
    passwd,
    top,
    tunnel,
    bind,
    mcast_join,
    mcast_send,
]
