"""The users file: who may log in with RFC 1929 username/password, as argon2id hashes.

Format (UTF-8 text, ``\\n`` line ends; a ``\\r`` before it is tolerated on reading)::

    # comment lines start with '#' in the first column; blank lines are ignored
    alice:$argon2id$v=19$m=65536,t=2,p=1$<salt>$<hash>
    bob:$argon2id$v=19$m=65536,t=2,p=1$<salt>$<hash>

* One user per line, ``USERNAME:HASH``; the line is split at its first ``:``.
* USERNAME: 1 to 255 octets of UTF-8 (RFC 1929's UNAME limit), no ``:``, no control
  characters (U+0000-U+001F, U+007F), and not starting with ``#``.
* HASH: the string pynacl's ``nacl.pwhash.argon2id.str()`` produces (libsodium's PHC-style
  encoding, ASCII, starting with ``$argon2id$``); it carries its own cost parameters, so
  files written with different costs verify fine. ``socksx passwd add`` writes them.
* A username may appear only once.

Loading reports every bad line at once as a ``ConfigError`` whose problems name the line
(``users.txt: line 3: ...``); a missing file is the single problem ``file not found``.
Rewrites (``UsersFile.write``) are atomic: a temporary file in the same directory, mode 0600,
fsync, then ``os.replace``, so a reader (the server on SIGHUP) sees the old or the new file,
never half of one. Comments, blank lines and the order of the other users are preserved.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile

from socksx.errors import ConfigError, ConfigProblem

__all__ = ["HASH_PREFIX", "UsersFile", "check_username", "load_users"]

HASH_PREFIX = "$argon2id$"

#: libsodium's argon2id string: $argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>
#: (unpadded base64 pieces). Checked at load so a typo is a config error, not a failed login.
_HASH_RE = re.compile(
    r"\$argon2id\$v=19\$m=[0-9]{1,10},t=[0-9]{1,10},p=[0-9]{1,3}"
    r"\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{16,}"
)

#: RFC 1929: ULEN is one octet, so a longer name could never be sent.
MAX_USERNAME_OCTETS = 255

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_username(username: str) -> str | None:
    """Why ``username`` cannot be in a users file, or None when it can."""
    size = len(username.encode("utf-8", "surrogatepass"))
    if size == 0:
        return "empty username"
    if size > MAX_USERNAME_OCTETS:
        return f"username is {size} octets long (RFC 1929 allows at most {MAX_USERNAME_OCTETS})"
    if ":" in username:
        return "username contains ':'"
    if _CONTROL_RE.search(username):
        return "username contains a control character"
    if username.startswith("#"):
        return "username starts with '#' (that line would be a comment)"
    try:
        username.encode("utf-8")
    except UnicodeEncodeError:
        return "username is not valid UTF-8"
    return None


def _check_hash(text: str) -> str | None:
    if not text.startswith(HASH_PREFIX):
        return f"hash does not start with {HASH_PREFIX!r} (make it with 'socksx passwd add')"
    if not _HASH_RE.fullmatch(text):
        return "malformed argon2id hash"
    return None


class UsersFile:
    """A users file as lines, so edits keep comments and order; ``users`` is the parsed map."""

    def __init__(self, path: str, lines: list[str]) -> None:
        """Parse ``lines`` (without line ends) read from ``path``.

        Raises:
            ConfigError: one problem per bad line.
        """
        self.path = path
        self.lines = lines
        self.users: dict[str, bytes] = {}
        self._line_of: dict[str, int] = {}  # username -> index into lines
        problems: list[ConfigProblem] = []
        for index, line in enumerate(lines):
            problem = self._parse_line(index, line)
            if problem:
                problems.append(ConfigProblem(path, f"line {index + 1}", problem))
        if problems:
            raise ConfigError(problems)

    def _parse_line(self, index: int, line: str) -> str | None:
        if not line.strip() or line.startswith("#"):
            return None
        username, sep, stored = line.partition(":")
        if not sep:
            return "expected USERNAME:HASH"
        problem = check_username(username) or _check_hash(stored)
        if problem:
            return problem
        if username in self.users:
            return f"duplicate user {username!r} (first on line {self._line_of[username] + 1})"
        self.users[username] = stored.encode("ascii")
        self._line_of[username] = index
        return None

    @classmethod
    def read(cls, path: str, *, missing_ok: bool = False) -> UsersFile:
        """Read and check a users file; with ``missing_ok`` a missing file reads as empty.

        Raises:
            ConfigError: the file is missing (unless ``missing_ok``), unreadable, or has bad lines.
        """
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            if missing_ok:
                return cls(path, [])
            raise ConfigError([ConfigProblem(path, "", "file not found")]) from None
        except OSError as exc:
            problem = exc.strerror or str(exc)
            raise ConfigError([ConfigProblem(path, "", problem.lower())]) from None
        lines: list[str] = []
        problems: list[ConfigProblem] = []
        chunks = data.split(b"\n")
        if chunks and chunks[-1] == b"":
            chunks.pop()  # the final newline ends the last line, it does not start a new one
        for number, raw in enumerate(chunks, start=1):
            try:
                lines.append(raw.removesuffix(b"\r").decode("utf-8"))
            except UnicodeDecodeError:
                problems.append(ConfigProblem(path, f"line {number}", "not valid UTF-8"))
                lines.append("")
        try:
            users_file = cls(path, lines)
        except ConfigError as exc:
            problems.extend(exc.problems)
            problems.sort(key=lambda p: int(p.key.split()[1]))
        if problems:
            raise ConfigError(problems)
        return users_file

    def set(self, username: str, stored: bytes) -> bool:
        """Add or replace a user's hash; True if the user existed.

        Raises:
            ValueError: the username or hash could not be written back and read again.
        """
        problem = check_username(username) or _check_hash(stored.decode("ascii", "replace"))
        if problem:
            raise ValueError(problem)
        line = f"{username}:{stored.decode('ascii')}"
        index = self._line_of.get(username)
        if index is None:
            self._line_of[username] = len(self.lines)
            self.lines.append(line)
        else:
            self.lines[index] = line
        existed = username in self.users
        self.users[username] = stored
        return existed

    def remove(self, username: str) -> bool:
        """Delete a user's line; False if there was no such user."""
        index = self._line_of.pop(username, None)
        if index is None:
            return False
        del self.lines[index]
        del self.users[username]
        for name, at in self._line_of.items():
            if at > index:
                self._line_of[name] = at - 1
        return True

    def write(self) -> None:
        """Replace the file atomically with the current lines.

        A new file is mode 0600; an existing file keeps its mode (without any bits for
        "other"), owner and group, so a root:socksx 0640 file stays readable by the server.

        Raises:
            OSError: the directory is not writable, the disk is full, ...
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            before = os.stat(self.path)
        except FileNotFoundError:
            before = None
        data = "".join(line + "\n" for line in self.lines).encode("utf-8")
        # mkstemp creates the file 0600 already; fchmod makes it explicit against odd umasks
        fd, temp = tempfile.mkstemp(
            dir=directory, prefix="." + os.path.basename(self.path) + ".", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "wb") as file:
                if before is None:
                    os.fchmod(file.fileno(), 0o600)
                else:
                    os.fchmod(file.fileno(), stat.S_IMODE(before.st_mode) & 0o770)
                    with contextlib.suppress(PermissionError):
                        os.fchown(file.fileno(), before.st_uid, before.st_gid)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        # make the rename itself durable; not every filesystem lets a directory be fsync'ed
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def load_users(path: str) -> dict[str, bytes]:
    """Username -> stored argon2id hash (ASCII bytes) from the users file at ``path``.

    Raises:
        ConfigError: the file is missing or unreadable, or lines are bad (all of them listed).
    """
    return UsersFile.read(path).users
