from __future__ import annotations

import itertools
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import nacl.pwhash.argon2id as argon2id
import pytest

from socksx.errors import ConfigError
from socksx.server.auth import Authenticator, AuthResult, hash_password, load_users
from socksx.server.userfile import UsersFile, check_username

FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}


def fast_hash(password: bytes) -> bytes:
    return hash_password(password, **FAST)


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def users() -> dict[str, bytes]:
    return {
        "alice": fast_hash(b"wonderland"),
        "bob": fast_hash(b"builder"),
        "zoë": fast_hash("été".encode()),
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_auth(users: dict[str, bytes], clock: Clock) -> Iterator:
    made: list[Authenticator] = []

    def make(**kwargs: object) -> Authenticator:
        kwargs.setdefault("clock", clock)
        auth = Authenticator(kwargs.pop("users", users), **kwargs)
        made.append(auth)
        return auth

    with gevent.Timeout(20, AssertionError("auth test took more than 20 s")):
        yield make
    for auth in made:
        auth.close()


# --- hashing ---------------------------------------------------------------------------------


def test_hash_password_defaults_are_interactive_argon2id() -> None:
    stored = hash_password(b"secret")
    assert stored.startswith(b"$argon2id$v=19$m=65536,t=2,p=1$")
    assert argon2id.verify(stored, b"secret")


def test_hash_password_salts_each_hash() -> None:
    assert fast_hash(b"same") != fast_hash(b"same")


def test_hash_password_refuses_empty() -> None:
    with pytest.raises(ValueError, match="empty password"):
        hash_password(b"")


# --- Authenticator ---------------------------------------------------------------------------


def test_correct_password(make_auth) -> None:
    auth = make_auth()
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.verify("127.0.0.1", "zoë".encode(), "été".encode()) is AuthResult.OK
    assert auth.stats["verifications"] == 2
    assert auth.stats["failures"] == 0


def test_wrong_password(make_auth) -> None:
    auth = make_auth()
    result = auth.verify("127.0.0.1", b"alice", b"wonderlan")
    assert result is AuthResult.BAD_CREDENTIALS
    assert not result.ok
    assert auth.stats["failures"] == 1


def test_password_of_another_user_fails(make_auth) -> None:
    auth = make_auth()
    assert auth.verify("127.0.0.1", b"alice", b"builder") is AuthResult.BAD_CREDENTIALS


def test_unknown_user_still_costs_a_verification(make_auth) -> None:
    auth = make_auth()
    assert auth.verify("127.0.0.1", b"mallory", b"wonderland") is AuthResult.UNKNOWN_USER
    assert auth.verify("127.0.0.1", b"\xff\xfe", b"x") is AuthResult.UNKNOWN_USER
    assert auth.stats["verifications"] == 2
    assert auth.stats["failures"] == 2


def test_unknown_user_with_a_real_users_password_still_fails(make_auth) -> None:
    # the dummy check runs against a real stored hash; its result must never leak through
    auth = make_auth(users={"alice": fast_hash(b"pw")})
    assert auth.verify("127.0.0.1", b"eve", b"pw") is AuthResult.UNKNOWN_USER


def test_empty_users_map_refuses_everyone(make_auth) -> None:
    auth = make_auth(users={})
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.UNKNOWN_USER


def test_cache_hit_skips_verification(make_auth) -> None:
    auth = make_auth()
    for _ in range(5):
        assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.stats["verifications"] == 1
    assert auth.stats["cache_hits"] == 4


def test_cache_is_per_credentials(make_auth) -> None:
    auth = make_auth()
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.verify("127.0.0.1", b"bob", b"wonderland") is AuthResult.BAD_CREDENTIALS
    assert auth.verify("127.0.0.1", b"alice", b"wonderland!") is AuthResult.BAD_CREDENTIALS
    assert auth.stats["cache_hits"] == 0


def test_wrong_password_is_never_cached(make_auth) -> None:
    auth = make_auth(failures_per_minute=0)
    for _ in range(3):
        assert auth.verify("127.0.0.1", b"alice", b"nope") is AuthResult.BAD_CREDENTIALS
    assert auth.stats["verifications"] == 3
    assert auth.stats["cache_hits"] == 0


def test_cache_expires_after_ttl(make_auth, clock: Clock) -> None:
    auth = make_auth(cache_ttl=60.0)
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    clock.now += 59.9
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.stats["verifications"] == 1
    clock.now += 0.1
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.stats["verifications"] == 2


def test_cache_invalidated_when_the_stored_hash_changes(make_auth, users) -> None:
    auth = make_auth()
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    changed = {**users, "alice": fast_hash(b"looking-glass")}
    auth.replace_users(changed)
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.BAD_CREDENTIALS
    assert auth.verify("127.0.0.1", b"alice", b"looking-glass") is AuthResult.OK
    assert auth.stats["cache_hits"] == 0


def test_cache_hit_requires_the_same_stored_hash(make_auth, users) -> None:
    # same password, new salt: the old entry must not count (password rotated and back)
    auth = make_auth()
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    auth._users["alice"] = fast_hash(b"wonderland")  # as if edited without a cache flush
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.stats["cache_hits"] == 0
    assert auth.stats["verifications"] == 2


def test_replace_users_clears_cache_and_removes_users(make_auth, users) -> None:
    auth = make_auth()
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    auth.replace_users(dict(users))
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.stats["cache_hits"] == 0
    auth.replace_users({"bob": users["bob"]})
    assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.UNKNOWN_USER


def test_cache_is_bounded_and_evicts_oldest(make_auth) -> None:
    people = {f"u{i}": fast_hash(f"p{i}".encode()) for i in range(3)}
    auth = make_auth(users=people, cache_size=2)
    for i in range(3):
        assert auth.verify("127.0.0.1", f"u{i}".encode(), f"p{i}".encode()) is AuthResult.OK
    assert len(auth._cache) == 2
    assert auth.verify("127.0.0.1", b"u2", b"p2") is AuthResult.OK
    assert auth.stats["cache_hits"] == 1
    assert auth.verify("127.0.0.1", b"u0", b"p0") is AuthResult.OK  # evicted: verified again
    assert auth.stats["verifications"] == 4


def test_cache_disabled_by_zero_size(make_auth) -> None:
    auth = make_auth(cache_size=0)
    for _ in range(2):
        assert auth.verify("127.0.0.1", b"alice", b"wonderland") is AuthResult.OK
    assert auth.stats["verifications"] == 2


def test_cache_holds_no_password(make_auth) -> None:
    auth = make_auth()
    auth.verify("127.0.0.1", b"alice", b"wonderland")
    for key, (stored, _expiry) in auth._cache.items():
        assert b"wonderland" not in key
        assert b"wonderland" not in stored
    assert "wonderland" not in repr(auth)


def test_rate_limited_after_failures_other_ips_unaffected(make_auth, clock: Clock) -> None:
    auth = make_auth(failures_per_minute=3)
    for _ in range(3):
        assert auth.verify("192.0.2.7", b"alice", b"guess") is AuthResult.BAD_CREDENTIALS
    verified = auth.stats["verifications"]
    assert auth.verify("192.0.2.7", b"alice", b"guess") is AuthResult.RATE_LIMITED
    # even the right password is refused while limited, and nothing is verified
    assert auth.verify("192.0.2.7", b"alice", b"wonderland") is AuthResult.RATE_LIMITED
    assert auth.verify("192.0.2.7", b"mallory", b"x") is AuthResult.RATE_LIMITED
    assert auth.stats["verifications"] == verified
    assert auth.stats["rate_limited"] == 3
    assert auth.verify("192.0.2.8", b"alice", b"wonderland") is AuthResult.OK
    clock.now += 20.0  # 3 per minute: one attempt back after 20 s
    assert auth.verify("192.0.2.7", b"alice", b"wonderland") is AuthResult.OK


def test_rate_limit_ignores_cache_while_limited(make_auth) -> None:
    # a cached success must not turn into a password oracle for a locked-out address
    auth = make_auth(failures_per_minute=2)
    assert auth.verify("192.0.2.7", b"alice", b"wonderland") is AuthResult.OK
    for _ in range(2):
        assert auth.verify("192.0.2.7", b"alice", b"guess") is AuthResult.BAD_CREDENTIALS
    assert auth.verify("192.0.2.7", b"alice", b"wonderland") is AuthResult.RATE_LIMITED


def test_successes_do_not_count_as_failures(make_auth) -> None:
    auth = make_auth(failures_per_minute=2, cache_size=0)
    for _ in range(10):
        assert auth.verify("192.0.2.7", b"alice", b"wonderland") is AuthResult.OK


def test_unknown_users_count_as_failures(make_auth) -> None:
    auth = make_auth(failures_per_minute=2)
    for _ in range(2):
        assert auth.verify("192.0.2.7", b"nobody", b"x") is AuthResult.UNKNOWN_USER
    assert auth.verify("192.0.2.7", b"alice", b"wonderland") is AuthResult.RATE_LIMITED


def test_overloaded_when_queue_is_full(make_auth) -> None:
    slow = {"alice": hash_password(b"pw", opslimit=1, memlimit=16 << 20)}
    auth = make_auth(users=slow, workers=1, queue=1, cache_size=0, failures_per_minute=0)
    # distinct addresses: identical attempts from one address would share one check
    greenlets = [gevent.spawn(auth.verify, f"127.0.0.{i}", b"alice", b"pw") for i in range(1, 7)]
    gevent.joinall(greenlets, raise_error=True)
    results = [g.value for g in greenlets]
    assert AuthResult.OVERLOADED in results
    assert results.count(AuthResult.OK) >= 2  # one running + one queued were admitted
    assert auth.stats["overloaded"] == results.count(AuthResult.OVERLOADED)
    assert auth.stats["verifications"] == results.count(AuthResult.OK)
    assert auth.stats["in_flight"] == 0
    assert auth.verify("127.0.0.1", b"alice", b"pw") is AuthResult.OK  # capacity came back


def test_identical_concurrent_attempts_share_one_check(make_auth) -> None:
    slow = {"alice": hash_password(b"pw", opslimit=1, memlimit=16 << 20)}
    auth = make_auth(users=slow, workers=1, queue=0, cache_size=0, failures_per_minute=1)
    greenlets = [gevent.spawn(auth.verify, "127.0.0.1", b"alice", b"pw") for _ in range(8)]
    gevent.joinall(greenlets, raise_error=True)
    assert [g.value for g in greenlets] == [AuthResult.OK] * 8
    assert auth.stats["verifications"] == 1
    wrong = [gevent.spawn(auth.verify, "127.0.0.1", b"alice", b"guess") for _ in range(8)]
    gevent.joinall(wrong, raise_error=True)
    assert [g.value for g in wrong] == [AuthResult.BAD_CREDENTIALS] * 8
    assert auth.stats["failures"] == 1  # one guess, one token


def test_overload_does_not_spend_failure_budget(make_auth) -> None:
    slow = {"alice": hash_password(b"pw", opslimit=1, memlimit=16 << 20)}
    auth = make_auth(users=slow, workers=1, queue=0, cache_size=0, failures_per_minute=1)
    greenlets = [gevent.spawn(auth.verify, f"10.0.0.{i}", b"alice", b"pw") for i in range(4)]
    gevent.joinall(greenlets, raise_error=True)
    assert [g.value for g in greenlets].count(AuthResult.OVERLOADED) == 3
    for i in range(1, 4):
        assert auth.verify(f"10.0.0.{i}", b"alice", b"pw") is AuthResult.OK


def test_killed_waiter_keeps_its_slot_until_the_thread_finishes(make_auth) -> None:
    slow = {"alice": hash_password(b"pw")}  # production cost: ~0.1 s
    auth = make_auth(users=slow, workers=1, queue=0, cache_size=0, failures_per_minute=0)
    first = gevent.spawn(auth.verify, "127.0.0.1", b"alice", b"pw")
    gevent.sleep(0)
    assert auth.stats["in_flight"] == 1
    first.kill()
    # the session gave up, but its argon2id run still holds memory: no new admission yet
    assert auth.verify("127.0.0.1", b"alice", b"pw") is AuthResult.OVERLOADED
    for _ in range(2000):
        if auth.stats["in_flight"] == 0:
            break
        gevent.sleep(0.005)
    assert auth.stats["in_flight"] == 0
    assert auth.verify("127.0.0.1", b"alice", b"pw") is AuthResult.OK


def test_killed_while_queued_frees_the_queue_slot(make_auth) -> None:
    slow = {"alice": hash_password(b"pw", opslimit=1, memlimit=16 << 20)}
    auth = make_auth(users=slow, workers=1, queue=2, cache_size=0, failures_per_minute=0)
    # gevent's pool takes workers + 1 tasks; the third waits for a slot in our queue
    admitted = [gevent.spawn(auth.verify, f"127.0.0.{i}", b"alice", b"pw") for i in (1, 2)]
    waiting = gevent.spawn(auth.verify, "127.0.0.3", b"alice", b"pw")
    gevent.sleep(0)
    assert auth.stats["in_flight"] == 3
    waiting.kill()
    assert auth.stats["in_flight"] == 2
    assert [g.get() for g in admitted] == [AuthResult.OK, AuthResult.OK]
    assert auth.stats["verifications"] == 2  # the killed one never reached a thread
    assert auth.stats["in_flight"] == 0


def test_hub_keeps_running_during_verification(make_auth) -> None:
    slow = {"alice": hash_password(b"pw")}  # production cost: ~0.1 s of CPU in libsodium
    auth = make_auth(users=slow, cache_size=0)
    stamps: list[float] = []
    done = False

    def ticker() -> None:
        for _ in range(10_000_000):
            if done:
                return
            stamps.append(time.perf_counter())
            gevent.sleep(0)

    tick = gevent.spawn(ticker)
    gevent.sleep(0)
    start = time.perf_counter()
    assert auth.verify("127.0.0.1", b"alice", b"pw") is AuthResult.OK
    end = time.perf_counter()
    done = True
    tick.join()
    during = [start, *(t for t in stamps if start < t < end), end]
    longest_stall = max(b - a for a, b in itertools.pairwise(during))
    # hashing on the hub would stall the ticker for (almost) the whole verification
    assert len(during) > 10
    assert longest_stall < (end - start) / 2


def test_authenticator_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Authenticator({}, queue=-1)


def test_workers_zero_means_cpu_count() -> None:
    assert Authenticator({}).workers == (os.cpu_count() or 1)


def test_result_values_are_log_words() -> None:
    assert [r.value for r in AuthResult] == [
        "ok",
        "bad-credentials",
        "unknown-user",
        "rate-limited",
        "overloaded",
    ]
    assert [r for r in AuthResult if r.ok] == [AuthResult.OK]


# --- users file ------------------------------------------------------------------------------


def write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def problems_of(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_users(path)
    return [str(p) for p in info.value.problems]


def test_load_users(tmp_path: Path, users: dict[str, bytes]) -> None:
    text = "# socksx users\n\nalice:{}\n  \nzoë:{}\r\n".format(
        users["alice"].decode(), users["zoë"].decode()
    )
    path = write(tmp_path / "users", text)
    assert load_users(path) == {"alice": users["alice"], "zoë": users["zoë"]}


def test_load_users_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent")
    assert problems_of(path) == [f"{path}: file not found"]


def test_load_users_directory(tmp_path: Path) -> None:
    assert problems_of(str(tmp_path)) == [f"{tmp_path}: is a directory"]


def test_load_users_names_every_bad_line(tmp_path: Path, users: dict[str, bytes]) -> None:
    good = users["alice"].decode()
    lines = [
        f"alice:{good}",
        "no-colon-here",
        f"alice:{good}",
        "bob:$2b$12$bcryptisnotargon2",
        "carol:$argon2id$v=19$m=65536,t=2,p=1$short",
        f":{good}",
        f"dave\x07:{good}",
        f"{'x' * 256}:{good}",
        f"émile:{good}",
    ]
    raw = "\n".join(lines).encode() + b"\n\xff\xfe:oops\n"
    path = write(tmp_path / "users", raw)
    assert problems_of(path) == [
        f"{path}: line 2: expected USERNAME:HASH",
        f"{path}: line 3: duplicate user 'alice' (first on line 1)",
        f"{path}: line 4: hash does not start with '$argon2id$' (make it with 'socksx passwd add')",
        f"{path}: line 5: malformed argon2id hash",
        f"{path}: line 6: empty username",
        f"{path}: line 7: username contains a control character",
        f"{path}: line 8: username is 256 octets long (RFC 1929 allows at most 255)",
        f"{path}: line 10: not valid UTF-8",
    ]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("alice", None),
        ("a b", None),
        ("é" * 127, None),
        ("é" * 128, "username is 256 octets long (RFC 1929 allows at most 255)"),
        ("a:b", "username contains ':'"),
        ("a\nb", "username contains a control character"),
        ("#root", "username starts with '#' (that line would be a comment)"),
        ("bad\udcff", "username is not valid UTF-8"),
    ],
)
def test_check_username(name: str, problem: str | None) -> None:
    assert check_username(name) == problem


