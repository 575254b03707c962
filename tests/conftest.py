"""Shared fixtures: the real data directory (skips with the reason when absent) and a synthetic stand-in for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.datapaths import ENV_VAR, resolve_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data directory (paths.data_dir resolution with this process's environment)."""
    d = resolve_data_dir(None, os.environ)
    if not d.is_dir():
        pytest.skip(f"real data directory {d} not found; set ${ENV_VAR} to run the real-data tests")
    return d


@pytest.fixture(scope="session")
def data_path(data_dir):
    """data_path("folder/file") -> Path of a real data file, skipping the test when that file is absent."""

    def get(relative: str) -> Path:
        p = data_dir / relative
        if not p.is_file():
            pytest.skip(f"real data file {p} not found; fetch it with `make data`")
        return p

    return get


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic data directory with the real one's file names (see common.synthetic)."""
    from common.synthetic import write_synthetic_data_dir

    return write_synthetic_data_dir(tmp_path_factory.mktemp("synthetic_data"), seed=0)
