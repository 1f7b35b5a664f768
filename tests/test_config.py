from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from socksx import config as cfgmod
from socksx.cli import cli
from socksx.cli._exit import ExitCode
from socksx.config import (
    EMBEDDED_SOURCE,
    KNOWN_KEYS,
    SECTIONS,
    TOP_LEVEL,
    Config,
    Limits,
    LogConfig,
    Timeouts,
    load,
    loads,
    to_dict,
    to_toml,
    with_overrides,
)
from socksx.errors import ConfigError
from socksx.server.rules import Decision, Rule, RuleSet

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conf" / "socksx.toml"
MANPAGE = ROOT / "man" / "socksx.toml.5"
UNIT = ROOT / "conf" / "socksx.service"


def problems_of(text: str, source: str = "t.toml", base_dir: str = ".") -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        loads(text, source, base_dir)
    assert all(p.file == source for p in info.value.problems)
    return [(p.key, p.problem) for p in info.value.problems]


def one_problem(text: str) -> tuple[str, str]:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------- loading


def test_embedded_default() -> None:
    cfg = load(None)
    assert cfg.source == EMBEDDED_SOURCE
    assert cfg.listen == (("127.0.0.1", 1080),)
    assert cfg.auth == "none"
    assert cfg.users_file is None
    assert cfg.timeouts == Timeouts()
    assert cfg.limits == Limits()
    assert cfg.log == LogConfig()
    assert [r.id for r in cfg.rules] == ["loopback-clients"]
    rules = RuleSet(cfg.rules)
    assert rules.decide("127.0.0.1", None, "connect", "192.0.2.1", 80) == Decision(
        True, "loopback-clients"
    )
    assert rules.decide("::1", None, "udp", "name.example", 53) == Decision(
        True, "loopback-clients"
    )
    assert rules.decide("192.0.2.7", None, "connect", "192.0.2.1", 80) == Decision(
        False, "default-deny"
    )


def test_sample_equals_embedded_default() -> None:
    sample = load(str(SAMPLE))
    assert sample.source == str(SAMPLE)
    assert dataclasses.replace(sample, source=EMBEDDED_SOURCE) == load(None)


def test_sample_sets_every_key_to_its_documented_default() -> None:
    data = tomllib.loads(SAMPLE.read_text())
    for name, key in TOP_LEVEL.keys.items():
        assert data[name] == key.default, name
    for section in SECTIONS:
        assert set(data[section.name]) == set(section.keys), section.name
        for name, key in section.keys.items():
            assert data[section.name][name] == key.default, f"{section.name}.{name}"


def test_schema_defaults_match_dataclass_defaults() -> None:
    for section in SECTIONS:
        instance = section.cls()
        for name, key in section.keys.items():
            expected = key.check(key.default)
            if name == "enabled" and expected == "auto":
                expected = True  # resolved at load: the default workers = 1 turns it on
            assert getattr(instance, name) == expected, f"{section.name}.{name}"


