"""Types round-trip through push, offline and online: int, float, str, bool, list,
timestamp; nulls stay None (never NaN or zero)."""

import datetime as dt
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import quiver

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 8, tzinfo=UTC)

FEATURES = textwrap.dedent(
    """\
    entities:
      - name: user
        join_keys: [{ name: user_id, dtype: int64 }]
    sources:
      - name: profile_history
        type: file
        path: data/profile.parquet
        timestamp_field: ts
      - name: profile_push
        type: push
        timestamp_field: ts
        batch_source: profile_history
    feature_views:
      - name: profile
        entities: [user]
        source: profile_push
        ttl: 30d
        features:
          - { name: age, dtype: int32 }
          - { name: visits, dtype: int64 }
          - { name: score, dtype: float64 }
          - { name: ratio, dtype: float32 }
          - { name: city, dtype: string }
          - { name: active, dtype: bool }
          - { name: tags, dtype: list<string> }
          - { name: last_seen, dtype: timestamp }
    request_sources:
      - name: visit
        schema:
          - { name: seen_at, dtype: timestamp }
          - { name: wanted, dtype: list<string> }
    on_demand_feature_views:
      - name: visit_context
        sources: [request: visit, profile]
        features:
          - { name: seen_after_last, dtype: bool, expr: "seen_at > last_seen" }
          - { name: seen, dtype: timestamp, expr: "seen_at" }
          - { name: wanted_tags, dtype: list<string>, expr: "wanted" }
    """
)

SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("age", pa.int32()),
        ("visits", pa.int64()),
        ("score", pa.float64()),
        ("ratio", pa.float32()),
        ("city", pa.string()),
        ("active", pa.bool_()),
        ("tags", pa.list_(pa.string())),
        ("last_seen", pa.timestamp("us", tz="UTC")),
    ]
)

ROWS = [
    dict(user_id=1, ts=T0, age=31, visits=2**40, score=0.1, ratio=0.5, city="Lyon",
         active=True, tags=["a", "b"], last_seen=T0 - dt.timedelta(microseconds=1)),
    dict(user_id=2, ts=T0, age=None, visits=None, score=None, ratio=None, city=None,
         active=None, tags=None, last_seen=None),
    dict(user_id=3, ts=T0, age=-7, visits=0, score=-0.0, ratio=1e-3, city="",
         active=False, tags=[], last_seen=dt.datetime(1969, 12, 31, 23, 59, tzinfo=UTC)),
]


@pytest.fixture()
def typed(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "quiver.yaml").write_text(
        "project: typed\nregistry: data/registry\n"
        "offline_store: { type: delta, path: data/offline }\n"
        "online_store: { type: embedded, path: data/online }\n"
    )
    (tmp_path / "features.yaml").write_text(FEATURES)
    pq.write_table(pa.Table.from_pylist(ROWS[:1], schema=SCHEMA), tmp_path / "data/profile.parquet")
    store = quiver.FeatureStore(tmp_path)
    store.apply()
    return store


NAMES = ["age", "visits", "score", "ratio", "city", "active", "tags", "last_seen"]


def expected(row, name):
    v = row[name]
    if name == "ratio" and v is not None:
        return float(pa.scalar(v, pa.float32()).as_py())
    return v


