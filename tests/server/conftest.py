"""Fixtures the server tests share."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def socksx_records() -> Iterator[list[logging.LogRecord]]:
    """Every record the ``socksx`` logger emits during the test, at every level."""
    logger = logging.getLogger("socksx")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = seen.append  # type: ignore[method-assign]
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)