def test_every_problem_reported_at_once() -> None:
    text = """
listen = ["127.0.0.1:99999", "[::1]:1080", "nohost:1"]
auth = "kerberos"
socks4 = "yes"
workers = 0
colour = "blue"
[timeouts]
idle = 0
connect = "10s"
[limits]
max_sessions = 0
auth_queue = -1
[log]
format = "xml"
levle = "info"
[[rules]]
action = "allow"
from = ["10.0.0.1/8"]
ports = ["10-5"]
"""
    keys = [key for key, _ in problems_of(text)]
    assert sorted(keys) == sorted(
        [
            "listen[0]",
            "listen[2]",
            "auth",
            "socks4",
            "workers",
            "colour",
            "timeouts.idle",
            "timeouts.connect",
            "limits.max_sessions",
            "limits.auth_queue",
            "log.format",
            "log.levle",
            "rules[0].from[0]",
            "rules[0].ports[0]",
        ]
    )


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('listen = "127.0.0.1:1080"', "listen", "must be a list"),
        ("listen = []", "listen", "at least one"),
        ('listen = ["127.0.0.1"]', "listen[0]", "not HOST:PORT"),
        ('listen = ["::1:1080"]', "listen[0]", "not HOST:PORT"),
        ('listen = ["[127.0.0.1]:1080"]', "listen[0]", "brackets are for IPv6"),
        ('listen = ["localhost:1080"]', "listen[0]", "not an IP address"),
        ("listen = [1080]", "listen[0]", "must be a string"),
        ('auth = "pam"', "auth", "'pam' is not one of 'none', 'userpass'"),
        ("auth = 1", "auth", "is not one of"),
        ("users_file = 5", "users_file", "must be a string"),
        ("socks4 = 1", "socks4", "must be true or false, not integer 1"),
        ('outward_address = "example.com"', "outward_address", "not an IP address"),
        ('udp_public_address = "1.2.3.256"', "udp_public_address", "not an IP address"),
        ('udp_inbound = "all"', "udp_inbound", "is not one of"),
        ("user = 0", "user", "must be a string"),
        ("group = false", "group", "must be a string"),
        ("workers = 0", "workers", '"auto"'),
        ("workers = true", "workers", '"auto"'),
        ('workers = "many"', "workers", '"auto"'),
        ("[timeouts]\nhandshake = -1", "timeouts.handshake", "> 0"),
        ("[timeouts]\nidle = nan", "timeouts.idle", "finite"),
        ("[timeouts]\nbind = inf", "timeouts.bind", "finite"),
        ("[timeouts]\nudp_idle = true", "timeouts.udp_idle", "number of seconds"),
        ('[timeouts]\nshutdown_grace = "10"', "timeouts.shutdown_grace", "number of seconds"),
        ("[limits]\nmax_sessions = 0", "limits.max_sessions", "below the minimum 1"),
        ("[limits]\nmax_sessions_per_client = -1", "limits.max_sessions_per_client", "minimum 0"),
        ("[limits]\nauth_workers = 1.5", "limits.auth_workers", "must be an integer"),
        (
            "[limits]\nauth_failures_per_minute = false",
            "limits.auth_failures_per_minute",
            "integer",
        ),
        ('[log]\ntarget = "file"', "log.target", "is not one of"),
        ('[log]\nlevel = "trace"', "log.level", "is not one of"),
        ('[log]\nsyslog_address = ""', "log.syslog_address", "must not be empty"),
        ('[log]\nsyslog_address = "loghost"', "log.syslog_address", "not HOST:PORT"),
        ("bogus = 1", "bogus", "unknown key"),
        ("[nosuch]\nkey = 1", "nosuch", "unknown section"),
        ("[timeouts]\nread = 1", "timeouts.read", "unknown key"),
        ("timeouts = 5", "timeouts", "must be a table"),
        ('[[rules]]\naction = "allow"\nhost = "x"', "rules[0].host", "unknown key"),
        ('[[rules]]\naction = "allow"\nto = ["10.1.0.0/8"]', "rules[0].to[0]", "host bits set"),
        (
            '[[rules]]\naction = "allow"\nfrom = ["10.0.0.0/40"]',
            "rules[0].from[0]",
            "not a network",
        ),
        ('[[rules]]\naction = "allow"\nports = ["443-80"]', "rules[0].ports[0]", "backwards"),
        ("[rules]\naction = 1", "rules", "array of tables"),
        ('auth = "userpass"', "users_file", 'required when auth = "userpass"'),
    ],
)
def test_single_problem(text: str, key: str, fragment: str) -> None:
    got_key, problem = one_problem(text)
    assert got_key == key
    assert fragment in problem


