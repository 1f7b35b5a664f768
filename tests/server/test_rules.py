from __future__ import annotations

import ipaddress
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socksx.server.rules import (
    COMMANDS,
    DEFAULT_DENY,
    Decision,
    Rule,
    RuleSet,
    parse_rules,
    rule_to_table,
)


def ruleset(toml_text: str) -> RuleSet:
    rules, problems = parse_rules(tomllib.loads(toml_text).get("rules", []), "test.toml")
    assert problems == []
    return RuleSet(rules)


ALLOW_10 = '[[rules]]\nid = "ten"\naction = "allow"\nfrom = ["10.0.0.0/8"]\n'
ALLOW_V6 = '[[rules]]\nid = "lo6"\naction = "allow"\nfrom = ["::1/128"]\n'
ALLOW_LO = '[[rules]]\nid = "lo"\naction = "allow"\nfrom = ["127.0.0.0/8"]\n'
ALLOW_MAPPED_RULE = '[[rules]]\nid = "m"\naction = "allow"\nfrom = ["::ffff:10.0.0.0/104"]\n'
ALLOW_ALL = '[[rules]]\nid = "all"\naction = "allow"\n'
DENY_10_THEN_ALL = '[[rules]]\nid = "no-10"\naction = "deny"\nto = ["10.0.0.0/8"]\n' + ALLOW_ALL
ALLOW_CORP = '[[rules]]\nid = "corp"\naction = "allow"\nto = ["*.corp.example"]\n'
ALLOW_STAR = '[[rules]]\nid = "star"\naction = "allow"\nto = ["*"]\n'
ALLOW_TO_10 = '[[rules]]\nid = "to-10"\naction = "allow"\nto = ["10.0.0.0/8"]\n'
CORP_THEN_DENY_10 = ALLOW_CORP + '[[rules]]\nid = "no-10"\naction = "deny"\nto = ["10.0.0.0/8"]\n'
TWO_ALLOWS = (
    '[[rules]]\nid = "a"\naction = "allow"\nto = ["*.x"]\n'
    '[[rules]]\nid = "b"\naction = "allow"\nto = ["192.0.2.0/24"]\n'
)
ADDRESS_ONLY = '[[rules]]\nid = "b"\naction = "allow"\nto = ["192.0.2.0/24"]\n'
PORTS = '[[rules]]\nid = "p"\naction = "allow"\nports = [443, "8000-8080"]\n'
COMMANDS_CONNECT = '[[rules]]\nid = "c"\naction = "allow"\ncommands = ["connect", "udp"]\n'
USERS = '[[rules]]\nid = "u"\naction = "allow"\nusers = ["alice"]\n'
DENY_ONE_THEN_NET = (
    '[[rules]]\nid = "bad-host"\naction = "deny"\nfrom = ["10.0.0.5/32"]\n' + ALLOW_10
)
NET_THEN_DENY_ONE = (
    ALLOW_10 + '[[rules]]\nid = "bad-host"\naction = "deny"\nfrom = ["10.0.0.5/32"]\n'
)
COMBINED = (
    '[[rules]]\nid = "combo"\naction = "allow"\nfrom = ["10.0.0.0/8"]\n'
    'to = ["192.0.2.0/24"]\nports = [22]\ncommands = ["connect"]\nusers = ["alice"]\n'
)
MIXED_TO = '[[rules]]\nid = "mixed"\naction = "allow"\nto = ["*.x", "192.0.2.0/24"]\n'
DENY_DOC6_THEN_ALL = (
    '[[rules]]\nid = "no-doc6"\naction = "deny"\nto = ["2001:db8::/32"]\n' + ALLOW_ALL
)
ALLOW_ANY4 = '[[rules]]\nid = "any4"\naction = "allow"\nto = ["0.0.0.0/0"]\n'
UNNAMED = '[[rules]]\naction = "deny"\nfrom = ["10.0.0.5"]\n[[rules]]\naction = "allow"\n'

