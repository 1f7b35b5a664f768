"""``socksx top``'s screen as a pure function: ``render(snapshot, view, now, width)``.

The snapshot is what the admin API returned (``{"stats": /stats, "sessions": [/sessions
rows]}``); nothing here does I/O or reads a clock, so tests render a frozen snapshot at a
frozen ``now`` and compare text. Every string that came from the network (client addresses,
user names, destinations, group names, the config path) goes into ``rich.text.Text`` objects,
never into markup, so ``[bold]`` in a user name prints as typed.

Layout (memray's header/body/footer split): a header with uptime, sessions, throughput with a
sparkline of the last minute, auth failures and the fetch status; then the tables (multicast
relays, tunnels, multi-binds, busiest sessions), or only the focused one; then the key help.
It returns a ``Group`` rather than a ``Layout``: a Layout always fills the console's height,
which would pad ``--once`` output with blank lines. Narrow terminals lose the less important
columns below ``WIDE`` columns, and all tables below ``MIN_TABLE_WIDTH``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from socksx.cli.top.state import FOCUS_KEYS, TABLES, FeedStatus, ViewState

__all__ = [
    "MIN_TABLE_WIDTH",
    "WIDE",
    "format_age",
    "format_bytes",
    "render",
    "sparkline",
]

WIDE = 120  # from this width on, every column is shown
MIN_TABLE_WIDTH = 60  # below it, only the header and the footer
OVERVIEW_ROWS = 4  # rows of each extension table in the overview of a terminal with a height
TABLE_OVERHEAD = 3  # title, column headers, rule
SPARK = "▁▂▃▄▅▆▇█"
TITLES = {
    "relays": "Multicast relays",
    "tunnels": "Tunnels",
    "multibinds": "Multi-binds",
    "sessions": "Busiest sessions",
}
KEY_OF = {table: key for key, table in FOCUS_KEYS.items()}

Row = Mapping[str, Any]


# --------------------------------------------------------------------------- formatting


def format_bytes(count: float) -> str:
    """Compact binary units: 999B, 1.2K, 34M, 5.6G."""
    value = float(count)
    if value < 1024:
        return f"{value:.0f}B"
    for unit in "KMGTP":
        value /= 1024
        if value < 9.95:
            return f"{value:.1f}{unit}"
        if value < 1024 or unit == "P":
            return f"{value:.0f}{unit}"
    return f"{value:.0f}P"  # unreachable: the loop returns at P


def format_rate(per_second: float) -> str:
    """Bytes per second."""
    return format_bytes(per_second) + "/s"


def format_count(value: float) -> str:
    """Packets per second and other counts: 0, 12, 3.4k, 56M."""
    if value < 10 and value != int(value):
        return f"{value:.1f}"
    if value < 1000:
        return f"{value:.0f}"
    for unit in "kMG":
        value /= 1000
        if value < 9.95:
            return f"{value:.1f}{unit}"
        if value < 1000 or unit == "G":
            return f"{value:.0f}{unit}"
    return f"{value:.0f}G"  # unreachable


def format_age(seconds: Any) -> str:
    """12s, 3m04s, 1h02m, 2d03h; ``-`` when unknown."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def sparkline(values: Sequence[float], length: int) -> str:
    """The last *length* values as block characters scaled to their maximum."""
    tail = [max(float(v), 0.0) for v in values[-length:]] if length > 0 else []
    top = max(tail, default=0.0)
    if top <= 0:
        return SPARK[0] * len(tail)
    steps = len(SPARK) - 1
    return "".join(SPARK[min(steps, math.ceil(v / top * steps))] for v in tail)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


# --------------------------------------------------------------------------- extension rows


