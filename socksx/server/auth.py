"""Username/password checks for RFC 1929: argon2id off the hub, bounded, rate limited, cached.

Why each piece exists:

* **argon2id in a thread pool.** One verification with the production cost (64 MiB,
  ``OPSLIMIT_INTERACTIVE``) takes tens to hundreds of milliseconds of CPU inside libsodium, which
  releases the GIL. Run on the hub it would freeze every session; in a ``gevent.threadpool``
  it runs beside them.
* **Bounded admission.** At most ``workers`` verifications run and at most ``queue`` wait; any
  further attempt is answered ``OVERLOADED`` at once (an RFC 1929 failure on the wire). Each
  running verification holds its memory cost, so this bound is what keeps a login flood from
  exhausting memory. A verification is counted until its thread finishes, even if the session
  that asked for it was killed meanwhile (a timeout cannot be used to stack up work).
* **Unknown users cost the same.** A name that is not in the users file is checked against a
  real user's stored hash (result ignored), so response time does not tell which users exist.
* **Failure limiter per client address** (``limits.FailureLimiter``): each attempt spends a
  token before the expensive check and gets it back unless it fails, so more than
  ``failures_per_minute`` bad attempts a minute (including ones still in flight) make further
  attempts ``RATE_LIMITED`` without any verification. The check comes before the cache: a
  cached correct password must not become an oracle while a client is locked out.
* **Success cache.** Clients such as browsers open many connections with the same credentials.
  A success is remembered under keyed BLAKE2b(per-process random key; username, password) with
  the stored hash it matched; a hit needs the user's current stored hash to be that same hash
  (a password change invalidates it) and the entry to be younger than ``cache_ttl``. Wrong
  passwords are never cached. The cache is bounded (oldest entries go first) and cleared by
  ``replace_users`` (SIGHUP reload, or the server noticing the users file changed).

Passwords are never logged, stored or shown in a repr; only keyed digests are kept.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import nacl.exceptions
import nacl.pwhash.argon2id
from gevent.event import AsyncResult

from socksx.server.limits import FailureLimiter
from socksx.server.userfile import load_users

if TYPE_CHECKING:
    from gevent.threadpool import ThreadPool

__all__ = [
    "DEFAULT_MEMLIMIT",
    "DEFAULT_OPSLIMIT",
    "AuthResult",
    "Authenticator",
    "check_password",
    "hash_password",
    "load_users",
]

#: Production cost of new hashes: libsodium's "interactive" argon2id profile (64 MiB, 2 passes).
DEFAULT_OPSLIMIT: int = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
DEFAULT_MEMLIMIT: int = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


class AuthResult(enum.StrEnum):
    """Outcome of one login attempt; the value is the word the session log uses.

    On the wire only ``OK`` succeeds; every other result is the same RFC 1929 failure status,
    so a client learns nothing about which one happened.
    """

    OK = "ok"
    BAD_CREDENTIALS = "bad-credentials"  #: known user, wrong password
    UNKNOWN_USER = "unknown-user"  #: no such user (a dummy verification still ran)
    RATE_LIMITED = "rate-limited"  #: too many failures from this address: not verified
    OVERLOADED = "overloaded"  #: verification queue full: not verified

    @property
    def ok(self) -> bool:
        """True only for a successful login."""
        return self is AuthResult.OK


def hash_password(
    password: bytes, *, opslimit: int = DEFAULT_OPSLIMIT, memlimit: int = DEFAULT_MEMLIMIT
) -> bytes:
    """The argon2id string for ``password`` (random salt), as stored in the users file.

    Raises:
        ValueError: the password is empty.
    """
    if not password:
        msg = "empty password"
        raise ValueError(msg)
    return nacl.pwhash.argon2id.str(password, opslimit=opslimit, memlimit=memlimit)


def check_password(stored: bytes, password: bytes) -> bool:
    """True if ``password`` matches the argon2id string ``stored``; blocks for the whole hash.

    The server calls it in a pool thread (libsodium releases the GIL while hashing); the CLI
    calls it directly.
    """
    try:
        return nacl.pwhash.argon2id.verify(stored, password)
    except nacl.exceptions.InvalidkeyError:
        return False


class Authenticator:
    """Checks RFC 1929 credentials against a users map; one per server, reloaded in place.

    ``verify`` must be called from greenlets of the hub thread that first called it (the thread
    pool belongs to that hub).
    """

    def __init__(
        self,
        users: dict[str, bytes],
        *,
        workers: int = 0,
        queue: int = 64,
        failures_per_minute: int = 10,
        cache_size: int = 4096,
        cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Set up limits; no thread starts until the first verification.

        ``workers = 0`` means one per CPU. ``cache_size = 0`` or ``cache_ttl = 0`` disables the
        success cache; ``failures_per_minute = 0`` disables the failure limiter.

        Raises:
            ValueError: a negative count or TTL.
        """
        if workers < 0 or queue < 0 or cache_size < 0 or cache_ttl < 0:
            msg = "authenticator workers, queue, cache_size and cache_ttl must be >= 0"
            raise ValueError(msg)
        self.workers = workers or os.cpu_count() or 1
        self.queue = queue
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._limiter = FailureLimiter(failures_per_minute)
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._pool: ThreadPool | None = None
        self._in_flight = 0  # admitted verifications whose thread has not finished
        self._counters = dict.fromkeys(
            ("verifications", "cache_hits", "failures", "rate_limited", "overloaded"), 0
        )
        self._users: dict[str, bytes] = {}
        self._dummy: bytes | None = None
        self._flights: dict[tuple[str, bytes], AsyncResult] = {}
        self.replace_users(users)

    def __repr__(self) -> str:
        return f"<Authenticator users={len(self._users)} workers={self.workers}>"

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start (a copy): verifications actually run (including dummy ones for
        unknown users), cache hits, failed logins, rate-limited and overloaded attempts, and the
        ``in_flight`` gauge (running + queued verifications)."""
        return {**self._counters, "in_flight": self._in_flight}

    def replace_users(self, users: dict[str, bytes]) -> None:
        """Swap in a new users map (SIGHUP reload); forgets every cached success."""
        self._users = dict(users)
        self._cache.clear()
        # Any real stored hash will do as the dummy: it has the cost real logins have.
        self._dummy = secrets.choice(list(self._users.values())) if self._users else None

    def reconfigure(self, *, workers: int, queue: int, failures_per_minute: int) -> None:
        """Apply reloaded [limits] in place (cache and in-flight checks are kept)."""
        self.workers = workers or os.cpu_count() or 1
        self.queue = queue
        if self._pool is not None:
            self._pool.maxsize = self.workers
        if failures_per_minute != self._limiter.per_minute:
            self._limiter = FailureLimiter(failures_per_minute)

    def close(self) -> None:
        """Stop the pool threads at server shutdown, after the sessions are gone (a thread ends
        once its current verification is done); a later ``verify`` starts a new pool."""
        if self._pool is not None:
            self._pool.kill()
            self._pool = None

    def verify(self, client_ip: str, username: bytes, password: bytes) -> AuthResult:
        """Check one login attempt from ``client_ip``; blocks only the calling greenlet.

        Raises:
            gevent.Timeout / GreenletExit: whatever kills the calling greenlet while it waits;
                the verification itself still completes and is accounted for.
        """
        digest = self._cache_digest(username, password)
        stored = self._stored(username)
        # Fast path, a returning user: a cached success needs no token, thread or flight, but
        # only for a client that is not locked out (a cache hit must not confirm a guess).
        if (
            stored is not None
            and self._limiter.would_allow(client_ip, self._clock())
            and self._cache_hit(digest, stored)
        ):
            self._counters["cache_hits"] += 1
            return AuthResult.OK
        # Single flight: the same credentials from the same address while a check of them is
        # under way share its outcome (a browser's burst of logins costs one token and one
        # argon2id run, and a burst of correct logins is not mistaken for guessing).
        flight_key = (client_ip, digest)
        flight = self._flights.get(flight_key)
        if flight is not None:
            outcome: AuthResult = flight.get()
            return outcome
        flight = AsyncResult()
        self._flights[flight_key] = flight
        result = AuthResult.OVERLOADED  # what waiters see if this greenlet is killed
        try:
            result = self._verify_limited(client_ip, password, digest, stored)
        finally:
            del self._flights[flight_key]
            flight.set(result)
        return result

    def _stored(self, username: bytes) -> bytes | None:
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            return None  # cannot be in the file (it is UTF-8): an unknown user
        return self._users.get(name)

    def _verify_limited(
        self, client_ip: str, password: bytes, digest: bytes, stored: bytes | None
    ) -> AuthResult:
        now = self._clock()
        if not self._limiter.try_begin(client_ip, now):
            self._counters["rate_limited"] += 1
            return AuthResult.RATE_LIMITED
        result: AuthResult | None = None
        try:
            result = self._verify_admitted(password, digest, stored)
        finally:
            if result in (AuthResult.BAD_CREDENTIALS, AuthResult.UNKNOWN_USER):
                self._counters["failures"] += 1
            else:
                # Success, overload, or the session gave up (handshake timeout) says nothing
                # about guessing: give the token back.
                self._limiter.refund(client_ip, self._clock())
        return result

    def _verify_admitted(self, password: bytes, digest: bytes, stored: bytes | None) -> AuthResult:
        if stored is not None and self._cache_hit(digest, stored):
            self._counters["cache_hits"] += 1
            return AuthResult.OK
        target = stored if stored is not None else self._dummy
        if target is None:
            # empty users file: nobody can log in and there is no user to hide
            return AuthResult.UNKNOWN_USER
        if self._in_flight >= self.workers + self.queue:
            self._counters["overloaded"] += 1
            return AuthResult.OVERLOADED
        matched = self._run_in_pool(target, password)
        if stored is None:
            return AuthResult.UNKNOWN_USER
        if not matched:
            return AuthResult.BAD_CREDENTIALS
        self._remember(digest, stored)
        return AuthResult.OK

    def _run_in_pool(self, stored: bytes, password: bytes) -> bool:
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self.workers)
        self._in_flight += 1
        try:
            # spawn() waits (cooperatively) for a free worker: this is the queue
            async_result = self._pool.spawn(check_password, stored, password)
        except BaseException:
            self._in_flight -= 1  # killed while queued: nothing was submitted
            raise
        self._counters["verifications"] += 1
        # decrement when the thread is done, not when this greenlet stops waiting
        async_result.rawlink(self._finished)
        return bool(async_result.get())

    def _finished(self, _result: object) -> None:
        self._in_flight -= 1

    def _cache_digest(self, username: bytes, password: bytes) -> bytes:
        # length-prefix the username so (user, password) pairs cannot collide
        message = len(username).to_bytes(4, "big") + username + b"\0" + password
        # Keyed BLAKE2b is a MAC in one C call (hmac.new takes three times as long): this runs
        # on every login, cached or not.
        return hashlib.blake2b(message, key=self._cache_key, digest_size=32).digest()

    def _cache_hit(self, key: bytes, stored: bytes) -> bool:
        entry = self._cache.get(key)
        if entry is None:
            return False
        cached_hash, expires = entry
        if self._clock() >= expires or not hmac.compare_digest(cached_hash, stored):
            del self._cache[key]
            return False
        return True

    def _remember(self, key: bytes, stored: bytes) -> None:
        if not self.cache_size or not self.cache_ttl:
            return
        self._cache.pop(key, None)
        self._cache[key] = (stored, self._clock() + self.cache_ttl)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
