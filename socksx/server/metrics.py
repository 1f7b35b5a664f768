"""``GET /metrics``: the /stats snapshot as Prometheus metrics, through prometheus-client.

A custom ``Collector`` reads the plain integer counters at scrape time (prometheus-client's own
``Counter.inc()`` takes a lock on every call: too slow for per-datagram counts). It works on the
/stats JSON rather than on the server object, so the supervisor of several workers exposes the
summed JSON through the same code.

Names follow the Prometheus conventions: ``socksx_`` prefix, ``_total`` counters, base units
(bytes, seconds), and labels whose values come from a small fixed set (command, direction,
reason, result word): never a session, client or relay id. The full list is in docs/ADMIN.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["CONTENT_TYPE", "EXTENSION_METRICS", "StatsCollector", "render_metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: /stats list name -> (metric name prefix, what one object is, list keys exported as gauges).
EXTENSION_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "relays": ("socksx_mcast_relay", "multicast relay", ("members",)),
    "tunnels": ("socksx_tunnel", "UDP tunnel", ()),
    "multibinds": ("socksx_multibind", "multi-bind control channel", ("channels",)),
}

#: Counter family -> its label name ("" = none) and what it counts.
_FAMILIES: dict[str, tuple[str, str]] = {
    "datagrams": ("direction", "datagrams relayed"),
    "packets": ("direction", "packets relayed"),
    "bytes": ("direction", "payload bytes relayed"),
    "dropped": ("reason", "datagrams dropped"),
    "rekeys": ("", "key changes"),
    "lost": ("", "datagrams counted as lost"),
    "errors": ("", "errors"),
}


class StatsCollector(Collector):
    """Metrics from a /stats snapshot taken at each scrape."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """One pass over a fresh snapshot."""
        stats = self._stats()
        yield from _core(stats)
        yield from _udp(stats.get("udp", {}))
        for kind, (prefix, noun, gauges) in EXTENSION_METRICS.items():
            yield from _extension(
                prefix, noun, gauges, stats.get(kind, []), stats.get("totals", {}).get(kind, {})
            )


def _core(stats: Mapping[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("socksx_build_info", "socksx version (always 1)", labels=["version"])
    info.add_metric([str(stats.get("version", ""))], 1)
    yield info
    yield GaugeMetricFamily(
        "socksx_start_time_seconds",
        "Start of the server, seconds since the Unix epoch",
        value=float(stats.get("started", 0.0)),
    )
    yield GaugeMetricFamily(
        "socksx_workers", "Worker processes serving SOCKS", value=_number(stats.get("workers", 1))
    )
    sessions = stats.get("sessions", {})
    yield GaugeMetricFamily(
        "socksx_open_sessions", "Client connections open now", value=sessions.get("open", 0)
    )
    by_command = CounterMetricFamily(
        "socksx_sessions", "Sessions ended, by command", labels=["command"]
    )
    for command, count in sorted(sessions.get("by_command", {}).items()):
        by_command.add_metric([command], count)
    yield by_command
    by_result = CounterMetricFamily(
        "socksx_session_results",
        "Sessions ended, by the first word of their result (ok, denied, failed...)",
        labels=["result"],
    )
    for result, count in sorted(sessions.get("by_result", {}).items()):
        by_result.add_metric([result], count)
    yield by_result
    moved = CounterMetricFamily(
        "socksx_bytes",
        "Payload bytes relayed by sessions, TCP and UDP ASSOCIATE (up: from clients)",
        labels=["direction"],
    )
    totals = stats.get("bytes", {})
    for direction in ("up", "down"):
        moved.add_metric([direction], totals.get(direction, 0))
    yield moved
    yield CounterMetricFamily(
        "socksx_auth_failures",
        "Sessions whose username/password login failed",
        value=stats.get("auth", {}).get("failures", 0),
    )
    auth = stats.get("auth", {})
    for key, doc in (
        ("verifications", "Password hash verifications run"),
        ("cache_hits", "Logins accepted from the recent-credentials cache"),
        ("rate_limited", "Logins refused by the per-client failure limit"),
        ("overloaded", "Logins refused because the verification queue was full"),
    ):
        yield CounterMetricFamily(f"socksx_auth_{key}", doc, value=auth.get(key, 0))
    yield GaugeMetricFamily(
        "socksx_auth_in_flight",
        "Password verifications running or queued",
        value=auth.get("in_flight", 0),
    )
    yield CounterMetricFamily(
        "socksx_rule_denials",
        "Requests and datagrams refused by the access rules",
        value=stats.get("rule_denials", 0),
    )


def _udp(udp: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "socksx_udp_associations",
        "UDP ASSOCIATE relays open now",
        value=udp.get("associations", 0),
    )
    datagrams = CounterMetricFamily(
        "socksx_udp_datagrams",
        "UDP ASSOCIATE datagrams relayed (up: from clients, down: to clients)",
        labels=["direction"],
    )
    datagrams.add_metric(["up"], udp.get("datagrams_up", 0))
    datagrams.add_metric(["down"], udp.get("datagrams_down", 0))
    yield datagrams
    dropped = CounterMetricFamily(
        "socksx_udp_dropped", "UDP ASSOCIATE datagrams dropped, by reason", labels=["reason"]
    )
    for reason, count in sorted(udp.get("dropped", {}).items()):
        dropped.add_metric([reason], count)
    yield dropped


def _extension(
    prefix: str,
    noun: str,
    gauges: tuple[str, ...],
    objects: list[Mapping[str, Any]],
    totals: Mapping[str, Mapping[str, int]],
) -> Iterator[Metric]:
    yield GaugeMetricFamily(f"{prefix}s", f"Open {noun}s", value=len(objects))
    for key in gauges:
        count = sum(len(o[key]) for o in objects if isinstance(o.get(key), list | dict))
        yield GaugeMetricFamily(
            f"{prefix}_{key}", f"{key.capitalize()} of open {noun}s", value=count
        )
    for family, (label, doc) in _FAMILIES.items():
        values = totals.get(family)
        if not values:
            continue
        metric = CounterMetricFamily(
            f"{prefix}_{family}",
            f"{noun.capitalize()}s: {doc} (including ended ones)",
            labels=[label] if label else None,
        )
        for value, count in sorted(values.items()):
            metric.add_metric([value] if label else [], count)
        yield metric


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def render_metrics(stats: Callable[[], Mapping[str, Any]]) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return generate_latest(registry)
