"""Pure rate and count limits: token buckets, per-client failure budgets, session counts.

Nothing here reads a clock, sleeps or touches a socket: every method that depends on time takes
``now`` (seconds, any monotonic origin) from the caller. That keeps the decisions testable like
the codec (a test drives time by hand) and lets the server use one clock for everything.

Used by:
  * ``socksx.server.auth`` -- failed logins per client address (``FailureLimiter``);
  * the session layer -- ``max_sessions`` / ``max_sessions_per_client`` (``SessionLimiter``);
  * later rate limits (per multicast member, per tunnel) -- ``TokenBucket`` directly.
"""

from __future__ import annotations

__all__ = ["FailureLimiter", "SessionLimiter", "TokenBucket"]


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second accrue up to ``burst``; a take spends them.

    The bucket starts full, so a fresh client gets its whole burst at once. A clock that steps
    backwards (it should not, with a monotonic clock) is treated as "no time passed" rather than
    draining or overfilling the bucket.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        """Create a full bucket.

        Raises:
            ValueError: ``rate`` is negative or ``burst`` is not positive.
        """
        if rate < 0:
            msg = f"token bucket rate must be >= 0, not {rate}"
            raise ValueError(msg)
        if burst <= 0:
            msg = f"token bucket burst must be > 0, not {burst}"
            raise ValueError(msg)
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (refills as a side effect; spends nothing)."""
        self._refill(now)
        return self._tokens

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if that many are there; False (and spend nothing) if not."""
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def give(self, now: float, n: float = 1.0) -> None:
        """Return ``n`` tokens (e.g. an attempt that turned out not to count); capped at burst."""
        self._refill(now)
        self._tokens = min(self.burst, self._tokens + n)

    def full(self, now: float) -> bool:
        """True when the bucket is back at its burst, i.e. indistinguishable from a new one."""
        return self.level(now) >= self.burst


class FailureLimiter:
    """A token bucket per client key (an IP address) for failed logins.

    ``per_minute`` failures may happen in a burst, and the budget refills at ``per_minute`` per
    60 s. An attempt spends a token *before* the expensive check (``try_begin``) and gets it back
    if it succeeds (``refund``): that way concurrent guesses in flight count against the budget
    too, so a client cannot run ``workers + queue`` guesses at once past a limit that only counts
    finished failures. ``per_minute = 0`` disables the limiter.

    Memory is bounded by ``max_clients``: a bucket that refills completely on a refund carries no
    information and is dropped; beyond the bound the least recently used bucket goes (which can
    only make the limiter more lenient for that address, never lock anyone out).
    """

    __slots__ = ("_buckets", "max_clients", "per_minute")

    def __init__(self, per_minute: int, *, max_clients: int = 65536) -> None:
        """Create an empty limiter.

        Raises:
            ValueError: ``per_minute`` is negative or ``max_clients`` is not positive.
        """
        if per_minute < 0:
            msg = f"failures per minute must be >= 0, not {per_minute}"
            raise ValueError(msg)
        if max_clients <= 0:
            msg = f"max_clients must be > 0, not {max_clients}"
            raise ValueError(msg)
        self.per_minute = per_minute
        self.max_clients = max_clients
        # insertion order doubles as recency order: a used key is moved to the end
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def try_begin(self, key: str, now: float) -> bool:
        """Spend one failure token for ``key``; False means the client is over its limit."""
        if not self.per_minute:
            return True
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            self._make_room()
            bucket = TokenBucket(self.per_minute / 60.0, self.per_minute, now)
        self._buckets[key] = bucket
        return bucket.take(now)

    def would_allow(self, key: str, now: float) -> bool:
        """Whether ``try_begin`` would succeed now, without spending anything."""
        if not self.per_minute:
            return True
        bucket = self._buckets.get(key)
        return bucket is None or bucket.level(now) >= 1.0

    def refund(self, key: str, now: float) -> None:
        """Give back the token of an attempt that did not fail (success, overload)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        bucket.give(now)
        if bucket.full(now):
            del self._buckets[key]

    def _make_room(self) -> None:
        # The least recently used bucket is also the one that had the longest time to refill,
        # so it is the best to forget: O(1), no scan while under a many-address flood.
        while len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]


class SessionLimiter:
    """Counts open sessions in total and per client address against two maxima.

    A limit of 0 means unlimited. ``reconfigure`` changes the maxima on reload while keeping the
    counts of sessions that are still open (they are not dropped; new sessions see the new limits).
    """

    __slots__ = ("_per_client", "max_per_client", "max_total", "total")

    def __init__(self, max_total: int, max_per_client: int) -> None:
        """Create a limiter with no sessions.

        Raises:
            ValueError: a limit is negative.
        """
        self.total = 0
        self._per_client: dict[str, int] = {}
        self.max_total = 0
        self.max_per_client = 0
        self.reconfigure(max_total, max_per_client)

    def reconfigure(self, max_total: int, max_per_client: int) -> None:
        """Set new maxima; open sessions keep counting.

        Raises:
            ValueError: a limit is negative.
        """
        if max_total < 0 or max_per_client < 0:
            msg = f"session limits must be >= 0, not {max_total}/{max_per_client}"
            raise ValueError(msg)
        self.max_total = max_total
        self.max_per_client = max_per_client

    def try_acquire(self, client_ip: str) -> str | None:
        """Count a new session; None if allowed, else the name of the limit that refused it."""
        if self.max_total and self.total >= self.max_total:
            return "max_sessions"
        count = self._per_client.get(client_ip, 0)
        if self.max_per_client and count >= self.max_per_client:
            return "max_sessions_per_client"
        self.total += 1
        self._per_client[client_ip] = count + 1
        return None

    def release(self, client_ip: str) -> None:
        """Uncount a session that ``try_acquire`` allowed.

        Raises:
            ValueError: no session of ``client_ip`` is counted (a release without an acquire
                is a bug in the caller, and ignoring it would let the counts drift).
        """
        count = self._per_client.get(client_ip, 0)
        if count <= 0:
            msg = f"release without acquire for client {client_ip}"
            raise ValueError(msg)
        self.total -= 1
        if count == 1:
            # drop the key so the dict holds only clients with open sessions
            del self._per_client[client_ip]
        else:
            self._per_client[client_ip] = count - 1

    def count(self, client_ip: str) -> int:
        """Open sessions of one client."""
        return self._per_client.get(client_ip, 0)

    def per_client(self) -> dict[str, int]:
        """A copy of the open-session count of every client that has one."""
        return dict(self._per_client)
