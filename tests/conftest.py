"""Fixtures shared by several test modules."""

import os
import tempfile
from pathlib import Path

import pytest

from helpers.models import embedded_checkpoint


@pytest.fixture(scope="session")
def e5_path():
    """The embedded e5-small converted once per session (into ``$HELPERS_CACHE`` when set, else a temporary
    folder)."""
    env = os.environ.get("HELPERS_CACHE")
    if env:
        yield embedded_checkpoint(Path(env))
        return
    with tempfile.TemporaryDirectory(prefix="helpers-e5-") as tmp:
        yield embedded_checkpoint(Path(tmp))
