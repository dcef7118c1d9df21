"""Every call of the API on the demo repository, with what it returns."""

import datetime as dt

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import quiver
from conftest import ANCHOR, READ_AT, UTC


def entity_rows(n=5):
    return pd.DataFrame(
        {
            "driver_id": [1001 + i for i in range(n)],
            "customer_id": [5001 + i for i in range(n)],
            "event_timestamp": [READ_AT.replace(tzinfo=None)] * n,  # naive: UTC
            "distance_km": [1.5 * (i + 1) for i in range(n)],
        }
    )


def test_plan_and_apply_are_idempotent(store):
    assert not store.plan().changed
    assert not store.apply().changed
    assert "no changes" in str(store.plan()).lower() or str(store.plan()) != ""


def test_registry_browsing(store):
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {
        "customer_profile",
        "driver_customer_trips",
        "driver_hourly_stats",
        "driver_trip_windows",
    }
    fv = store.get_feature_view("driver_hourly_stats")
    assert [f.name for f in fv.features] == ["conv_rate", "acc_rate", "avg_daily_trips"]
    assert [f.dtype for f in fv.features] == ["float64", "float32", "int64"]
    assert fv.entities == ["driver"] and fv.version >= 1
    windows = store.get_feature_view("driver_trip_windows")
    assert windows.aggregations and windows.aggregations[0]["function"] == "count_star"
    services = [s.name for s in store.list_feature_services()]
    assert services == ["driver_activity_v1", "ride_ranking_v1", "ride_ranking_v2",
                        "ride_ranking_v3"]
    assert store.get_feature_service("ride_ranking_v1").owner == "ranking-team@example.com"
    assert [e.name for e in store.list_entities()] == ["customer", "driver"]
    assert store.get_on_demand_feature_view("trip_context").features[0].name
    assert "driver_stats_source" in [s.name for s in store.list_data_sources()]
    assert [v.name for v in store.list_feature_views(tags={"domain": "nowhere"})] == []
    with pytest.raises(quiver.NotFoundError, match="feature view 'nope'"):
        store.get_feature_view("nope")


@pytest.mark.parametrize("kind", ["pandas", "polars", "arrow", "dicts"])
def test_historical_takes_every_frame_kind(store, kind):
    df = entity_rows()
    data = {
        "pandas": df,
        "polars": pl.from_pandas(df),
        "arrow": pa.Table.from_pandas(df, preserve_index=False),
        "dicts": df.to_dict("records"),
    }[kind]
    job = store.get_historical_features(
        entity_df=data,
        features=["driver_hourly_stats:conv_rate", "customer_profile:current_balance"],
    )
    table = job.to_arrow()
    assert table.num_rows == 5
    assert table.column_names == [
        "driver_id", "customer_id", "event_timestamp", "distance_km", "conv_rate",
        "current_balance",
    ]
    # Entity rows come back in input order.
    assert table.column("driver_id").to_pylist() == [1001, 1002, 1003, 1004, 1005]
    assert table.column("conv_rate").null_count == 0


def test_historical_results_convert(store):
    job = store.get_historical_features(entity_df=entity_rows(), feature_service="ride_ranking_v2")
    pdf = job.to_pandas()
    assert "conv_rate_x_distance" in pdf.columns
    assert job.to_df().shape == pdf.shape
    pol = job.to_polars()
    assert pol.shape == pdf.shape
    assert pol["conv_rate"].to_list() == pdf["conv_rate"].to_list()
    # A FeatureService object, as Feast takes it, and full names.
    svc = store.get_feature_service("ride_ranking_v1")
    full = store.get_historical_features(entity_rows(), features=svc, full_feature_names=True)
    assert "driver_hourly_stats__conv_rate" in full.to_arrow().column_names
    assert len(full) == 5


def test_zoned_and_other_units_are_the_same_instant(store):
    df = entity_rows()
    zoned = df.assign(
        event_timestamp=pd.to_datetime(df["event_timestamp"]).dt.tz_localize("UTC")
        .dt.tz_convert("America/New_York")
    )
    seconds = pa.Table.from_pandas(df, preserve_index=False)
    seconds = seconds.set_column(
        2, "event_timestamp", seconds.column("event_timestamp").cast(pa.timestamp("s"))
    )
    features = ["driver_hourly_stats:conv_rate", "driver_trip_windows:count_star_1d"]
    a = store.get_historical_features(df, features).to_arrow()
    b = store.get_historical_features(zoned, features).to_arrow()
    c = store.get_historical_features(seconds, features).to_arrow()
    for name in ["conv_rate", "count_star_1d"]:
        assert a.column(name).to_pylist() == b.column(name).to_pylist()
        assert a.column(name).to_pylist() == c.column(name).to_pylist()


