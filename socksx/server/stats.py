"""Server-wide counters: plain integer attributes, added to on the hot path, read by snapshot()."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

__all__ = ["ServerStats"]


class ServerStats:
    """Totals since start. Open sessions are tracked by the server itself (its session set)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.sessions_total = 0
        self.by_command: Counter[str] = Counter()
        self.by_result: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0
        self.auth_failures = 0
        self.rule_denials = 0
        self.udp_datagrams_up = 0
        self.udp_datagrams_down = 0
        self.udp_dropped: Counter[str] = Counter()

    def session_ended(self, command: str, result: str, up: int, down: int) -> None:
        """Fold a finished session into the totals."""
        self.sessions_total += 1
        self.by_command[command] += 1
        self.by_result[result] += 1
        self.bytes_up += up
        self.bytes_down += down

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return {
            "uptime": time.time() - self.started,
            "sessions_total": self.sessions_total,
            "by_command": dict(self.by_command),
            "by_result": dict(self.by_result),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "auth_failures": self.auth_failures,
            "rule_denials": self.rule_denials,
            "udp_datagrams_up": self.udp_datagrams_up,
            "udp_datagrams_down": self.udp_datagrams_down,
            "udp_dropped": dict(self.udp_dropped),
        }
