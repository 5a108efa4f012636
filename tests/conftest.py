"""Shared fixtures: the privacy officer's key pair, a data directory, a module's mosquitto broker, the
recorded site footage and small tmpfs file systems (the last three defined in ``tests.helpers``, offered
to every test module here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.broker import broker  # noqa: F401 - a fixture
from tests.helpers.daemon import OfficerKey, make_officer_key
from tests.helpers.site import recording  # noqa: F401 - a fixture
from tests.helpers.tmpfs import small_fs  # noqa: F401 - a fixture


@pytest.fixture(scope="session")
def officer(tmp_path_factory: pytest.TempPathFactory) -> OfficerKey:
    return make_officer_key(tmp_path_factory.mktemp("officer") / "officer.key")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