def test_timestamp_column_is_inferred(store):
    df = entity_rows().rename(columns={"event_timestamp": "label_time"})
    t = store.get_historical_features(df, ["driver_hourly_stats:conv_rate"]).to_arrow()
    assert t.column("conv_rate").null_count == 0


def test_online_reads(store):
    resp = store.get_online_features(
        features=["driver_hourly_stats:conv_rate", "driver_hourly_stats:avg_daily_trips"],
        entity_rows=[{"driver_id": 1001}, {"driver_id": 1002}, {"driver_id": 424242}],
        at=READ_AT,
    )
    d = resp.to_dict()
    assert d["driver_id"] == [1001, 1002, 424242]
    assert d["conv_rate"][2] is None and d["avg_daily_trips"][2] is None
    assert isinstance(d["conv_rate"][0], float) and isinstance(d["avg_daily_trips"][0], int)
    assert resp.statuses() == {
        "conv_rate": ["PRESENT", "PRESENT", "MISSING"],
        "avg_daily_trips": ["PRESENT", "PRESENT", "MISSING"],
    }
    ts = resp.event_timestamps()["conv_rate"]
    assert ts[0].tzinfo is not None and ts[0] <= READ_AT and ts[2] is None
    assert resp.to_dict(include_event_timestamps=True)["conv_rate__ts"] == ts
    df = resp.to_df()
    assert list(df.columns) == ["driver_id", "conv_rate", "avg_daily_trips"]
    assert resp.to_arrow().schema.field("avg_daily_trips").type == pa.int64()
    assert resp.to_polars().shape == (3, 3)
    assert resp.feature_names == ["conv_rate", "avg_daily_trips"] and len(resp) == 3
    assert resp.join_keys == ["driver_id"]
    assert not resp.all_present()


def test_online_with_a_service_columns_and_request_data(store):
    resp = store.get_online_features(
        feature_service="ride_ranking_v2",
        entity_rows={"driver_id": [1001, 1002], "customer_id": [5001, 5002],
                     "distance_km": [2.0, None]},
        at=READ_AT,
    )
    d = resp.to_dict()
    assert d["conv_rate_x_distance"][0] == pytest.approx(d["conv_rate"][0] * 2.0)
    assert d["conv_rate_x_distance"][1] is None
    # A FeatureService object in `features`, as in Feast.
    svc = store.get_feature_service("driver_activity_v1")
    assert store.get_online_features(features=svc, entity_rows=[{"driver_id": 1001}],
                                     at=READ_AT).all_present()


def test_materialize_reports_each_view(demo_path):
    store = quiver.FeatureStore(demo_path)
    runs = store.materialize(ANCHOR - dt.timedelta(days=1), READ_AT,
                             feature_views=["driver_hourly_stats"])
    assert [r["view"] for r in runs] == ["driver_hourly_stats"]
    assert runs[0]["start"] == ANCHOR - dt.timedelta(days=1) and runs[0]["end"] == READ_AT
    assert runs[0]["keys"] > 0
    again = store.materialize_incremental(READ_AT, feature_views=["driver_hourly_stats"])
    assert sum(r["rows_read"] for r in again) == 0
    assert store.materialize("2026-01-05T00:00:00Z", READ_AT.replace(tzinfo=None),
                             ["customer_profile"])[0]["view"] == "customer_profile"


def test_the_store_is_reused_across_calls(store):
    # One opened store serves repeated reads (registry, plans and connections kept).
    rows = [{"driver_id": 1001 + i} for i in range(50)]
    first = store.get_online_features(["driver_hourly_stats:conv_rate"], rows, at=READ_AT)
    for _ in range(20):
        again = store.get_online_features(["driver_hourly_stats:conv_rate"], rows, at=READ_AT)
    assert again.to_dict() == first.to_dict()
