from __future__ import annotations

import pytest

from socksx.server.limits import FailureLimiter, SessionLimiter, TokenBucket

# --- TokenBucket -----------------------------------------------------------------------------


def test_bucket_starts_full_and_empties() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert bucket.take(0.0, 2)
    assert not bucket.take(0.25)  # 0.5 token
    assert bucket.take(0.5)  # 1 token accrued by now
    assert not bucket.take(0.5)


def test_bucket_never_exceeds_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.level(1000.0) == 2.0
    assert bucket.take(1000.0, 2)
    assert not bucket.take(1000.0)


def test_bucket_take_fails_without_spending() -> None:
    bucket = TokenBucket(rate=0.0, burst=3, now=0.0)
    assert not bucket.take(0.0, 4)
    assert bucket.level(0.0) == 3.0


def test_bucket_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=5, now=10.0)
    assert bucket.take(10.0, 5)
    assert bucket.level(5.0) == 0.0
    assert bucket.level(11.0) == 1.0


def test_bucket_give_is_capped() -> None:
    bucket = TokenBucket(rate=0.0, burst=2, now=0.0)
    assert bucket.take(0.0)
    bucket.give(0.0, 5)
    assert bucket.level(0.0) == 2.0
    assert bucket.full(0.0)


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1.0), (1.0, 0.0), (1.0, -2.0)])
def test_bucket_rejects_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst, now=0.0)


# --- FailureLimiter --------------------------------------------------------------------------


def test_failures_limited_per_key() -> None:
    limiter = FailureLimiter(per_minute=3)
    assert [limiter.try_begin("10.0.0.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.try_begin("10.0.0.2", 0.0)


def test_failures_budget_refills_over_a_minute() -> None:
    limiter = FailureLimiter(per_minute=6)  # one token every 10 s
    for _ in range(6):
        assert limiter.try_begin("a", 0.0)
    assert not limiter.try_begin("a", 9.0)
    assert limiter.try_begin("a", 19.5)  # refilled 1.95, spends 1 (the failed try spent nothing)
    assert not limiter.try_begin("a", 19.5)
    for _ in range(6):
        assert limiter.try_begin("a", 200.0)


def test_refund_makes_successes_free() -> None:
    limiter = FailureLimiter(per_minute=2)
    for _ in range(10):
        assert limiter.try_begin("a", 0.0)
        limiter.refund("a", 0.0)
    assert len(limiter) == 0  # a refilled bucket is forgotten


def test_in_flight_attempts_count_against_the_budget() -> None:
    limiter = FailureLimiter(per_minute=2)
    assert limiter.try_begin("a", 0.0)
    assert limiter.try_begin("a", 0.0)
    assert not limiter.try_begin("a", 0.0)  # two still unresolved: a third must wait
    limiter.refund("a", 0.0)
    assert limiter.try_begin("a", 0.0)


def test_refund_of_unknown_key_is_harmless() -> None:
    limiter = FailureLimiter(per_minute=2)
    limiter.refund("nobody", 0.0)
    assert len(limiter) == 0


def test_zero_per_minute_disables() -> None:
    limiter = FailureLimiter(per_minute=0)
    assert all(limiter.try_begin("a", 0.0) for _ in range(1000))
    assert len(limiter) == 0


def test_failure_limiter_memory_is_bounded_lru() -> None:
    limiter = FailureLimiter(per_minute=1, max_clients=3)
    for key in ("a", "b", "c"):
        assert limiter.try_begin(key, 0.0)
    assert not limiter.try_begin("a", 0.0)  # "a" becomes most recently used
    assert limiter.try_begin("d", 0.0)  # evicts "b", the least recently used
    assert len(limiter) == 3
    assert limiter.try_begin("b", 0.0)  # forgotten, so it starts fresh
    assert not limiter.try_begin("a", 0.0)  # evicted "c" this time, "a" is still limited


@pytest.mark.parametrize(("per_minute", "max_clients"), [(-1, 10), (1, 0)])
def test_failure_limiter_rejects_bad_parameters(per_minute: int, max_clients: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        FailureLimiter(per_minute, max_clients=max_clients)


# --- SessionLimiter --------------------------------------------------------------------------


def test_sessions_per_client_limit() -> None:
    limiter = SessionLimiter(max_total=10, max_per_client=2)
    assert limiter.try_acquire("10.0.0.1") is None
    assert limiter.try_acquire("10.0.0.1") is None
    assert limiter.try_acquire("10.0.0.1") == "max_sessions_per_client"
    assert limiter.try_acquire("10.0.0.2") is None
    assert limiter.total == 3
    assert limiter.per_client() == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_sessions_total_limit_checked_first() -> None:
    limiter = SessionLimiter(max_total=2, max_per_client=1)
    assert limiter.try_acquire("a") is None
    assert limiter.try_acquire("b") is None
    assert limiter.try_acquire("a") == "max_sessions"
    assert limiter.try_acquire("c") == "max_sessions"
    assert limiter.total == 2


def test_release_frees_a_slot_and_cleans_up() -> None:
    limiter = SessionLimiter(max_total=1, max_per_client=1)
    assert limiter.try_acquire("a") is None
    limiter.release("a")
    assert limiter.total == 0
    assert limiter.per_client() == {}
    assert limiter.count("a") == 0
    assert limiter.try_acquire("b") is None


def test_release_decrements_without_dropping_other_sessions() -> None:
    limiter = SessionLimiter(max_total=0, max_per_client=0)
    for _ in range(3):
        assert limiter.try_acquire("a") is None
    limiter.release("a")
    assert limiter.count("a") == 2
    assert limiter.total == 2


def test_release_without_acquire_raises() -> None:
    limiter = SessionLimiter(max_total=5, max_per_client=5)
    with pytest.raises(ValueError, match="release without acquire"):
        limiter.release("a")
    assert limiter.total == 0


def test_zero_means_unlimited() -> None:
    limiter = SessionLimiter(max_total=0, max_per_client=0)
    for _ in range(500):
        assert limiter.try_acquire("a") is None
    assert limiter.total == 500


def test_reconfigure_keeps_open_sessions() -> None:
    limiter = SessionLimiter(max_total=10, max_per_client=10)
    for _ in range(3):
        assert limiter.try_acquire("a") is None
    limiter.reconfigure(max_total=10, max_per_client=2)
    assert limiter.count("a") == 3
    assert limiter.try_acquire("a") == "max_sessions_per_client"
    limiter.release("a")
    limiter.release("a")
    assert limiter.try_acquire("a") is None


def test_session_limits_reject_negative() -> None:
    with pytest.raises(ValueError, match="session limits"):
        SessionLimiter(max_total=-1, max_per_client=0)


def test_would_allow_peeks_without_spending() -> None:
    limiter = FailureLimiter(2)
    assert limiter.would_allow("a", 0.0)
    assert limiter.try_begin("a", 0.0)
    assert limiter.would_allow("a", 0.0)
    assert limiter.would_allow("a", 0.0)  # peeking twice spent nothing
    assert limiter.try_begin("a", 0.0)
    assert not limiter.would_allow("a", 0.0)
    assert not limiter.try_begin("a", 0.0)
    assert limiter.would_allow("a", 30.0)  # a token came back (2 per 60 s)
    assert limiter.would_allow("other", 0.0)
    assert FailureLimiter(0).would_allow("a", 0.0)  # disabled
