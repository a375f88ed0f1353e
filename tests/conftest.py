"""Fixtures shared by several test modules."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from studies import ONE_RUN

from helpers import paths
from helpers.flow import runner
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


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The committed one-run study ``ONE_RUN``, run once through the runner (about a minute and a half on 2 cores):
    the test modules that need committed stages copy it (``copy_of_built``) rather than each building their own."""
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HELPERS_ARTIFACTS", str(root / "artifacts"))
        mp.setenv("HELPERS_CACHE", str(paths.cache_dir()))
        (root / "one.yaml").write_text(yaml.safe_dump(ONE_RUN, sort_keys=False))
        runner.run(str(root / "one.yaml"), build=False, jobs=2)
    return root


@pytest.fixture
def copy_of_built(built, tmp_path, monkeypatch):
    """A private copy of the ``built`` study's artifacts (tests may damage or rerun it); returns its profile."""
    shutil.copytree(built / "artifacts", tmp_path / "artifacts", symlinks=True)
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HELPERS_CACHE", str(paths.cache_dir()))
    return built / "one.yaml"