def _family(entry: Row, family: str, suffixes: tuple[str, ...] = ()) -> float | None:
    """Sum of ``family_*`` counters (only *suffixes* when given); list items when the entry has
    none itself (a multi-bind's channels). None when nothing matches."""

    def own(item: Row) -> float | None:
        found = [
            _number(value)
            for key, value in item.items()
            if key.startswith(family + "_")
            and (not suffixes or key[len(family) + 1 :] in suffixes)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ]
        return sum(found) if found else None

    total = own(entry)
    if total is not None:
        return total
    nested = [
        own(item)
        for value in entry.values()
        if isinstance(value, list)
        for item in value
        if isinstance(item, Mapping)
    ]
    found = [n for n in nested if n is not None]
    return sum(found) if found else None


def _drops(entry: Row) -> float | None:
    def own(item: Row) -> float | None:
        total, seen = 0.0, False
        for key in ("dropped", "drops"):
            value = item.get(key)
            if isinstance(value, Mapping):
                total += sum(_number(v) for v in value.values())
                seen = True
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total += value
                seen = True
        return total if seen else None

    total = own(entry)
    if total is not None:
        return total
    found = [
        n
        for value in entry.values()
        if isinstance(value, list)
        for item in value
        if isinstance(item, Mapping) and (n := own(item)) is not None
    ]
    return sum(found) if found else None


def _rate(entry: Row, *suffixes: str) -> float | None:
    """Packets (datagrams) per second from the API's ``rates``, for the given directions."""
    rates = entry.get("rates")
    if not isinstance(rates, Mapping):
        return None
    found = [
        _number(value)
        for key, value in rates.items()
        if key.partition("_")[0] in ("datagrams", "packets")
        and (not suffixes or key.partition("_")[2] in suffixes)
    ]
    return sum(found) if found else None


def _first(entry: Row, *keys: str) -> str:
    for key in keys:
        value = entry.get(key)
        if value not in (None, ""):
            return str(value)
    return "-"


def _members(entry: Row) -> tuple[int, int] | None:
    """(members that receive, members that send), from each member's ``permission``."""
    members = entry.get("members")
    if not isinstance(members, list):
        return None
    recv = send = 0
    for member in members:
        permission = str(member.get("permission", "")) if isinstance(member, Mapping) else ""
        words = set(permission.lower().replace("+", " ").replace("/", " ").split())
        recv += bool(words & {"recv", "receive", "both", "rw", "r"})
        send += bool(words & {"send", "both", "rw", "s", "w"})
    return recv, send


def _group(entry: Row) -> str:
    """The public group, with its port when the relay gives it apart (``group`` + ``port``)."""
    group = _first(entry, "group", "public_group", "address", "id")
    port = entry.get("port")
    if group == "-" or not isinstance(port, int) or isinstance(port, bool):
        return group
    return f"[{group}]:{port}" if ":" in group else f"{group}:{port}"


