"""What the ``socksx top`` user chose to see: a frozen ``ViewState`` and the pure key handler.

Keys: ``q`` quit; ``s`` cycle the sort column of the focused table (the sessions table when
none is); ``p`` pause/resume fetching; ``r`` relays, ``t`` tunnels, ``m`` multi-binds, ``b``
busiest sessions: focus that table (the same key again, or Esc, returns to the overview).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["FOCUS_KEYS", "SORTS", "TABLES", "FeedStatus", "ViewState", "apply_key"]

#: Tables in display order (names are the /stats list names, plus the sessions table).
TABLES = ("relays", "tunnels", "multibinds", "sessions")

#: Key -> the table it focuses.
FOCUS_KEYS = {"r": "relays", "t": "tunnels", "m": "multibinds", "b": "sessions"}

#: Sort columns of each table, in the order ``s`` cycles through them (all descending).
SORTS: dict[str, tuple[str, ...]] = {
    "relays": ("rate", "bytes", "members", "drops", "age"),
    "tunnels": ("rate", "bytes", "drops", "age"),
    "multibinds": ("rate", "bytes", "channels", "age"),
    "sessions": ("rate", "bytes", "age"),
}

ESCAPE = "\x1b"


@dataclass(frozen=True, slots=True)
class ViewState:
    """Focus, sort columns, pause and quit: everything a key can change."""

    focus: str | None = None
    sorts: dict[str, str] = field(default_factory=lambda: {t: s[0] for t, s in SORTS.items()})
    paused: bool = False
    quit: bool = False

    @property
    def sort_target(self) -> str:
        """The table ``s`` sorts: the focused one, else the sessions table."""
        return self.focus or "sessions"

    def sort_of(self, table: str) -> str:
        """The current sort column of *table*."""
        return self.sorts.get(table, SORTS[table][0])


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """How fresh the snapshot is: when it was fetched, and the error since, if any."""

    fetched_at: float | None = None
    error: str | None = None
    retry_at: float | None = None


def apply_key(view: ViewState, key: str) -> ViewState:
    """The view after *key* (unknown keys change nothing)."""
    if key in ("q", "Q"):
        return dataclasses.replace(view, quit=True)
    if key == "p":
        return dataclasses.replace(view, paused=not view.paused)
    if key == "s":
        table = view.sort_target
        columns = SORTS[table]
        current = view.sort_of(table)
        following = columns[(columns.index(current) + 1) % len(columns)]
        return dataclasses.replace(view, sorts={**view.sorts, table: following})
    if key in FOCUS_KEYS:
        table = FOCUS_KEYS[key]
        return dataclasses.replace(view, focus=None if view.focus == table else table)
    if key == ESCAPE:
        return dataclasses.replace(view, focus=None)
    return view
