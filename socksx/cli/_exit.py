"""Exit codes of every socksx command: one table, repeated in man/socksx.1 (a test compares)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What a socksx process's exit status means."""

    OK = 0  #: success
    FAILURE = 1  #: runtime failure not covered below
    USAGE = 2  #: bad command line (click's own usage errors)
    CONFIG = 3  #: invalid configuration or users file
    UNREACHABLE = 4  #: proxy unreachable, connection lost, or TLS failure
    AUTH = 5  #: authentication failed
    REFUSED = 6  #: request refused by the proxy (REP != 00, code in the message)
    ENDED = 7  #: membership or tunnel ended by the server
    INTERRUPTED = 130  #: interrupted (SIGINT)


EXIT_TEXT: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "runtime failure",
    ExitCode.USAGE: "usage error",
    ExitCode.CONFIG: "invalid configuration",
    ExitCode.UNREACHABLE: "proxy unreachable or TLS failure",
    ExitCode.AUTH: "authentication failed",
    ExitCode.REFUSED: "request refused by the proxy",
    ExitCode.ENDED: "membership or tunnel ended by the server",
    ExitCode.INTERRUPTED: "interrupted",
}
