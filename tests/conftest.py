"""Shared fixtures: the privacy officer's key pair and a way to write configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon_helpers import OfficerKey, make_officer_key


@pytest.fixture(scope="session")
def officer(tmp_path_factory: pytest.TempPathFactory) -> OfficerKey:
    return make_officer_key(tmp_path_factory.mktemp("officer") / "officer.key")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