C = "127.0.0.1"
# (rules, client, user, command, host, port, resolved, allowed, rule_id)
CASES = [
    pytest.param(
        ALLOW_10, "10.1.2.3", None, "connect", "192.0.2.1", 80, (), True, "ten", id="from-in"
    ),
    pytest.param(
        ALLOW_10,
        "11.0.0.1",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        False,
        "default-deny",
        id="from-out",
    ),
    pytest.param(
        ALLOW_V6, "::1", None, "connect", "192.0.2.1", 80, (), True, "lo6", id="from-v6-in"
    ),
    pytest.param(
        ALLOW_V6,
        "::2",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        False,
        "default-deny",
        id="from-v6-out",
    ),
    pytest.param(
        ALLOW_V6,
        "0.0.0.1",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        False,
        "default-deny",
        id="from-v6-vs-v4",
    ),
    pytest.param(
        ALLOW_LO,
        "::ffff:127.0.0.1",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        True,
        "lo",
        id="mapped-client",
    ),
    pytest.param(
        ALLOW_MAPPED_RULE,
        "10.9.9.9",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        True,
        "m",
        id="mapped-cidr-in-rule",
    ),
    pytest.param(
        DENY_10_THEN_ALL, C, None, "connect", "10.0.0.5", 80, (), False, "no-10", id="to-cidr-deny"
    ),
    pytest.param(
        DENY_10_THEN_ALL, C, None, "connect", "192.0.2.1", 80, (), True, "all", id="to-cidr-miss"
    ),
    pytest.param(
        DENY_10_THEN_ALL,
        C,
        None,
        "connect",
        "::ffff:10.0.0.5",
        80,
        (),
        False,
        "no-10",
        id="mapped-destination",
    ),
    pytest.param(
        ALLOW_CORP, C, None, "connect", "a.corp.example", 443, (), True, "corp", id="glob-match"
    ),
    pytest.param(
        ALLOW_CORP,
        C,
        None,
        "connect",
        "A.B.CORP.Example.",
        443,
        (),
        True,
        "corp",
        id="glob-case-dot",
    ),
    pytest.param(
        ALLOW_CORP,
        C,
        None,
        "connect",
        "corp.example",
        443,
        (),
        False,
        "default-deny",
        id="glob-needs-label",
    ),
    pytest.param(
        ALLOW_CORP,
        C,
        None,
        "connect",
        "evilcorp.example",
        443,
        (),
        False,
        "default-deny",
        id="glob-suffix-trap",
    ),
    pytest.param(
        ALLOW_CORP,
        C,
        None,
        "connect",
        "a.corp.example.evil",
        443,
        (),
        False,
        "default-deny",
        id="glob-anchored",
    ),
    pytest.param(
        ALLOW_STAR, C, None, "connect", "anything.example", 1, (), True, "star", id="star-any-name"
    ),
    pytest.param(
        ALLOW_STAR,
        C,
        None,
        "connect",
        "192.0.2.1",
        1,
        (),
        False,
        "default-deny",
        id="glob-never-matches-ip",
    ),
    pytest.param(
        ALLOW_STAR,
        C,
        None,
        "connect",
        "::1",
        1,
        (),
        False,
        "default-deny",
        id="glob-never-matches-ip6",
    ),
    pytest.param(
        ALLOW_TO_10,
        C,
        None,
        "connect",
        "intranet",
        80,
        ("10.0.0.1",),
        True,
        "to-10",
        id="cidr-judges-resolved",
    ),
    pytest.param(
        ALLOW_TO_10,
        C,
        None,
        "connect",
        "intranet",
        80,
        (),
        False,
        "default-deny",
        id="cidr-skips-name-phase",
    ),
    pytest.param(
        CORP_THEN_DENY_10,
        C,
        None,
        "connect",
        "db.corp.example",
        80,
        ("10.0.0.1",),
        False,
        "no-10",
        id="no-dns-bypass",
    ),
    pytest.param(
        CORP_THEN_DENY_10,
        C,
        None,
        "connect",
        "db.corp.example",
        80,
        ("192.0.2.1",),
        True,
        "corp",
        id="name-allow-address-nomatch",
    ),
    pytest.param(
        CORP_THEN_DENY_10,
        C,
        None,
        "connect",
        "db.corp.example",
        80,
        ("192.0.2.1", "10.0.0.1"),
        False,
        "no-10",
        id="any-address-deny",
    ),
    pytest.param(
        CORP_THEN_DENY_10,
        C,
        None,
        "connect",
        "www.other.example",
        80,
        ("192.0.2.1",),
        False,
        "default-deny",
        id="no-phase-matched",
    ),
    pytest.param(
        TWO_ALLOWS,
        C,
        None,
        "connect",
        "h.x",
        80,
        ("192.0.2.1",),
        True,
        "a",
        id="first-allow-reported",
    ),
    pytest.param(
        ADDRESS_ONLY,
        C,
        None,
        "connect",
        "h.y",
        80,
        ("192.0.2.1",),
        True,
        "b",
        id="address-phase-allow",
    ),
    pytest.param(PORTS, C, None, "connect", "192.0.2.1", 443, (), True, "p", id="port-single"),
    pytest.param(PORTS, C, None, "connect", "192.0.2.1", 8000, (), True, "p", id="port-range-low"),
    pytest.param(PORTS, C, None, "connect", "192.0.2.1", 8080, (), True, "p", id="port-range-high"),
    pytest.param(
        PORTS, C, None, "connect", "192.0.2.1", 7999, (), False, "default-deny", id="port-below"
    ),
    pytest.param(
        PORTS, C, None, "connect", "192.0.2.1", 8081, (), False, "default-deny", id="port-above"
    ),
    pytest.param(
        PORTS, C, None, "connect", "192.0.2.1", 442, (), False, "default-deny", id="port-other"
    ),
    pytest.param(
        COMMANDS_CONNECT, C, None, "connect", "192.0.2.1", 80, (), True, "c", id="command-in"
    ),
    pytest.param(
        COMMANDS_CONNECT, C, None, "udp", "192.0.2.1", 80, (), True, "c", id="command-in-2"
    ),
    pytest.param(
        COMMANDS_CONNECT,
        C,
        None,
        "bind",
        "192.0.2.1",
        80,
        (),
        False,
        "default-deny",
        id="command-out",
    ),
    pytest.param(USERS, C, "alice", "connect", "192.0.2.1", 80, (), True, "u", id="user-in"),
    pytest.param(
        USERS, C, "bob", "connect", "192.0.2.1", 80, (), False, "default-deny", id="user-out"
    ),
    pytest.param(
        USERS,
        C,
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        False,
        "default-deny",
        id="user-unauthenticated",
    ),
    pytest.param(
        ALLOW_ALL, C, None, "connect", "192.0.2.1", 80, (), True, "all", id="no-users-any-session"
    ),
    pytest.param(
        DENY_ONE_THEN_NET,
        "10.0.0.5",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        False,
        "bad-host",
        id="order-deny-first",
    ),
    pytest.param(
        DENY_ONE_THEN_NET,
        "10.0.0.6",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        True,
        "ten",
        id="order-deny-miss",
    ),
    pytest.param(
        NET_THEN_DENY_ONE,
        "10.0.0.5",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        True,
        "ten",
        id="order-allow-first",
    ),
    pytest.param(
        COMBINED,
        "10.0.0.1",
        "alice",
        "connect",
        "192.0.2.9",
        22,
        (),
        True,
        "combo",
        id="all-criteria",
    ),
    pytest.param(
        COMBINED,
        "11.0.0.1",
        "alice",
        "connect",
        "192.0.2.9",
        22,
        (),
        False,
        "default-deny",
        id="all-criteria-from",
    ),
    pytest.param(
        COMBINED,
        "10.0.0.1",
        "bob",
        "connect",
        "192.0.2.9",
        22,
        (),
        False,
        "default-deny",
        id="all-criteria-user",
    ),
    pytest.param(
        COMBINED,
        "10.0.0.1",
        "alice",
        "bind",
        "192.0.2.9",
        22,
        (),
        False,
        "default-deny",
        id="all-criteria-cmd",
    ),
    pytest.param(
        COMBINED,
        "10.0.0.1",
        "alice",
        "connect",
        "192.0.2.9",
        23,
        (),
        False,
        "default-deny",
        id="all-criteria-port",
    ),
    pytest.param(
        COMBINED,
        "10.0.0.1",
        "alice",
        "connect",
        "198.51.100.1",
        22,
        (),
        False,
        "default-deny",
        id="all-criteria-to",
    ),
    pytest.param(MIXED_TO, C, None, "connect", "h.x", 80, (), True, "mixed", id="mixed-to-name"),
    pytest.param(
        MIXED_TO, C, None, "connect", "192.0.2.7", 80, (), True, "mixed", id="mixed-to-ip"
    ),
    pytest.param(
        MIXED_TO,
        C,
        None,
        "connect",
        "h.y",
        80,
        ("192.0.2.7",),
        True,
        "mixed",
        id="mixed-to-resolved",
    ),
    pytest.param(
        MIXED_TO,
        C,
        None,
        "connect",
        "h.y",
        80,
        ("198.51.100.1",),
        False,
        "default-deny",
        id="mixed-to-miss",
    ),
    pytest.param(
        DENY_DOC6_THEN_ALL,
        C,
        None,
        "connect",
        "2001:db8::1",
        80,
        (),
        False,
        "no-doc6",
        id="v6-destination-deny",
    ),
    pytest.param(
        DENY_DOC6_THEN_ALL,
        C,
        None,
        "connect",
        "2001:db9::1",
        80,
        (),
        True,
        "all",
        id="v6-destination-miss",
    ),
    pytest.param(
        DENY_DOC6_THEN_ALL,
        C,
        None,
        "connect",
        "six.example",
        80,
        ("2001:db8::5",),
        False,
        "no-doc6",
        id="v6-resolved-deny",
    ),
    pytest.param(
        ALLOW_ANY4, C, None, "connect", "::1", 80, (), False, "default-deny", id="v4-net-not-v6"
    ),
    pytest.param(
        ALLOW_ANY4, C, None, "connect", "::ffff:192.0.2.1", 80, (), True, "any4", id="v4-net-mapped"
    ),
    pytest.param(
        UNNAMED,
        "10.0.0.5",
        None,
        "connect",
        "192.0.2.1",
        80,
        (),
        False,
        "rule#1",
        id="default-id-1",
    ),
    pytest.param(
        UNNAMED, "10.0.0.6", None, "connect", "192.0.2.1", 80, (), True, "rule#2", id="default-id-2"
    ),
    pytest.param(
        "", C, None, "connect", "192.0.2.1", 80, (), False, "default-deny", id="empty-denies"
    ),
]