def test_valid_values_are_normalised() -> None:
    cfg = loads(
        'listen = ["[::1]:0", "0.0.0.0:1080", "[::ffff:127.0.0.1]:5"]\n'
        'outward_address = "2001:DB8::1"\nworkers = "auto"\nuser = "nobody"\n'
        "[timeouts]\nidle = 5\n",
        "t.toml",
    )
    assert cfg.listen == (("::1", 0), ("0.0.0.0", 1080), ("::ffff:7f00:1", 5))
    assert cfg.outward_address == "2001:db8::1"
    assert cfg.workers is None
    assert cfg.user == "nobody"
    assert cfg.group is None
    assert cfg.timeouts.idle == 5.0
    assert isinstance(cfg.timeouts.idle, float)
    assert cfg.rules == ()


def test_users_file_relative_to_config_dir(tmp_path: Path) -> None:
    (tmp_path / "users").write_text("")
    conf = tmp_path / "socksx.toml"
    conf.write_text('auth = "userpass"\nusers_file = "users"\n')
    assert load(str(conf)).users_file == str(tmp_path / "users")


def test_users_file_missing(tmp_path: Path) -> None:
    conf = tmp_path / "socksx.toml"
    conf.write_text('auth = "userpass"\nusers_file = "sub/users"\n')
    with pytest.raises(ConfigError) as info:
        load(str(conf))
    (problem,) = info.value.problems
    assert str(problem) == f"{conf}: users_file: file not found: {tmp_path / 'sub' / 'users'}"


def test_users_file_is_a_directory(tmp_path: Path) -> None:
    key, problem = one_problem(f'users_file = "{tmp_path}"')
    assert key == "users_file"
    assert problem.startswith("not a regular file")


def test_toml_syntax_error_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        loads('listen = ["127.0.0.1:1080"]\nauth = \n', "bad.toml")
    (problem,) = info.value.problems
    assert problem.file == "bad.toml"
    assert "invalid TOML" in problem.problem
    assert "line 2" in problem.problem
    assert "\n" not in str(problem)


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load("/nonexistent/socksx.toml")
    assert [str(p) for p in info.value.problems] == ["/nonexistent/socksx.toml: file not found"]


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load(str(tmp_path))
    binary = tmp_path / "b.toml"
    binary.write_bytes(b'auth = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(str(binary))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    conf = tmp_path / "socksx.toml"
    conf.write_text("")
    conf.chmod(0)
    with pytest.raises(ConfigError, match="cannot read: permission denied"):
        load(str(conf))


# --------------------------------------------------------------------------- overrides


def test_overrides_replace_and_revalidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "users").write_text("")
    base = load(None)
    cfg = with_overrides(
        base,
        listen=["127.0.0.1:0", ("::1", 0)],
        auth="userpass",
        users_file="users",
        timeouts={"idle": 2},
        limits=Limits(max_sessions=3),
        workers=None,
    )
    assert cfg.source == base.source
    assert cfg.listen == (("127.0.0.1", 0), ("::1", 0))
    assert cfg.auth == "userpass"
    assert cfg.users_file == str(tmp_path / "users")
    assert cfg.timeouts == dataclasses.replace(Timeouts(), idle=2.0)
    assert cfg.limits.max_sessions == 3
    assert cfg.workers is None
    assert cfg.rules == base.rules


def test_overrides_rules() -> None:
    cfg = with_overrides(
        load(None), rules=[{"action": "deny", "to": ["*"]}, Rule(id="all", action="allow")]
    )
    assert [r.id for r in cfg.rules] == ["rule#1", "all"]


def test_override_problems_name_the_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        with_overrides(load(None), auth="userpass", listen=["nope"])
    assert [str(p) for p in info.value.problems] == [
        "command line: listen[0]: 'nope' is not HOST:PORT (IPv6 as [addr]:port)",
        'command line: users_file: required when auth = "userpass"',
    ]


def test_override_unknown_name_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        with_overrides(load(None), colour="blue")


# --------------------------------------------------------------------------- writing back


