"""Fixtures: the demo repository (``quiver.init_demo``) applied, ingested and
materialized once per session, at a fixed time so that every run sees the same data."""

import datetime as dt

import pytest

import quiver

UTC = dt.timezone.utc
# The demo's data ends here; reads happen half an hour later.
ANCHOR = dt.datetime(2026, 1, 5, 12, tzinfo=UTC)
READ_AT = ANCHOR + dt.timedelta(minutes=30)


@pytest.fixture(scope="session")
def demo_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "repo"
    quiver.init_demo(path, anchor=ANCHOR)
    store = quiver.FeatureStore(repo_path=path)
    store.apply()
    store.ingest()
    store.materialize_incremental(end_date=READ_AT)
    return path


@pytest.fixture(scope="session")
def store(demo_path):
    return quiver.FeatureStore(repo_path=demo_path)