@pytest.mark.parametrize(
    ("rules", "client", "user", "command", "host", "port", "resolved", "allowed", "rule_id"),
    CASES,
)
def test_decide(rules, client, user, command, host, port, resolved, allowed, rule_id) -> None:
    decision = ruleset(rules).decide(client, user, command, host, port, resolved)
    assert decision == Decision(allowed, rule_id)


def test_default_deny_constant() -> None:
    assert Decision(False, "default-deny") == DEFAULT_DENY


@pytest.mark.parametrize(
    ("client", "resolved"),
    [("not-an-ip", ()), ("127.0.0.1", ("nope",))],
)
def test_decide_rejects_non_addresses(client, resolved) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        ruleset(ALLOW_ALL).decide(client, None, "connect", "name.example", 80, resolved)


PROBLEMS = [
    ('[[rules]]\nfrom = ["10.0.0.0/8"]\n', "rules[0].action", "missing"),
    ('[[rules]]\naction = "permit"\n', "rules[0].action", "'permit'"),
    ('[[rules]]\naction = "allow"\nsrc = ["10.0.0.0/8"]\n', "rules[0].src", "unknown key"),
    ('[[rules]]\naction = "allow"\nfrom = ["10.0.0.0/33"]\n', "rules[0].from[0]", "not a network"),
    ('[[rules]]\naction = "allow"\nfrom = ["10.0.0.1/8"]\n', "rules[0].from[0]", "host bits set"),
    ('[[rules]]\naction = "allow"\nfrom = [10]\n', "rules[0].from[0]", "not a network"),
    ('[[rules]]\naction = "allow"\nfrom = "10.0.0.0/8"\n', "rules[0].from", "must be a list"),
    ('[[rules]]\naction = "allow"\nfrom = []\n', "rules[0].from", "empty list"),
    ('[[rules]]\naction = "allow"\nto = ["a b.example"]\n', "rules[0].to[0]", "neither"),
    (
        '[[rules]]\naction = "allow"\nto = ["fe80::/10", "1.2.3"]\n',
        "rules[0].to[1]",
        "not a network",
    ),
    ('[[rules]]\naction = "allow"\nports = ["2000-1000"]\n', "rules[0].ports[0]", "backwards"),
    ('[[rules]]\naction = "allow"\nports = [65536]\n', "rules[0].ports[0]", "0..65535"),
    ('[[rules]]\naction = "allow"\nports = ["1-70000"]\n', "rules[0].ports[0]", "0..65535"),
    ('[[rules]]\naction = "allow"\nports = ["http"]\n', "rules[0].ports[0]", "not a port"),
    ('[[rules]]\naction = "allow"\nports = [true]\n', "rules[0].ports[0]", "not a port"),
    (
        '[[rules]]\naction = "allow"\ncommands = ["connect", "ftp"]\n',
        "rules[0].commands[1]",
        "not a command",
    ),
    ('[[rules]]\naction = "allow"\nusers = [""]\n', "rules[0].users[0]", "not a user name"),
    ('[[rules]]\naction = "allow"\nid = ""\n', "rules[0].id", "non-empty"),
    ('[[rules]]\naction = "allow"\nid = "default-deny"\n', "rules[0].id", "reserved"),
    (
        '[[rules]]\naction = "allow"\nid = "x"\n[[rules]]\naction = "deny"\nid = "x"\n',
        "rules[1].id",
        "duplicate id 'x' (also rules[0])",
    ),
    ("rules = [1]\n", "rules[0]", "must be a table"),
    ("rules = 1\n", "rules", "array of tables"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), PROBLEMS)