RICH = """
listen = ["0.0.0.0:1080", "[::]:1081"]
auth = "userpass"
users_file = "{users}"
socks4 = false
outward_address = "192.0.2.10"
udp_public_address = "2001:db8::10"
udp_inbound = "any"
user = "nobody"
group = "nogroup"
workers = "auto"
[timeouts]
handshake = 1.5
connect = 2
idle = 1e-3
[limits]
max_sessions = 5
max_sessions_per_client = 0
[log]
format = "json"
target = "syslog"
level = "debug"
syslog_address = "127.0.0.1:514"
[[rules]]
action = "deny"
to = ["10.0.0.0/8", "*.Evil.Example."]
[[rules]]
id = "quote\\"back\\\\slash\\ttab\\u007f"
action = "allow"
from = ["192.0.2.0/24", "::ffff:198.51.100.0/120"]
to = ["2001:db8::/32", "*"]
ports = [22, "8000-8080", "443"]
commands = ["udp", "connect", "accept"]
users = ["bob", "älice", "x\\u0001y"]
"""


@pytest.mark.parametrize("text", [cfgmod.DEFAULT_TOML, RICH], ids=["default", "rich"])
def test_to_toml_round_trip(text: str) -> None:
    cfg = loads(text.replace("{users}", __file__), "t.toml")
    assert cfg.users_file == (__file__ if "{users}" in text else None)
    assert loads(to_toml(cfg), "t.toml") == cfg
    assert json.loads(json.dumps(to_dict(cfg))) == tomllib.loads(to_toml(cfg))


@given(st.text(min_size=1, max_size=20))
def test_any_user_name_round_trips(name: str) -> None:
    rule = {"action": "allow", "users": [name], "id": f"r{name}"}
    cfg = with_overrides(load(None), rules=[rule])
    again = loads(to_toml(cfg), cfg.source)
    assert again == cfg
    assert again.rules[0].users == frozenset({name})


# --------------------------------------------------------------------------- docs


def test_extensions_follow_the_worker_count_unless_set() -> None:
    one = load(None)
    assert (one.mcast.enabled, one.tunnel.enabled, one.multibind.enabled) == (True,) * 3
    several = with_overrides(one, workers=2)
    assert (several.mcast.enabled, several.tunnel.enabled, several.multibind.enabled) == (
        False,
    ) * 3
    assert with_overrides(several, workers=1).mcast.enabled is True  # "auto" survives
    assert loads(to_toml(several), EMBEDDED_SOURCE) == several
    with pytest.raises(ConfigError, match="several workers cannot serve mcast"):
        loads("workers = 2\n[mcast]\nenabled = true\n", "x.toml")


def test_known_keys_cover_the_schema() -> None:
    fields = {f.name for f in dataclasses.fields(Config)} - {"source", "rules", "auto_enabled"}
    sections = {s.name for s in SECTIONS}
    top = {k for k in KNOWN_KEYS if "." not in k}
    assert top == fields - sections
    for section in SECTIONS:
        names = {f.name for f in dataclasses.fields(section.cls)}
        assert {k.split(".", 1)[1] for k in KNOWN_KEYS if k.startswith(section.name + ".")} == names
    assert {k for k in KNOWN_KEYS if k.startswith("rules.")} == {
        "rules.id",
        "rules.action",
        "rules.from",
        "rules.to",
        "rules.ports",
        "rules.commands",
        "rules.users",
    }


def _man_entries() -> dict[str, str]:
    """Key -> the text of its .TP entry in the man page."""
    entries: dict[str, str] = {}
    current = None
    for line in MANPAGE.read_text().splitlines():
        if line.startswith((".TP", ".SH", ".SS")):
            current = None
            continue
        match = re.fullmatch(r"\.B (\S+)", line)
        if match and current is None and match.group(1) in KNOWN_KEYS:
            current = match.group(1)
            entries[current] = ""
            continue
        if current is not None:
            entries[current] += line + "\n"
    return entries


