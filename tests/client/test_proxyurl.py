from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socksx.client.proxyurl import ProxyURL, parse_proxy_url, proxy_from_env

P = ProxyURL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socks5://127.0.0.1:1080", P("socks5", "127.0.0.1", 1080, remote_dns=False)),
        ("socks5h://127.0.0.1:9050", P("socks5h", "127.0.0.1", 9050)),
        ("socks4://10.0.0.1:1081", P("socks4", "10.0.0.1", 1081, remote_dns=False, version=4)),
        ("socks4a://proxy.example", P("socks4a", "proxy.example", 1080, version=4)),
        ("socks5s://gw.example:443", P("socks5s", "gw.example", 443, tls=True)),
        ("SOCKS5H://GW.Example:1", P("socks5h", "gw.example", 1)),
        ("127.0.0.1:1080", P("socks5h", "127.0.0.1", 1080)),
        ("localhost", P("socks5h", "localhost", 1080)),
        ("[::1]:1080", P("socks5h", "::1", 1080)),
        ("[::1]", P("socks5h", "::1", 1080)),
        ("socks5://[2001:DB8::1]:65535", P("socks5", "2001:db8::1", 65535, remote_dns=False)),
        ("socks5h://proxy:1080/", P("socks5h", "proxy", 1080)),
        ("  socks5h://proxy  ", P("socks5h", "proxy", 1080)),
        ("socks5h://bob:pw@proxy:1080", P("socks5h", "proxy", 1080, "bob", "pw")),
        ("socks5h://bob@proxy", P("socks5h", "proxy", 1080, "bob", None)),
        ("socks5h://bob:@proxy", P("socks5h", "proxy", 1080, "bob", "")),
        ("socks5h://b%40b:p%3Aw%2F%20x@proxy", P("socks5h", "proxy", 1080, "b@b", "p:w/ x")),
        ("socks5h://bob:p@ss@proxy", P("socks5h", "proxy", 1080, "bob", "p@ss")),
        ("socks5h://%C3%A9:%E2%82%AC@[::1]:2", P("socks5h", "::1", 2, "é", "€")),
        ("socks4://userid@1.2.3.4", P("socks4", "1.2.3.4", 1080, "userid", remote_dns=False,
                                      version=4)),
    ],
)
def test_parse(text, expected):
    assert parse_proxy_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("http://proxy:3128", "unsupported proxy scheme 'http://'"),
        ("socks6://proxy", "unsupported proxy scheme"),
        ("socks5://", "has no host"),
        ("socks5://:1080", "has no host"),
        ("socks5://user:pw@:1080", "has no host"),
        ("socks5://proxy:0", "port must be a number"),
        ("socks5://proxy:65536", "port must be a number"),
        ("socks5://proxy:http", "port must be a number"),
        ("socks5://proxy:-1", "port must be a number"),
        ("::1", "write IPv6 addresses as"),
        ("socks5://::1:1080", "write IPv6 addresses as"),
        ("socks5://[::1", "IPv6"),
        ("socks5://[zz::1]:1", "is not an IPv6 address"),
        ("socks5://[127.0.0.1]:1", "is not an IPv6 address"),
        ("socks5://proxy:1080/path", "path, query or fragment"),
        ("socks5://proxy:1080?x=1", "path, query or fragment"),
        ("socks5://proxy:1080#frag", "path, query or fragment"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_proxy_url(text)


def test_error_messages_hide_the_password():
    with pytest.raises(ValueError, match="port") as info:
        parse_proxy_url("socks5://bob:hunter2@proxy:99999")
    assert "hunter2" not in str(info.value)
    assert "bob:***@" in str(info.value)


def test_password_not_in_repr_or_str():
    url = parse_proxy_url("socks5h://bob:hunter2@proxy:1080")
    assert "hunter2" not in repr(url)
    assert "hunter2" not in str(url)
    assert str(url) == "socks5h://bob@proxy:1080"


def test_properties():
    url = parse_proxy_url("socks5://[::1]:1081")
    assert url.address == ("::1", 1081)
    assert url.hostport == "[::1]:1081"
    assert str(url) == "socks5://[::1]:1081"
    assert parse_proxy_url("gw").hostport == "gw:1080"


def test_frozen():
    url = parse_proxy_url("gw")
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.port = 1  # type: ignore[misc]


@given(
    scheme=st.sampled_from(["socks5", "socks5h", "socks4", "socks4a", "socks5s"]),
    user=st.text(min_size=1, max_size=20),
    password=st.text(max_size=20),
    port=st.integers(1, 65535),
)
def test_percent_encoded_credentials_roundtrip(scheme, user, password, port):
    from urllib.parse import quote

    text = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@gw:{port}"
    url = parse_proxy_url(text)
    assert (url.username, url.password, url.port, url.scheme) == (user, password, port, scheme)


# -- environment -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"SOCKS_PROXY": "127.0.0.1:1080"}, P("socks5h", "127.0.0.1", 1080)),
        ({"socks_proxy": "socks5://gw:1"}, P("socks5", "gw", 1, remote_dns=False)),
        ({"ALL_PROXY": "socks5h://gw:2"}, P("socks5h", "gw", 2)),
        ({"all_proxy": "socks4://gw"}, P("socks4", "gw", 1080, remote_dns=False, version=4)),
        ({"ALL_PROXY": "http://web:3128"}, None),
        ({"ALL_PROXY": "web:3128"}, None),
        ({"ALL_PROXY": "http://web:3128", "all_proxy": "socks5h://gw:3"}, P("socks5h", "gw", 3)),
        ({"SOCKS_PROXY": "socks5h://first", "ALL_PROXY": "socks5h://second"},
         P("socks5h", "first", 1080)),
        ({"SOCKS_PROXY": "  ", "ALL_PROXY": "socks5h://second"}, P("socks5h", "second", 1080)),
    ],
)
def test_proxy_from_env(env, expected):
    assert proxy_from_env(env) == expected


def test_proxy_from_env_bad_value_names_variable():
    with pytest.raises(ValueError, match=r"^SOCKS_PROXY: "):
        proxy_from_env({"SOCKS_PROXY": "socks5://gw:notaport"})


def test_proxy_from_env_reads_os_environ(monkeypatch):
    for name in ("SOCKS_PROXY", "socks_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_from_env() is None
    monkeypatch.setenv("SOCKS_PROXY", "socks5h://from-env:7")
    assert proxy_from_env() == P("socks5h", "from-env", 7)