def test_parse_problems(text, key, fragment) -> None:
    rules, problems = parse_rules(tomllib.loads(text)["rules"], "f.toml")
    assert [(p.file, p.key) for p in problems] == [("f.toml", key)]
    assert fragment in problems[0].problem
    assert len(rules) == (1 if key == "rules[1].id" else 0)


def test_only_valid_rules_are_returned() -> None:
    text = '[[rules]]\nid = "good"\naction = "allow"\n[[rules]]\nid = "bad"\naction = "?"\n'
    rules, problems = parse_rules(tomllib.loads(text)["rules"], "f.toml")
    assert [r.id for r in rules] == ["good"]
    assert [p.key for p in problems] == ["rules[1].action"]


def test_every_problem_of_a_rule_is_reported() -> None:
    text = (
        '[[rules]]\naction = "x"\nfrom = ["nope"]\nto = ["10.0.0.1/8"]\nports = [99999]\n'
        'commands = ["ftp"]\nusers = [""]\nextra = 1\n'
    )
    _, problems = parse_rules(tomllib.loads(text)["rules"], "f.toml")
    assert sorted(p.key for p in problems) == sorted(
        [
            "rules[0].action",
            "rules[0].from[0]",
            "rules[0].to[0]",
            "rules[0].ports[0]",
            "rules[0].commands[0]",
            "rules[0].users[0]",
            "rules[0].extra",
        ]
    )


