"""Fixtures of the data tests: no user data, cache, mirror or system folder leaks into a test."""

import pytest

from prunekit.data import loaders


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> None:
    """No user data, cache or mirror leaks in; the cache lives under tmp_path, the working folder is tmp_path."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)
    monkeypatch.delenv("PRUNEKIT_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_system_data(monkeypatch) -> None:
    """Hide the repo-relative ../shared/datasets and system folders so 'not found' paths are testable."""
    monkeypatch.setattr(loaders, "repo_root", lambda: None)
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {})
