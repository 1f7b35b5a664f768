"""Entry point: gevent must patch the standard library before anything imports socket or ssl."""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()


def main() -> None:
    """Run the socksx command line."""
    from socksx.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