def test_parse_normalises() -> None:
    text = (
        '[[rules]]\naction = "allow"\nfrom = ["10.0.0.5", "::ffff:192.168.0.0/112"]\n'
        'to = ["WWW.Example.COM.", "2001:db8::/32", "*"]\nports = ["80", "1000-2000", 0]\n'
        'commands = ["udp", "connect"]\nusers = ["alice", "bob"]\n'
    )
    (rule,), problems = parse_rules(tomllib.loads(text)["rules"], "f.toml")
    assert problems == []
    assert rule == Rule(
        id="rule#1",
        action="allow",
        sources=(ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("192.168.0.0/16")),
        dst_nets=(ipaddress.ip_network("2001:db8::/32"),),
        dst_globs=("www.example.com", "*"),
        ports=((80, 80), (1000, 2000), (0, 0)),
        commands=frozenset({"udp", "connect"}),
        users=frozenset({"alice", "bob"}),
    )
    again, problems = parse_rules([rule_to_table(rule)], "f.toml")
    assert problems == []
    assert again == (rule,)


def test_command_names_cover_every_extension() -> None:
    assert COMMANDS == ("connect", "bind", "udp", "join", "leave", "tunnel", "multibind", "accept")


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
hosts = st.one_of(ips, st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True))
requests = st.tuples(
    ips,
    st.none() | st.text(min_size=1, max_size=10),
    st.sampled_from(COMMANDS),
    hosts,
    st.integers(0, 65535),
    st.lists(ips, max_size=4),
)


@given(requests)
def test_allow_rule_without_criteria_allows_everything(request_args) -> None:
    rules = RuleSet([Rule(id="everything", action="allow")])
    assert rules.decide(*request_args) == Decision(True, "everything")


@given(requests)
def test_no_rules_denies_everything(request_args) -> None:
    assert RuleSet([]).decide(*request_args) == DEFAULT_DENY


@given(requests)
def test_deny_rule_without_criteria_denies_everything(request_args) -> None:
    rules = RuleSet([Rule(id="nothing", action="deny"), Rule(id="everything", action="allow")])
    assert rules.decide(*request_args) == Decision(False, "nothing")
