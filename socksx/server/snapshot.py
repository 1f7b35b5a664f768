"""The admin API's JSON: ``/stats`` and ``/sessions`` built from a running server at scrape time.

The hot path only adds to plain integers (``ServerStats``, ``Session.bytes_up``, the extension
objects' counters). Everything derived (rates, the last minute of throughput, totals that
survive the teardown of a relay) is computed here, when someone asks, in the hub thread:

- ``RateSampler`` keeps one (time, value, rate) sample per counter and turns successive
  readings into a rate; readings closer together than ``min_interval`` return the previous
  rate, so two clients scraping at once do not see noise.
- ``ThroughputHistory`` keeps the last minute of server-wide byte rates, one sample a second
  (driven by the admin listener's ticker), for ``socksx top``'s sparkline.
- ``Totals`` folds the counters of extension objects that went away into retired sums, so the
  Prometheus counters built from them never go backwards.

The extension registries (``server.mcast_relays``, ``server.tunnels``, ``server.multibinds``)
are read generically: each value's ``snapshot()`` dict is passed through, plus its ``id`` and
the rates of its counters. Counter keys follow one naming convention (docs/ADMIN.md
"Extension objects"): ``datagrams_X``/``bytes_X``/``packets_X`` (X a direction), ``rekeys``,
``lost``, ``errors``, and ``drops``/``dropped`` as an int or a {reason: int} table.

``merge_stats`` and ``merge_sessions`` sum the JSON of several worker processes (the
supervisor's view with ``workers > 1``).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from socksx import __version__
from socksx.log import logger

if TYPE_CHECKING:
    from socksx.server.server import Server

__all__ = [
    "EXTENSION_KINDS",
    "HISTORY_SECONDS",
    "SESSION_SORTS",
    "RateSampler",
    "StatsBuilder",
    "ThroughputHistory",
    "Totals",
    "counters_of",
    "merge_sessions",
    "merge_stats",
]

#: JSON list name -> the Server attribute holding that registry.
EXTENSION_KINDS: dict[str, str] = {
    "relays": "mcast_relays",
    "tunnels": "tunnels",
    "multibinds": "multibinds",
}

#: ``/sessions?sort=`` values; every one sorts descending (busiest, largest, oldest first).
SESSION_SORTS = ("rate", "bytes", "age")

HISTORY_SECONDS = 60

#: Counter families whose key carries a direction suffix (``datagrams_in``) -> label value.
_DIRECTIONAL = re.compile(r"(datagrams|bytes|packets)_([a-z]+)")
#: Plain counter keys (one number each).
_PLAIN_COUNTERS = frozenset({"rekeys", "lost", "errors"})
_DROPS = frozenset({"drops", "dropped"})
#: Keys of the top-level /stats object that are per process, not summed over workers.
_PER_PROCESS = frozenset({"version", "pid", "uptime", "started", "config_source", "workers"})


class RateSampler:
    """Rates of counters from successive readings (one small sample per key)."""

    def __init__(self, min_interval: float = 0.5, forget_after: float = 60.0) -> None:
        self.min_interval = min_interval
        self.forget_after = forget_after
        # key -> [sample time, value at that time, last rate, last read]
        self._samples: dict[Hashable, list[float]] = {}
        self._last_prune = 0.0

    def rate(self, key: Hashable, value: int, now: float, since: float | None = None) -> float:
        """The per-second rate of *value* at *now*.

        On first sight the rate is the average since *since* (a start time), or 0.
        """
        sample = self._samples.get(key)
        if sample is None:
            # (at least 50 ms, so a young session's burst stays a plausible number)
            rate = value / max(now - since, 0.05) if since is not None else 0.0
            self._samples[key] = [now, value, rate, now]
            return rate
        sample[3] = now
        elapsed = now - sample[0]
        if elapsed < self.min_interval:
            return sample[2]
        # A counter that fell (an object replaced under the same id) restarts from zero.
        rate = max(value - sample[1], 0) / elapsed
        sample[0], sample[1], sample[2] = now, value, rate
        return rate

    def prune(self, now: float) -> None:
        """Forget keys nobody read for ``forget_after`` seconds (ended sessions)."""
        if now - self._last_prune < self.forget_after / 4:
            return
        self._last_prune = now
        stale = [k for k, s in self._samples.items() if now - s[3] > self.forget_after]
        for key in stale:
            del self._samples[key]

    def __len__(self) -> int:
        return len(self._samples)


class ThroughputHistory:
    """Server-wide byte rates, one sample per tick, the last ``HISTORY_SECONDS`` ticks."""

    def __init__(self, length: int = HISTORY_SECONDS) -> None:
        self.up: deque[float] = deque(maxlen=length)
        self.down: deque[float] = deque(maxlen=length)
        self._last: tuple[float, int, int] | None = None

    def tick(self, now: float, up: int, down: int) -> None:
        """Record the byte totals at *now*; the first tick only sets the baseline."""
        if self._last is not None:
            then, last_up, last_down = self._last
            elapsed = now - then
            if elapsed <= 0:
                return
            self.up.append(max(up - last_up, 0) / elapsed)
            self.down.append(max(down - last_down, 0) / elapsed)
        self._last = (now, up, down)

    def current(self) -> tuple[float, float]:
        """The latest (up, down) rate; 0 before the second tick."""
        if not self.up:
            return 0.0, 0.0
        return self.up[-1], self.down[-1]

    def to_json(self) -> dict[str, Any]:
        """Oldest first, rounded to whole bytes per second."""
        return {
            "interval": 1.0,
            "up": [round(v) for v in self.up],
            "down": [round(v) for v in self.down],
        }


def counters_of(snapshot: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The counters of one extension object's snapshot: {family: {label value: n}}.

    Families with a direction (``datagrams``, ``bytes``, ``packets``) are keyed by it,
    ``dropped`` by reason (an int ``drops`` counts as reason ``unspecified``), plain counters
    by ``""``. A family the object reports at its top level is its total; a family it does not
    is summed over the items of its lists (a multi-bind's channels, say), so per-member
    counters under a relay that has its own totals are not counted twice.
    """
    out = _own_counters(snapshot)
    own = set(out)
    for value in snapshot.values():
        if not isinstance(value, list):
            continue
        for item in value:
            if not isinstance(item, Mapping):
                continue
            for family, values in _own_counters(item).items():
                if family in own:
                    continue
                table = out.setdefault(family, {})
                for label, count in values.items():
                    table[label] = table.get(label, 0) + count
    return out


