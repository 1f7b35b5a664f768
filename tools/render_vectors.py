#!/usr/bin/env python3
"""Render the test vectors of tests/vectors as the markdown tables of docs/PROTOCOL.md.

The document is never edited by hand between ``<!-- vectors:NAME -->`` and
``<!-- /vectors:NAME -->``: ``python tools/render_vectors.py --write docs/PROTOCOL.md`` fills
every block from the vectors, and tests/test_protocol_doc.py fails when a block is stale.
Without options the script prints every table, each under its marker.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tests.vectors  # noqa: E402
from socksx.protocol.address import Address  # noqa: E402
from socksx.protocol.constants import (  # noqa: E402
    REPLY_TEXT,
    Atyp,
    Method,
    ReplyCode,
    Socks4Code,
    UserPassStatus,
)
from socksx.protocol.messages import (  # noqa: E402
    Greeting,
    MethodSelection,
    Reply,
    Request,
    UserPassReply,
    UserPassRequest,
)
from socksx.protocol.socks4 import Socks4Reply, Socks4Request  # noqa: E402
from tests.vectors import Datagram, ErrorVector, Vector  # noqa: E402


def vector_modules() -> list[ModuleType]:
    """Every module of tests/vectors, by name.

    A module contributes ``TABLES`` and ``ERROR_TABLES``; an extension's module may also define
    ``describe(msg) -> str | None`` for its own message types and an ``ON_THE_WIRE`` dict for
    its error tables, so adding an extension never means editing this script.
    """
    names = sorted(m.name for m in pkgutil.iter_modules(tests.vectors.__path__))
    return [importlib.import_module(f"tests.vectors.{name}") for name in names]


METHOD_TEXT = {
    Method.NO_AUTH: "no authentication required",
    Method.GSSAPI: "GSSAPI",
    Method.USERNAME_PASSWORD: "username/password",
    Method.NO_ACCEPTABLE: "no acceptable methods",
}
ATYP_TEXT = {Atyp.IPV4: "IPv4", Atyp.IPV6: "IPv6", Atyp.DOMAINNAME: "domain name"}
SOCKS4_TEXT = {
    Socks4Code.GRANTED: "request granted",
    Socks4Code.REJECTED: "request rejected or failed",
    Socks4Code.NO_IDENTD: "rejected: client not running identd",
    Socks4Code.IDENTD_MISMATCH: "rejected: identd user mismatch",
}
MARKER = re.compile(r"<!-- vectors:([a-z0-9-]+) -->\n(.*?)<!-- /vectors:\1 -->", re.DOTALL)


def _octets(raw: bytes) -> str:
    """Printable ASCII in quotes, anything else as hex."""
    if raw and all(0x20 < b < 0x7F and b not in b'"|`\\' for b in raw):
        return f'"{raw.decode("ascii")}"'
    return f"0x{raw.hex()}" if raw else "empty"


def _address(address: Address) -> str:
    return f"{address} ({ATYP_TEXT[address.atyp]})"


def describe(msg: object) -> str:
    """One line saying what a vector decodes to, in the document's words.

    Raises:
        TypeError: no module knows how to describe *msg*.
    """
    for module in vector_modules():
        hook = getattr(module, "describe", None)
        text = hook(msg) if hook is not None else None
        if text is not None:
            return text
    match msg:
        case Greeting(methods=methods):
            offers = ", ".join(
                f"{m:02X} ({METHOD_TEXT[Method(m)]})"
                if m in Method._value2member_map_
                else f"{m:02X} (unassigned)"
                for m in methods
            )
            return f"NMETHODS {len(methods)}: {offers}"
        case MethodSelection(method=method):
            return f"METHOD {method:02X}: {METHOD_TEXT[method]}"
        case Address():
            return _address(msg)
        case Request(command=command, address=address):
            return f"CMD {command:02X} {command.name.replace('_', ' ')}, DST {_address(address)}"
        case Reply(rep=rep, address=address):
            return f"REP {rep:02X} {REPLY_TEXT[rep]}, BND {_address(address)}"
        case UserPassRequest(username=username, password=password):
            return f"UNAME {_octets(username)}, PASSWD {_octets(password)}"
        case UserPassReply(status=status):
            verdict = "success" if status == UserPassStatus.SUCCESS else "failure"
            return f"STATUS {status:02X}: {verdict}"
        case Socks4Request(command=command, address=address, userid=userid):
            kind = "SOCKS4a" if not address.is_ip else "SOCKS4"
            return f"{kind} CD {command:02X} {command.name}, {address}, USERID {_octets(userid)}"
        case Socks4Reply(code=code, address=address):
            return f"CD {code:02X} {SOCKS4_TEXT[code]}, {address}"
        case Datagram(header=header, data=data):
            return f"FRAG {header.frag:02X}, {_address(header.address)}, DATA {_octets(data)}"
    msg_text = f"no description for {type(msg).__name__}"
    raise TypeError(msg_text)


def _reply(reply: ReplyCode | None) -> str:
    return "None" if reply is None else f"{reply:02X}"


def _rep(v: ErrorVector) -> str:
    return "server closes, no reply" if v.reply is None else f"REP {v.reply:02X}, then close"


def _socks4(v: ErrorVector) -> str:
    return "server closes, no reply" if v.reply is None else "CD 5B, then close"


def _fixed(text: str) -> Callable[[ErrorVector], str]:
    return lambda _: text


#: Error table -> what the refusal looks like on the wire (where the error's REP can be sent).
ON_THE_WIRE: dict[str, Callable[[ErrorVector], str]] = {
    "rfc1928-greeting-errors": _fixed("server closes, no reply"),
    "rfc1928-method-selection-errors": _fixed("client closes"),
    "rfc1928-address-errors": _rep,
    "rfc1928-request-errors": _rep,
    "rfc1928-reply-errors": _fixed("client closes"),
    "rfc1929-request-errors": _fixed("server closes, no reply"),
    "rfc1929-reply-errors": _fixed("client closes"),
    "socks4-request-errors": _socks4,
    "socks4-reply-errors": _fixed("client closes"),
    "udp-datagram-errors": _fixed("datagram dropped"),
}


def _on_the_wire(name: str) -> Callable[[ErrorVector], str]:
    for module in vector_modules():
        extra = getattr(module, "ON_THE_WIRE", {})
        if name in extra:
            return extra[name]
    return ON_THE_WIRE[name]


def render_table(name: str, vectors: list[Vector] | list[ErrorVector]) -> str:
    """The markdown table of one list of vectors.

    Raises:
        KeyError: an error table with no ``ON_THE_WIRE`` entry.
    """
    if vectors and isinstance(vectors[0], ErrorVector):
        wire = _on_the_wire(name)
        lines = [
            "| Case | Octets (hex) | Refused with | `.reply` | On the wire |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {v.name} | `{v.hex}` | `{v.exc.__name__}` | {_reply(v.reply)} | {wire(v)} |"
            for v in vectors
            if isinstance(v, ErrorVector)
        ]
    else:
        lines = ["| Case | Octets (hex) | Decodes to | Source |", "|---|---|---|---|"]
        lines += [
            f"| {v.name} | `{v.hex}` | {describe(v.msg)} | {v.source} |"
            for v in vectors
            if isinstance(v, Vector)
        ]
    return "\n".join(lines) + "\n"


def tables() -> dict[str, list[Vector] | list[ErrorVector]]:
    """Every vector table, by block name, in module order."""
    out: dict[str, list[Vector] | list[ErrorVector]] = {}
    for module in vector_modules():
        out.update(module.TABLES)
        out.update(module.ERROR_TABLES)
    return out


def render_all() -> dict[str, str]:
    """Block name -> rendered table."""
    return {name: render_table(name, vectors) for name, vectors in tables().items()}


def blocks(document: str) -> dict[str, str]:
    """Block name -> the text between its markers in *document*."""
    return {m.group(1): m.group(2) for m in MARKER.finditer(document)}


def fill(document: str) -> str:
    """*document* with every known block replaced by its rendered table.

    Raises:
        KeyError: the document has a block for a table that does not exist.
    """
    rendered = render_all()

    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"<!-- vectors:{name} -->\n{rendered[name]}<!-- /vectors:{name} -->"

    return MARKER.sub(replace, document)


def main(argv: list[str] | None = None) -> int:
    """Print the tables, or rewrite a document's blocks in place."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="DOC", type=Path, help="fill DOC's blocks in place")
    args = parser.parse_args(argv)
    if args.write:
        text = args.write.read_text(encoding="utf-8")
        args.write.write_text(fill(text), encoding="utf-8")
        missing = sorted(set(render_all()) - set(blocks(text)))
        for name in missing:
            print(f"render_vectors: {args.write}: no block for table {name}", file=sys.stderr)
        return 1 if missing else 0
    for name, table in render_all().items():
        print(f"<!-- vectors:{name} -->\n{table}<!-- /vectors:{name} -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