def test_users_file_edit_preserves_comments_and_order(tmp_path: Path, users) -> None:
    a, b = users["alice"].decode(), users["bob"].decode()
    path = write(tmp_path / "users", f"# head\nalice:{a}\n\n# about bob\nbob:{b}\n# tail\n")
    os.chmod(path, 0o644)
    edited = UsersFile.read(path)
    new = fast_hash(b"new")
    assert edited.set("alice", new) is True
    assert edited.set("carol", users["zoë"]) is False
    assert edited.remove("bob") is True
    assert edited.remove("bob") is False
    before = os.stat(path)
    edited.write()
    assert Path(path).read_text() == (
        f"# head\nalice:{new.decode()}\n\n# about bob\n# tail\ncarol:{users['zoë'].decode()}\n"
    )
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(before.st_mode) & 0o770
    assert load_users(path) == {"alice": new, "carol": users["zoë"]}
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temp file left behind


def test_users_file_remove_then_set_keeps_indexes(tmp_path: Path, users) -> None:
    path = str(tmp_path / "users")
    edited = UsersFile.read(path, missing_ok=True)
    for name in ("a", "b", "c"):
        edited.set(name, users["alice"])
    assert edited.remove("a")
    edited.set("c", users["bob"])
    edited.write()
    assert load_users(path) == {"b": users["alice"], "c": users["bob"]}


def test_users_file_set_refuses_bad_input(tmp_path: Path, users) -> None:
    edited = UsersFile.read(str(tmp_path / "users"), missing_ok=True)
    with pytest.raises(ValueError, match="':'"):
        edited.set("a:b", users["alice"])
    with pytest.raises(ValueError, match="argon2id"):
        edited.set("a", b"plaintext")
    assert edited.lines == []


def test_users_file_write_failure_leaves_no_temp(tmp_path: Path, users) -> None:
    target = tmp_path / "users"
    target.mkdir()  # os.replace of a file onto a directory fails
    edited = UsersFile(str(target), [])
    edited.set("alice", users["alice"])
    with pytest.raises(OSError, match="directory"):
        edited.write()
    assert [p.name for p in tmp_path.iterdir()] == ["users"]