def _own_counters(snapshot: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for key, value in snapshot.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            match = _DIRECTIONAL.fullmatch(key)
            if match is not None:
                out.setdefault(match.group(1), {})[match.group(2)] = value
            elif key in _PLAIN_COUNTERS:
                out.setdefault(key, {})[""] = value
            elif key in _DROPS:
                out.setdefault("dropped", {})["unspecified"] = value
        elif key in _DROPS and isinstance(value, Mapping):
            table = out.setdefault("dropped", {})
            for reason, count in value.items():
                if isinstance(count, int) and not isinstance(count, bool):
                    table[str(reason)] = table.get(str(reason), 0) + count
    return out


class Totals:
    """Counters of one kind of extension object, summed over live and departed objects."""

    def __init__(self) -> None:
        self.retired: dict[str, Counter[str]] = {}
        self._last_seen: dict[str, dict[str, dict[str, int]]] = {}

    def update(self, live: Mapping[str, Mapping[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
        """Fold objects gone since the last call into the retired sums; return the totals.

        *live* maps object id -> ``counters_of`` its snapshot. Counts an object made between
        the last scrape and its teardown are lost; what was reported once stays counted.
        """
        for gone in self._last_seen.keys() - live.keys():
            for family, values in self._last_seen.pop(gone).items():
                self.retired.setdefault(family, Counter()).update(values)
        self._last_seen = {key: dict(value) for key, value in live.items()}
        totals: dict[str, dict[str, int]] = {
            family: dict(values) for family, values in self.retired.items()
        }
        for counters in live.values():
            for family, values in counters.items():
                table = totals.setdefault(family, {})
                for label, count in values.items():
                    table[label] = table.get(label, 0) + count
        return totals


class StatsBuilder:
    """Builds /stats and /sessions for one Server; owns the scrape-time samples."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rates = RateSampler()
        self.history = ThroughputHistory()
        self.totals = {kind: Totals() for kind in EXTENSION_KINDS}

    # -- totals including open sessions -------------------------------------------------------

    def byte_totals(self) -> tuple[int, int]:
        """Bytes moved by ended sessions plus what open sessions moved so far."""
        stats = self.server.stats
        up, down = stats.bytes_up, stats.bytes_down
        for session in self.server.sessions:
            up += session.bytes_up
            down += session.bytes_down
        return up, down

    def tick(self, now: float) -> None:
        """One throughput sample (the admin listener calls this every second)."""
        up, down = self.byte_totals()
        self.history.tick(now, up, down)

    # -- /stats -------------------------------------------------------------------------------

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """The whole /stats object (see docs/ADMIN.md for every key)."""
        now = time.monotonic() if now is None else now
        server = self.server
        snap = server.stats.snapshot()
        sessions = list(server.sessions)
        open_by_command = Counter(session.command for session in sessions)
        up, down = self.byte_totals()
        rate_up, rate_down = self.history.current()
        associations = list(server.associations)
        auth = dict(server.authenticator.stats)
        auth["failures"] = snap["auth_failures"]
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "workers": 1,
            "uptime": round(snap["uptime"], 3),
            "started": round(server.stats.started, 3),
            "config_source": server.config.source,
            "sessions": {
                "open": len(sessions),
                "total": snap["sessions_total"] + len(sessions),
                "by_command": snap["by_command"],
                "by_result": snap["by_result"],
                "open_by_command": dict(open_by_command),
            },
            "bytes": {"up": up, "down": down},
            "rates": {"up": round(rate_up, 1), "down": round(rate_down, 1)},
            "history": self.history.to_json(),
            "auth": auth,
            "rule_denials": snap["rule_denials"],
            "udp": {
                "associations": len(associations),
                "datagrams_up": snap["udp_datagrams_up"],
                "datagrams_down": snap["udp_datagrams_down"],
                "dropped": snap["udp_dropped"],
            },
        }
        totals: dict[str, Any] = {}
        for kind, attribute in EXTENSION_KINDS.items():
            entries = self._extension(kind, getattr(server, attribute, {}), now)
            out[kind] = entries
            live = {entry["id"]: counters_of(entry) for entry in entries}
            totals[kind] = self.totals[kind].update(live)
        out["totals"] = totals
        self.rates.prune(now)
        return out

    def _extension(
        self, kind: str, registry: Mapping[Any, Any], now: float
    ) -> list[dict[str, Any]]:
        entries = []
        for key, obj in list(registry.items()):
            try:
                snapshot = dict(obj.snapshot())
            except Exception:
                # A broken snapshot is a bug in its extension; the rest of /stats still works.
                logger.exception("stats: %s %s: snapshot() failed", kind, key)
                continue
            # The registry's key is the id the POST actions take, whatever the snapshot says.
            entry: dict[str, Any] = {**snapshot, "id": str(key)}
            rates = {}
            for family, values in counters_of(snapshot).items():
                if family in ("datagrams", "bytes", "packets"):
                    for direction, count in values.items():
                        name = f"{family}_{direction}"
                        rates[name] = round(self.rates.rate((kind, key, name), count, now), 1)
            entry["rates"] = rates
            entries.append(entry)
        return entries

    # -- /sessions ----------------------------------------------------------------------------

    def sessions(
        self, now: float | None = None, *, sort: str = "rate", limit: int | None = None
    ) -> dict[str, Any]:
        """Open sessions, busiest first (or largest / oldest), at most *limit* of them."""
        now = time.monotonic() if now is None else now
        datagrams = {}
        for association in list(self.server.associations):
            owner = getattr(association, "session", None)
            if owner is not None:
                datagrams[id(owner)] = association
        rows = []
        for session in list(self.server.sessions):
            rate_up = self.rates.rate(
                ("s", session.id, "up"), session.bytes_up, now, session.started
            )
            rate_down = self.rates.rate(
                ("s", session.id, "down"), session.bytes_down, now, session.started
            )
            row: dict[str, Any] = {
                "id": str(session.id),
                "client": _host_port(session.client_ip, session.client_port),
                "user": session.user,
                "command": session.command,
                "dst": session.dst,
                "bytes_up": session.bytes_up,
                "bytes_down": session.bytes_down,
                "rate_up": round(rate_up, 1),
                "rate_down": round(rate_down, 1),
                "rate": round(rate_up + rate_down, 1),
                "age": round(max(now - session.started, 0.0), 3),
            }
            association = datagrams.get(id(session))
            if association is not None:
                row["datagrams_up"] = association.datagrams_up
                row["datagrams_down"] = association.datagrams_down
                row["dropped"] = association.dropped
            rows.append(row)
        self.rates.prune(now)
        return {"open": len(rows), "sort": sort, "sessions": sort_sessions(rows, sort, limit)}


def sort_sessions(
    rows: Iterable[dict[str, Any]], sort: str, limit: int | None
) -> list[dict[str, Any]]:
    """Rows sorted by *sort*, largest first; ties go to the older session (lower id)."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        traffic = row["bytes_up"] + row["bytes_down"]
        if sort == "rate":
            first, second = -row["rate"], -traffic
        elif sort == "bytes":
            first, second = -traffic, -row["rate"]
        else:
            first, second = -row["age"], 0.0
        return (first, second, _id_order(str(row["id"])))

    ordered = sorted(rows, key=key)
    return ordered if limit is None else ordered[:limit]


def _id_order(ident: str) -> tuple[tuple[int, int, str], ...]:
    """Session ids ("17", or "1-17" from worker 1) in numeric order."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in ident.split("-"))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- several workers


def _merge_into(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if key not in into:
            into[key] = _copy(value)
        elif isinstance(value, bool) or isinstance(into[key], bool):
            continue
        elif isinstance(value, int | float) and isinstance(into[key], int | float):
            into[key] += value
        elif isinstance(value, Mapping) and isinstance(into[key], dict):
            _merge_into(into[key], value)
        elif isinstance(value, list) and isinstance(into[key], list):
            into[key].extend(_copy(value))


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _sum_aligned(series: list[list[float]]) -> list[float]:
    """Element-wise sums of series aligned at their newest end."""
    length = max((len(s) for s in series), default=0)
    out = [0.0] * length
    for values in series:
        offset = length - len(values)
        for i, value in enumerate(values):
            out[offset + i] += value
    return [round(v) for v in out]


def merge_stats(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the /stats objects of worker processes (keyed by worker name).

    Counters and gauges add up, tables merge, lists of objects concatenate (their ids get the
    worker's name as a prefix), the throughput history adds up second by second. Per-process
    keys (version, pid, uptime...) are left to the caller.
    """
    merged: dict[str, Any] = {}
    histories: list[dict[str, Any]] = []
    for worker, stats in parts.items():
        part = {k: v for k, v in stats.items() if k not in _PER_PROCESS and k != "history"}
        for kind in EXTENSION_KINDS:
            part[kind] = [
                {**entry, "id": f"{worker}-{entry.get('id', '')}"} for entry in stats.get(kind, [])
            ]
        _merge_into(merged, part)
        if isinstance(stats.get("history"), Mapping):
            histories.append(stats["history"])
    merged["history"] = {
        "interval": 1.0,
        "up": _sum_aligned([list(h.get("up", [])) for h in histories]),
        "down": _sum_aligned([list(h.get("down", [])) for h in histories]),
    }
    return merged


def merge_sessions(
    parts: Mapping[str, Mapping[str, Any]], sort: str, limit: int | None
) -> dict[str, Any]:
    """The /sessions objects of worker processes as one (ids prefixed with the worker name)."""
    rows = [
        {**row, "id": f"{worker}-{row['id']}"}
        for worker, part in parts.items()
        for row in part.get("sessions", [])
    ]
    opened = sum(int(part.get("open", 0)) for part in parts.values())
    return {"open": opened, "sort": sort, "sessions": sort_sessions(rows, sort, limit)}