def _opt(value: float | None, fmt: Callable[[float], str]) -> str:
    return "-" if value is None else fmt(value)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header, alignment, cell text, and whether narrow screens keep it."""

    header: str
    cell: Callable[[Row], str]
    right: bool = False
    narrow: bool = True
    ratio: int | None = None


def _relay_columns() -> list[Column]:
    def members(entry: Row) -> str:
        counts = _members(entry)
        return "-" if counts is None else f"{counts[0]}/{counts[1]}"

    def pkts(entry: Row) -> str:
        rate_in, rate_out = _rate(entry, "in"), _rate(entry, "out")
        if rate_in is None and rate_out is None:
            return "-"
        return f"{_opt(rate_in, format_count)}/{_opt(rate_out, format_count)}"

    return [
        Column("group", _group, ratio=2),
        Column(
            "intranet",
            lambda e: _first(e, "intranet", "intranet_endpoint", "endpoint"),
            narrow=False,
            ratio=2,
        ),
        Column("mode", lambda e: _first(e, "mode"), narrow=False),
        Column("recv/send", members, right=True),
        Column("pkt/s in/out", pkts, right=True),
        Column("bytes", lambda e: _opt(_family(e, "bytes"), format_bytes), right=True),
        Column("drops", lambda e: _opt(_drops(e), format_count), right=True),
        Column("rekeys", lambda e: _first(e, "rekeys"), right=True, narrow=False),
        Column("age", lambda e: format_age(e.get("age")), right=True),
    ]


def _tunnel_columns() -> list[Column]:
    def datagrams(entry: Row) -> str:
        got_in = _family(entry, "datagrams", ("in", "down", "received"))
        got_out = _family(entry, "datagrams", ("out", "up", "sent"))
        if got_in is None and got_out is None:
            return "-"
        return f"{_opt(got_in, format_count)}/{_opt(got_out, format_count)}"

    def loss(entry: Row) -> str:
        if isinstance(entry.get("loss"), int | float):
            return f"{_number(entry['loss']):.1%}" if entry["loss"] <= 1 else str(entry["loss"])
        return _opt(_drops(entry), format_count)

    return [
        Column("peer", lambda e: _first(e, "peer", "id"), ratio=2),
        Column("proto", lambda e: _first(e, "proto")),
        Column("client", lambda e: _first(e, "client"), narrow=False, ratio=2),
        Column("dgrams in/out", datagrams, right=True),
        Column("pkt/s", lambda e: _opt(_rate(e), format_count), right=True),
        Column("bytes", lambda e: _opt(_family(e, "bytes"), format_bytes), right=True),
        Column("loss", loss, right=True),
        Column("age", lambda e: format_age(e.get("age")), right=True),
    ]


def _multibind_columns() -> list[Column]:
    def channels(entry: Row) -> str:
        value = entry.get("channels")
        if isinstance(value, list):
            return str(len(value))
        return _first(entry, "open_channels", "channels")

    return [
        Column("id", lambda e: _first(e, "id")),
        Column("client", lambda e: _first(e, "client"), ratio=2),
        Column("peer", lambda e: _first(e, "peer"), narrow=False, ratio=2),
        Column("channels", channels, right=True),
        Column("datagrams", lambda e: _opt(_family(e, "datagrams"), format_count), right=True),
        Column("bytes", lambda e: _opt(_family(e, "bytes"), format_bytes), right=True),
        Column("drops", lambda e: _opt(_drops(e), format_count), right=True, narrow=False),
        Column("age", lambda e: format_age(e.get("age")), right=True),
    ]


def _session_columns() -> list[Column]:
    return [
        Column("id", lambda e: _first(e, "id"), right=True, narrow=False),
        Column("client", lambda e: _first(e, "client"), ratio=2),
        Column("user", lambda e: _first(e, "user"), narrow=False),
        Column("cmd", lambda e: _first(e, "command")),
        Column("destination", lambda e: _first(e, "dst"), ratio=3),
        Column("rate", lambda e: format_rate(_number(e.get("rate"))), right=True),
        Column("up", lambda e: format_bytes(_number(e.get("bytes_up"))), right=True),
        Column("down", lambda e: format_bytes(_number(e.get("bytes_down"))), right=True),
        Column("age", lambda e: format_age(e.get("age")), right=True),
    ]


COLUMNS: dict[str, Callable[[], list[Column]]] = {
    "relays": _relay_columns,
    "tunnels": _tunnel_columns,
    "multibinds": _multibind_columns,
    "sessions": _session_columns,
}


def _sort_key(table: str, sort: str) -> Callable[[Row], float]:
    def traffic(entry: Row) -> float:
        if table == "sessions":
            return _number(entry.get("bytes_up")) + _number(entry.get("bytes_down"))
        return _family(entry, "bytes") or 0.0

    def rate(entry: Row) -> float:
        if table == "sessions":
            return _number(entry.get("rate"))
        return _rate(entry) or 0.0

    def members(entry: Row) -> float:
        value = entry.get("members")
        return float(len(value)) if isinstance(value, list) else 0.0

    def channels(entry: Row) -> float:
        value = entry.get("channels")
        return float(len(value)) if isinstance(value, list) else _number(value)

    keys: dict[str, Callable[[Row], float]] = {
        "rate": rate,
        "bytes": traffic,
        "age": lambda e: _number(e.get("age")),
        "drops": lambda e: _drops(e) or 0.0,
        "members": members,
        "channels": channels,
    }
    return keys[sort]


def _table(
    table: str, rows: Sequence[Row], view: ViewState, width: int, max_rows: int | None
) -> Table:
    sort = view.sort_of(table)
    ordered = sorted(rows, key=_sort_key(table, sort), reverse=True)
    focused = view.focus == table
    title = Text.assemble(
        (TITLES[table], "bold" if focused else ""),
        f" ({KEY_OF[table]})  {len(rows)}  sort: {sort}",
    )
    result = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        expand=True,
        pad_edge=False,
        header_style="bold",
        width=width,
    )
    columns = [c for c in COLUMNS[table]() if c.narrow or width >= WIDE]
    for column in columns:
        result.add_column(
            column.header,
            justify="right" if column.right else "left",
            no_wrap=True,
            overflow="ellipsis",
            ratio=column.ratio,
        )
    if not ordered:
        result.add_row(Text("none", style="dim"), *[Text("") for _ in columns[1:]])
        return result
    shown = ordered if max_rows is None else ordered[: max(max_rows, 1)]
    if max_rows is not None and len(ordered) > len(shown):
        # Keep one line to say how many are hidden.
        shown = shown[: max(len(shown) - 1, 1)]
    for entry in shown:
        result.add_row(*[Text(column.cell(entry)) for column in columns])
    hidden = len(ordered) - len(shown)
    if hidden:
        result.add_row(Text(f"… {hidden} more", style="dim"), *[Text("") for _ in columns[1:]])
    return result


# --------------------------------------------------------------------------- header, footer


def _header(stats: Row, view: ViewState, now: float, width: int, status: FeedStatus) -> Group:
    lines: list[Text] = []
    if stats:
        first = Text.assemble(
            ("socksx ", "bold"),
            str(stats.get("version", "?")),
            f"  pid {stats.get('pid', '?')}",
            f"  workers {stats.get('workers', 1)}",
            f"  up {format_age(stats.get('uptime'))}",
        )
        if width >= WIDE:
            first.append("  config ")
            first.append(str(stats.get("config_source", "?")))
        lines.append(first)
        sessions = _table_of(stats, "sessions")
        auth = _table_of(stats, "auth")
        udp = _table_of(stats, "udp")
        second = Text(
            f"sessions {int(_number(sessions.get('open')))} open, "
            f"{int(_number(sessions.get('total')))} total   "
            f"auth failures {int(_number(auth.get('failures')))}   "
            f"denials {int(_number(stats.get('rule_denials')))}"
        )
        if width >= WIDE:
            dropped = udp.get("dropped", {})
            drops = sum(_number(v) for v in dropped.values()) if isinstance(dropped, Mapping) else 0
            second.append(
                f"   udp {int(_number(udp.get('associations')))} assoc, "
                f"{format_count(_number(udp.get('datagrams_up')))} up, "
                f"{format_count(_number(udp.get('datagrams_down')))} down, "
                f"{format_count(drops)} dropped"
            )
        lines.append(second)
        lines += _throughput(stats, width)
    elif status.error is None:
        lines.append(Text("socksx top: waiting for the first snapshot…"))
    notice = _status_line(status, view, now)
    if notice is not None:
        lines.append(notice)
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
    return Group(*lines)


def _throughput(stats: Row, width: int) -> list[Text]:
    history = _table_of(stats, "history")
    rates = _table_of(stats, "rates")
    totals = _table_of(stats, "bytes")
    length = 60 if width >= WIDE else max(min(30, width - 40), 0)
    lines = []
    for direction, label in (("up", "up  "), ("down", "down")):
        series = history.get(direction, [])
        values = [_number(v) for v in series] if isinstance(series, list) else []
        line = Text(f"{label} {format_rate(_number(rates.get(direction))):>9} ")
        line.append(sparkline(values, length).rjust(length, " "), style="cyan")
        line.append(f"  total {format_bytes(_number(totals.get(direction)))}")
        lines.append(line)
    return lines


def _table_of(stats: Row, key: str) -> Row:
    value = stats.get(key)
    return value if isinstance(value, Mapping) else {}


def _status_line(status: FeedStatus, view: ViewState, now: float) -> Text | None:
    parts: list[Text] = []
    if status.error is not None:
        wait = max(math.ceil((status.retry_at or now) - now), 0)
        line = Text(f"server went away, retrying in {wait} s", style="bold red")
        line.append(" (")
        line.append(status.error)
        line.append(")")
        if status.fetched_at is not None:
            line.append(f", data {format_age(now - status.fetched_at)} old")
        parts.append(line)
    if view.paused:
        parts.append(Text("PAUSED: p resumes", style="bold yellow"))
    if not parts:
        return None
    return Text("  ").join(parts)


def _footer(view: ViewState) -> Text:
    footer = Text()
    items = [("q", "quit"), ("s", f"sort {view.sort_of(view.sort_target)}")]
    items.append(("p", "resume" if view.paused else "pause"))
    items += [(key, TITLES[table].split()[-1].lower()) for key, table in FOCUS_KEYS.items()]
    for index, (key, label) in enumerate(items):
        if index:
            footer.append("  ")
        focused = FOCUS_KEYS.get(key) == view.focus and view.focus is not None
        footer.append(key, style="reverse bold" if focused else "bold")
        footer.append(f" {label}")
    footer.no_wrap = True
    footer.overflow = "ellipsis"
    return footer


# --------------------------------------------------------------------------- the screen


def render(
    snapshot: Mapping[str, Any],
    view: ViewState,
    now: float,
    width: int,
    *,
    height: int | None = None,
    status: FeedStatus | None = None,
) -> RenderableType:
    """The whole screen for one snapshot.

    *now* is on the clock of ``status`` (monotonic seconds); *height* None means unbounded
    (``--once``): every row is shown.
    """
    status = status or FeedStatus()
    stats = snapshot.get("stats") or {}
    header = _header(stats, view, now, width, status)
    parts: list[RenderableType] = [header]
    if width < MIN_TABLE_WIDTH:
        parts.append(Text(f"(tables need {MIN_TABLE_WIDTH} columns)", style="dim"))
    elif stats:
        tables = [view.focus] if view.focus else list(TABLES)
        rows = {table: _rows(snapshot, stats, table) for table in tables}
        budgets = _budgets(tables, rows, height, len(header.renderables) + 2)
        for table in tables:
            parts.append(Text(""))
            parts.append(_table(table, rows[table], view, width, budgets[table]))
    parts.append(_footer(view))
    return Group(*parts)


def _rows(snapshot: Mapping[str, Any], stats: Row, table: str) -> list[Row]:
    source = snapshot.get("sessions") if table == "sessions" else stats.get(table)
    if not isinstance(source, list):
        return []
    return [row for row in source if isinstance(row, Mapping)]


def _budgets(
    tables: list[str], rows: Mapping[str, list[Row]], height: int | None, used: int
) -> dict[str, int | None]:
    """Rows each table may show on a screen *height* lines tall (None: no limit)."""
    if height is None:
        return dict.fromkeys(tables)
    left = height - used - (TABLE_OVERHEAD + 1) * len(tables)
    budgets: dict[str, int | None] = {}
    if len(tables) == 1:
        return {tables[0]: max(left, 1)}
    for table in tables:
        if table != "sessions":
            budgets[table] = min(max(len(rows[table]), 1), OVERVIEW_ROWS)
            left -= budgets[table] or 0
    budgets["sessions"] = max(left, 1)
    return budgets