def test_values_round_trip_online_and_offline(typed):
    table = pa.Table.from_pylist(ROWS, schema=SCHEMA)
    out = typed.push("profile_push", table)
    assert out["rows"] == 3 and out["written_online"] == 3 and out["written_offline"] == 3

    refs = [f"profile:{n}" for n in NAMES]
    served = typed.get_online_features(
        refs, [{"user_id": 1}, {"user_id": 2}, {"user_id": 3}], at=T0
    )
    d = served.to_dict()
    for i, row in enumerate(ROWS):
        for name in NAMES:
            assert d[name][i] == expected(row, name), (i, name)
    assert served.statuses()["age"] == ["PRESENT"] * 3
    # Null stays None, never NaN or zero, in every output form.
    assert all(d[n][1] is None for n in NAMES)
    arrow = served.to_arrow()
    assert arrow.schema.field("age").type == pa.int32()
    assert arrow.schema.field("tags").type == pa.list_(pa.field("item", pa.string()))
    assert arrow.column("score").null_count == 1

    entity_df = pa.table({"user_id": [1, 2, 3], "event_timestamp": [T0] * 3})
    trained = typed.get_historical_features(entity_df, refs).to_arrow()
    for name in NAMES:
        assert trained.column(name).to_pylist() == d[name], name
    pol = typed.get_historical_features(entity_df, refs).to_polars()
    assert pol["age"].to_list() == [31, None, -7]
    assert pol["score"].null_count() == 1 and not pol["score"].is_nan().any()


def test_pandas_push_and_feast_write_calls(typed):
    import pandas as pd

    df = pd.DataFrame(
        {
            "user_id": [7],
            "ts": [pd.Timestamp("2026-03-01 09:00")],  # naive: UTC
            "age": pd.array([40], dtype="int32"),
            "visits": [3],
            "score": [2.5],
            "ratio": pd.array([0.25], dtype="float32"),
            "city": ["Oslo"],
            "active": [True],
            "tags": [["x"]],
            "last_seen": [pd.Timestamp("2026-03-01 08:00", tz="Europe/Oslo")],
        }
    )
    assert typed.write_to_online_store("profile", df)["written_online"] == 1
    assert typed.write_to_offline_store("profile", df)["written_offline"] == 1
    at = dt.datetime(2026, 3, 1, 10, tzinfo=UTC)
    d = typed.get_online_features(["profile:last_seen", "profile:score"],
                                  [{"user_id": 7}], at=at).to_dict()
    assert d["last_seen"] == [dt.datetime(2026, 3, 1, 7, tzinfo=UTC)]
    assert d["score"] == [2.5]


def test_request_fields_of_timestamp_and_list_types(typed):
    """Online request data of every type the registry declares: timestamps (aware,
    naive = UTC, pandas, numpy, ISO text) and lists, as offline entity-row columns."""
    import numpy as np
    import pandas as pd

    typed.push("profile_push", pa.Table.from_pylist(ROWS, schema=SCHEMA))
    refs = ["visit_context:seen_after_last", "visit_context:seen", "visit_context:wanted_tags"]
    seen = [T0 - dt.timedelta(hours=1), T0.replace(tzinfo=None), pd.Timestamp(T0),
            np.datetime64("2026-03-01T08:00:00.000001"), "2026-03-01T09:00:00+01:00"]
    want = [T0 - dt.timedelta(hours=1), T0, T0, T0 + dt.timedelta(microseconds=1), T0]
    rows = [{"user_id": 1, "seen_at": s, "wanted": ["a", "z"] if i else None}
            for i, s in enumerate(seen)]
    d = typed.get_online_features(refs, rows, at=T0).to_dict()
    assert d["seen"] == want
    # last_seen of user 1 is T0 - 1 µs: one hour before is not after it, T0 is.
    assert d["seen_after_last"] == [False, True, True, True, True]
    assert d["wanted_tags"] == [None] + [["a", "z"]] * 4
    # pandas' and numpy's "not a time" are missing values.
    rows = [{"user_id": 1, "seen_at": pd.NaT}, {"user_id": 1, "seen_at": np.datetime64("NaT")}]
    d_nat = typed.get_online_features(refs, rows, at=T0).to_dict()
    assert d_nat["seen"] == [None, None] and d_nat["seen_after_last"] == [None, None]
    # The same values as a training set's entity-row columns.
    entity_df = pa.table({
        "user_id": [1] * 5,
        "event_timestamp": [T0] * 5,
        "seen_at": pa.array(want, pa.timestamp("us", tz="UTC")),
        "wanted": pa.array([None] + [["a", "z"]] * 4, pa.list_(pa.string())),
    })
    trained = typed.get_historical_features(entity_df, refs).to_arrow().to_pydict()
    assert trained["seen_after_last"] == d["seen_after_last"]
    assert trained["seen"] == d["seen"]
    assert trained["wanted_tags"] == d["wanted_tags"]


