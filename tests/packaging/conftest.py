"""Fixtures of the packaging tests: the pinned helm binary (built or found by localcluster's tool cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster.tools import ensure_tools


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm (no cluster needed); a warm tool cache makes this a few stat() calls."""
    path = ensure_tools(("helm",)).helm
    assert path.exists(), f"helm not found at {path}"
    return path
