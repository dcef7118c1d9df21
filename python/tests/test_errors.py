"""Bad input raises quiver's typed exceptions with messages that name what is wrong;
nothing panics."""

import pandas as pd
import pyarrow as pa
import pytest

import quiver
from conftest import READ_AT


def entity_df():
    return pd.DataFrame({"driver_id": [1001], "customer_id": [5001],
                         "event_timestamp": [READ_AT]})


def test_unknown_feature_and_view(store):
    with pytest.raises(quiver.NotFoundError, match="no_such_feature"):
        store.get_historical_features(entity_df(), ["driver_hourly_stats:no_such_feature"])
    with pytest.raises(quiver.NotFoundError, match="nope"):
        store.get_online_features(["nope:x"], [{"driver_id": 1}])
    with pytest.raises(quiver.NotFoundError, match="no_service"):
        store.get_online_features(feature_service="no_service", entity_rows=[{"driver_id": 1}])
    # Every typed error is a QuiverError.
    assert issubclass(quiver.NotFoundError, quiver.QuiverError)


def test_missing_key_column(store):
    df = entity_df().drop(columns=["driver_id"])
    with pytest.raises(quiver.ValidationError, match="driver_id"):
        store.get_historical_features(df, ["driver_hourly_stats:conv_rate"])
    with pytest.raises(quiver.ValidationError,
                       match="join key 'driver_id' is missing from 1 of 2 entity rows"):
        store.get_online_features(["driver_hourly_stats:conv_rate"],
                                  [{"driver_id": 1001}, {}])


def test_wrong_dtype(store):
    df = entity_df().assign(driver_id=["a-string"])
    with pytest.raises(quiver.ValidationError, match="driver_id"):
        store.get_historical_features(df, ["driver_hourly_stats:conv_rate"])
    with pytest.raises(quiver.ValidationError, match=r"entity row 1: join key 'driver_id': expected int64, got str"):
        store.get_online_features(["driver_hourly_stats:conv_rate"], [{"driver_id": "1001"}])
    with pytest.raises(quiver.ValidationError, match="'colour' is not a join key"):
        store.get_online_features(["driver_hourly_stats:conv_rate"],
                                  [{"driver_id": 1001, "colour": "red"}])


def test_bad_arguments(store):
    with pytest.raises(quiver.ValidationError, match="either a feature service or features"):
        store.get_online_features(["driver_hourly_stats:conv_rate"], [{"driver_id": 1}],
                                  feature_service="ride_ranking_v1")
    with pytest.raises(quiver.ValidationError, match="no entity rows"):
        store.get_online_features(["driver_hourly_stats:conv_rate"], [])
    with pytest.raises(quiver.ValidationError, match="entity_df: expected"):
        store.get_historical_features(42, ["driver_hourly_stats:conv_rate"])
    with pytest.raises(quiver.ValidationError, match="end_date"):
        store.materialize_incremental(end_date=12345)
    with pytest.raises(quiver.ValidationError, match="not a push source"):
        store.push("driver_stats_source", pa.table({"driver_id": [1]}))


def test_definition_errors_carry_file_line_and_field(tmp_path):
    (tmp_path / "quiver.yaml").write_text(
        "project: broken\nregistry: data/registry\n"
        "offline_store: { type: delta, path: data/offline }\n"
        "online_store: { type: embedded, path: data/online }\n"
    )
    (tmp_path / "features.yaml").write_text(
        "entities:\n"
        "  - name: driver\n"
        "    join_keys: [{ name: driver_id, dtype: int64 }]\n"
        "feature_views:\n"
        "  - name: stats\n"
        "    entities: [driver]\n"
        "    source: nowhere\n"
        "    features:\n"
        "      - { name: rate, dtype: float64 }\n"
    )
    store = quiver.FeatureStore(tmp_path)
    with pytest.raises(quiver.DefinitionError) as info:
        store.apply()
    e = info.value
    # The view's entry (line 5); the field names what is wrong in it.
    assert e.file == "features.yaml" and e.line == 5 and e.column == 5
    assert e.field == "source" and e.object == "feature view 'stats'"
    assert "nowhere" in str(e) and len(e.errors) == 1
    assert isinstance(e, ValueError)
    # Nothing was registered.
    with pytest.raises(quiver.QuiverError):
        store.list_feature_views()


def test_a_repository_that_is_not_one(tmp_path):
    with pytest.raises(quiver.QuiverError, match="quiver.yaml"):
        quiver.FeatureStore(tmp_path / "missing")
