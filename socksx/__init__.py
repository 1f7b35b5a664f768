"""socksx: a gevent SOCKS server and toolkit.

Importing this package loads no socket, ssl or gevent module: the entry point must be able to
monkey-patch before anything else touches the network stack.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