@pytest.mark.parametrize("field, value, message", [
    ("seen_at", "yesterday", "expected timestamp"),
    ("seen_at", 1234, "expected timestamp"),
    ("wanted", "ab", "expected list<string>"),
    ("wanted", [1, 2], "expected string"),
])
def test_request_fields_of_the_wrong_type_are_named(typed, field, value, message):
    from quiver.errors import ValidationError

    row = {"user_id": 1, "seen_at": T0, "wanted": ["a"], field: value}
    with pytest.raises(ValidationError, match=f"{field}.*{message}"):
        typed.get_online_features(["visit_context:seen"], [row], at=T0)


def _frames():
    import numpy as np
    import pandas as pd

    n = 1000
    hours = pd.date_range("2026-01-01", periods=n, freq="h")
    every_7th_missing = np.arange(n) % 7 != 0
    return {
        "naive ns": pd.DataFrame({"k": np.arange(n), "t": hours}),
        "utc": pd.DataFrame({"t": hours.tz_localize("UTC"), "k": np.arange(n)}),
        "zone, NaT, strings": pd.DataFrame({
            "s": ["a"] * n,
            "t": pd.Series(hours.tz_localize("Europe/Paris")).where(every_7th_missing),
            "x": np.linspace(0, 1, n),
        }),
        "µs, nullable ints": pd.DataFrame({
            "t": pd.Series(hours).astype("datetime64[us]"),
            "k": pd.array(np.arange(n), dtype="Int64"),
        }),
        "fixed offset": pd.DataFrame(
            {"t": hours.tz_localize(dt.timezone(dt.timedelta(hours=2)))}
        ),
        "seconds, zoned": pd.DataFrame({
            "t": pd.Series(hours.tz_localize("America/New_York")).astype(
                "datetime64[s, America/New_York]"
            )
        }),
        "sliced, index dropped": pd.DataFrame({"k": np.arange(n), "t": hours}).iloc[::3],
        "two time columns": pd.DataFrame({"a": hours, "b": hours.tz_localize("Asia/Tokyo")}),
        "all NaT": pd.DataFrame({"t": pd.Series([pd.NaT] * 3, dtype="datetime64[ns]")}),
        "names not strings": pd.DataFrame({1: np.arange(3), 2: hours[:3]}),
        "some names not strings": pd.DataFrame({"t": hours[:3], 5: np.arange(3)}),
    }


@pytest.mark.parametrize("name", list(_frames()))
def test_pandas_frames_convert_as_pyarrow_converts_them(name):
    """Entity frames cross as pyarrow's own conversion would make them (types, zones,
    units, NaT as null, index dropped): datetime columns take a faster path."""
    df = _frames()[name]
    ours = quiver._from_pandas(df)
    theirs = pa.Table.from_pandas(df, preserve_index=False)
    assert ours.schema.remove_metadata() == theirs.schema.remove_metadata()
    assert ours.replace_schema_metadata(None).equals(theirs.replace_schema_metadata(None))


def test_pandas_frames_pyarrow_cannot_take_raise_validation_errors():
    import pandas as pd

    with pytest.raises(quiver.ValidationError, match=r"entity_df: duplicate column names \['a'\]"):
        quiver._from_pandas(pd.DataFrame([[1, 2]], columns=["a", "a"]), "entity_df")
    mixed = pd.DataFrame({"k": [1, "x"], "t": pd.Timestamp(0)})
    with pytest.raises(quiver.ValidationError, match="entity_df: .*column k"):
        quiver._from_pandas(mixed, "entity_df")