def test_every_key_documented_in_man_page_with_default() -> None:
    entries = _man_entries()
    assert set(entries) == set(KNOWN_KEYS)
    defaults = {
        **TOP_LEVEL.keys,
        **{f"{s.name}.{k}": v for s in SECTIONS for k, v in s.keys.items()},
    }
    for name, key in defaults.items():
        literal = cfgmod._toml_value(key.default)
        assert f"Default: {literal}." in entries[name], name
        assert "Type: " in entries[name], name
    for name in KNOWN_KEYS:
        assert entries[name].count("Default:") + entries[name].count("No default") == 1, name


def test_every_key_in_sample() -> None:
    text = SAMPLE.read_text()
    data = tomllib.loads(text)
    for name in KNOWN_KEYS:
        section, _, key = name.rpartition(".")
        if section == "rules":
            assert re.search(rf"^#?\s*{key}\s*=", text, re.MULTILINE), name
        elif section:
            assert key in data[section], name
        else:
            assert key in data, name


def test_man_page_embedded_default_is_current() -> None:
    man = MANPAGE.read_text()
    block = man.split(".SH EMBEDDED DEFAULT", 1)[1].split(".EX\n", 1)[1].split(".EE", 1)[0]
    assert loads(block, EMBEDDED_SOURCE) == load(None)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_man_page_renders_without_warnings() -> None:
    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(MANPAGE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stderr == ""


def test_systemd_unit_sandboxing() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["ExecStart"] == "/usr/local/bin/socksx server -c /etc/socksx/socksx.toml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["DynamicUser"] == "yes" or service.get("User") == "socksx"
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "LimitNOFILE": "65536",
    }.items():
        assert service[key] == value, key


# --------------------------------------------------------------------------- CLI


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_check_sample() -> None:
    code, out, err = run("config", "check", str(SAMPLE))
    assert code == ExitCode.OK, err
    assert out == ""
    assert err == f"{SAMPLE}: ok (1 listen addresses, 1 rules)\n"


def test_cli_check_bad_file_prints_every_problem(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(
        'auth = "x"\n[timeouts]\nidle = -1\n[[rules]]\naction = "allow"\nto = ["a b"]\n'
    )
    code, out, err = run("config", "check", str(conf))
    assert code == ExitCode.FAILURE
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0] == f"socksx: {conf}: auth: 'x' is not one of 'none', 'userpass'"
    assert lines[1].startswith(f"socksx: {conf}: timeouts.idle: ")
    assert lines[2].startswith(f"socksx: {conf}: rules[0].to[0]: ")


def test_cli_check_missing_file() -> None:
    code, out, err = run("config", "check", "/nonexistent/x.toml")
    assert code == ExitCode.FAILURE
    assert (out, err) == ("", "socksx: /nonexistent/x.toml: file not found\n")


def test_cli_show_default() -> None:
    code, out, err = run("config", "show")
    assert code == ExitCode.OK, err
    assert out == to_toml(load(None))
    assert loads(out, EMBEDDED_SOURCE) == load(None)


def test_cli_show_file_json() -> None:
    code, out, _ = run("config", "show", "-c", str(SAMPLE), "--json")
    assert code == ExitCode.OK
    data = json.loads(out)
    assert data == to_dict(load(str(SAMPLE)))
    assert data["rules"][0]["from"] == ["127.0.0.0/8", "::1/128"]
    assert ipaddress.ip_network(data["rules"][0]["from"][1]).version == 6


def test_cli_show_bad_file(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("[limits]\nmax_sessions = 0\nauth_queue = -2\n")
    code, out, err = run("config", "show", "-c", str(conf))
    assert code == ExitCode.CONFIG
    assert out == ""
    assert len(err.splitlines()) == 2


def test_cli_process_exit_code() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "socksx", "config", "check", "/nonexistent/x.toml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert result.returncode == ExitCode.FAILURE
    assert result.stderr == "socksx: /nonexistent/x.toml: file not found\n"
