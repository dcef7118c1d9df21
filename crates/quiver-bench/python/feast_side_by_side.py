"""quiver's Python API and Feast, side by side, on the same generated data, in one run.

    python crates/quiver-bench/python/feast_side_by_side.py [--entities 100000] [--big 5000000]

Needs a venv with `feast[duckdb]==0.67.0` and the quiver package built in release mode
(`maturin develop --release -m python/Cargo.toml`, or `scripts/bench-python.sh`, which
makes that venv). Feast runs with its DuckDB offline store and SQLite online store, the
setup its documentation starts from; quiver with its embedded defaults (Delta tables,
LMDB).

Measured, each in the same process on the same files:
- get_historical_features: ENTITIES drivers x 4 label times (entity DataFrame in pandas,
  result to pandas; the systems take turns, 5 runs each, the best of each kept, and
  each system's first call in the process shown apart), and --big entity rows where
  Feast manages (taking turns, 2 runs each: the best and the first shown);
- materialize of the ENTITIES x 4 feature rows (quiver: ingest into Delta, then
  materialize, both shown);
- get_online_features from Python, to_dict() included: 1 entity x 50 features and
  50 entities x 23 features, p50/p99 over --reads calls.
Both systems' training sets are compared value by value (row counts and features).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

UTC = dt.timezone.utc
END = dt.datetime(2026, 6, 1, tzinfo=UTC)
WIDE = 50  # features of the wide view (online reads)
WIDE_KEYS = 10_000
ROUNDS = 5  # of the 400k retrieval, per system
BIG_ROUNDS = 2  # of the --big retrieval, per system


def generate(root: pathlib.Path, entities: int, seed: int = 7):
    """driver_stats: `entities` drivers x 4 hourly rows (conv_rate, acc_rate,
    avg_daily_trips); wide_stats: WIDE_KEYS drivers x WIDE float features; the entity
    rows: each driver at 4 label times."""
    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True)
    ids = np.arange(1, entities + 1, dtype=np.int64)
    hours = np.array([1, 7, 19, 30], dtype=np.int64)  # hours before END
    rows_ids = np.repeat(ids, 4)
    ts = np.tile(hours, entities)
    stamp = pd.Timestamp(END).value // 1000 - ts * 3_600_000_000
    stats = pa.table(
        {
            "driver_id": rows_ids,
            "event_timestamp": pa.array(stamp, pa.timestamp("us", tz="UTC")),
            "created": pa.array(stamp, pa.timestamp("us", tz="UTC")),
            "conv_rate": rng.random(len(rows_ids)),
            "acc_rate": rng.random(len(rows_ids)).astype(np.float32),
            "avg_daily_trips": rng.integers(0, 1000, len(rows_ids)),
        }
    )
    pq.write_table(stats, data / "driver_stats.parquet")
    wide_ids = ids[:WIDE_KEYS]
    wide = {"driver_id": wide_ids,
            "event_timestamp": pa.array(np.full(WIDE_KEYS, pd.Timestamp(END).value // 1000
                                                - 3_600_000_000), pa.timestamp("us", tz="UTC"))}
    for j in range(WIDE):
        wide[f"f{j:02d}"] = rng.random(WIDE_KEYS)
    pq.write_table(pa.table(wide), data / "wide_stats.parquet")
    # Label times between the feature rows: each driver 4 times.
    label_hours = np.array([0.5, 5.5, 18.5, 29.5])
    label = pd.Timestamp(END) - pd.to_timedelta(np.tile(label_hours, entities), unit="h")
    entity_df = pd.DataFrame({"driver_id": np.repeat(ids, 4), "event_timestamp": label})
    return entity_df


# --- quiver ---------------------------------------------------------------------------

QUIVER_FEATURES = """\
entities:
  - name: driver
    join_keys: [{ name: driver_id, dtype: int64 }]
sources:
  - { name: driver_stats_source, type: file, path: data/driver_stats.parquet,
      timestamp_field: event_timestamp, created_timestamp_field: created }
  - { name: wide_source, type: file, path: data/wide_stats.parquet,
      timestamp_field: event_timestamp }
feature_views:
  - name: driver_hourly_stats
    entities: [driver]
    source: driver_stats_source
    ttl: 7d
    features:
      - { name: conv_rate, dtype: float64 }
      - { name: acc_rate, dtype: float32 }
      - { name: avg_daily_trips, dtype: int64 }
  - name: wide_stats
    entities: [driver]
    source: wide_source
    ttl: 7d
    features:
%s
"""


def quiver_repo(root: pathlib.Path):
    import quiver

    (root / "quiver.yaml").write_text(
        "project: bench\nregistry: data/registry\n"
        "offline_store: { type: delta, path: data/offline }\n"
        "online_store: { type: embedded, path: data/online }\n"
    )
    feats = "\n".join(f"      - {{ name: f{j:02d}, dtype: float64 }}" for j in range(WIDE))
    (root / "features.yaml").write_text(QUIVER_FEATURES % feats)
    store = quiver.FeatureStore(repo_path=root)
    store.apply()
    return store


# --- Feast ----------------------------------------------------------------------------


def feast_repo(root: pathlib.Path):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float32, Float64, Int64
    from feast.value_type import ValueType

    (root / "feature_store.yaml").write_text(
        "project: bench\nregistry: data/registry.db\nprovider: local\n"
        "offline_store:\n  type: duckdb\n"
        f"online_store:\n  type: sqlite\n  path: {root}/data/online.db\n"
        "entity_key_serialization_version: 3\n"
    )
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    stats = FeatureView(
        name="driver_hourly_stats",
        entities=[driver],
        ttl=dt.timedelta(days=7),
        schema=[Field(name="conv_rate", dtype=Float64), Field(name="acc_rate", dtype=Float32),
                Field(name="avg_daily_trips", dtype=Int64)],
        source=FileSource(path=str(root / "data/driver_stats.parquet"),
                          timestamp_field="event_timestamp",
                          created_timestamp_column="created"),
    )
    wide = FeatureView(
        name="wide_stats",
        entities=[driver],
        ttl=dt.timedelta(days=7),
        schema=[Field(name=f"f{j:02d}", dtype=Float64) for j in range(WIDE)],
        source=FileSource(path=str(root / "data/wide_stats.parquet"),
                          timestamp_field="event_timestamp"),
    )
    store = FeatureStore(repo_path=str(root))
    store.apply([driver, stats, wide])
    return store


# --- measuring ------------------------------------------------------------------------


def timed(f, repeat=1):
    best, out = None, None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = f()
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    return best, out


def latencies(f, n):
    for _ in range(min(50, n)):
        f()
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        f()
        out.append((time.perf_counter_ns() - t) / 1000)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99) - 1]


def compare(q: pd.DataFrame, f: pd.DataFrame) -> str:
    """Row counts, then each feature's values by (driver_id, event_timestamp)."""
    if len(q) != len(f):
        return f"rows differ: quiver {len(q)}, Feast {len(f)}"
    key = ["driver_id", "event_timestamp"]
    f = f.copy()
    f["event_timestamp"] = pd.to_datetime(f["event_timestamp"], utc=True)
    q = q.copy()
    q["event_timestamp"] = pd.to_datetime(q["event_timestamp"], utc=True)
    m = q.merge(f, on=key, suffixes=("_q", "_f"))
    if len(m) != len(q):
        return f"only {len(m)} of {len(q)} rows match on (driver_id, event_timestamp)"
    bad = []
    for c in ["conv_rate", "acc_rate", "avg_daily_trips"]:
        a, b = m[f"{c}_q"].to_numpy(dtype="float64"), m[f"{c}_f"].to_numpy(dtype="float64")
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        if not same.all():
            bad.append(f"{c}: {int((~same).sum())} differ")
    return "same rows and values" if not bad else "; ".join(bad)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=5_000_000,
                    help="entity rows of the large retrieval (0: skip)")
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--skip-feast", action="store_true")
    ap.add_argument("--keep", help="directory to keep the repositories in")
    args = ap.parse_args()

    import quiver

    base = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="quiver-feast-"))
    shutil.rmtree(base, ignore_errors=True)
    qroot, froot = base / "quiver", base / "feast"
    entity_df = generate(qroot, args.entities)
    shutil.copytree(qroot / "data", froot / "data")
    print(f"data: {args.entities} drivers x 4 rows = {4 * args.entities} feature rows; "
          f"{len(entity_df)} entity rows; wide view {WIDE_KEYS} x {WIDE} features; "
          f"python {sys.version.split()[0]}, quiver {quiver.__version__}, "
          f"cpus {os.cpu_count()}")

    q = quiver_repo(qroot)
    feats = ["driver_hourly_stats:conv_rate", "driver_hourly_stats:acc_rate",
             "driver_hourly_stats:avg_daily_trips"]
    t_ingest, _ = timed(lambda: q.ingest())
    t_mat_q, _ = timed(lambda: q.materialize(END - dt.timedelta(days=7), END))
    wide50 = [f"wide_stats:f{j:02d}" for j in range(WIDE)]
    wide23 = wide50[:23]
    one = [{"driver_id": 17}]
    fifty = [{"driver_id": 1 + i * 97} for i in range(50)]
    q1 = latencies(lambda: q.get_online_features(wide50, one).to_dict(), args.reads)
    q50 = latencies(lambda: q.get_online_features(wide23, fifty).to_dict(), args.reads)
    # quiver's first retrieval in the process, apart (as Feast's below).
    hist_q = lambda: q.get_historical_features(entity_df, feats).to_pandas()  # noqa: E731
    t_first_q, q_train = timed(hist_q)

    f_train = None
    t_hist_f = t_first_f = t_mat_f = None
    f1 = f50 = None
    if not args.skip_feast:
        fs = feast_repo(froot)
        # Feast's first retrieval in the process (its set-up included), apart.
        t_first_f, f_train = timed(lambda: fs.get_historical_features(
            entity_df=entity_df, features=feats).to_df())
        t_mat_f, _ = timed(lambda: fs.materialize(END - dt.timedelta(days=7), END))
        f1 = latencies(lambda: fs.get_online_features(wide50, one).to_dict(),
                       min(args.reads, 500))
        f50 = latencies(lambda: fs.get_online_features(wide23, fifty).to_dict(),
                        min(args.reads, 500))

    # The large retrieval, the two systems taking turns (BIG_ROUNDS each; the first call
    # of that size and the best shown), then the 400k one (ROUNDS each, best kept), so
    # that both meet the same load of the machine.
    big_q, big_f = [], []
    if args.big:
        reps = -(-args.big // len(entity_df))
        big = pd.concat([entity_df] * reps, ignore_index=True).iloc[: args.big]
        for _ in range(BIG_ROUNDS):
            big_q.append(timed(lambda: q.get_historical_features(big, feats).to_pandas())[0])
            if not args.skip_feast and not any(isinstance(t, str) for t in big_f):
                try:
                    big_f.append(timed(lambda: fs.get_historical_features(
                        entity_df=big, features=feats).to_df())[0])
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    big_f.append(f"failed: {type(e).__name__}: {str(e)[:80]}")
    t_hist_q, _ = timed(hist_q)
    if not args.skip_feast:
        hist_f = lambda: fs.get_historical_features(  # noqa: E731
            entity_df=entity_df, features=feats).to_df()
        t_hist_f, _ = timed(hist_f)
    for _ in range(ROUNDS - 1):
        t, _ = timed(hist_q)
        t_hist_q = min(t_hist_q, t)
        if not args.skip_feast:
            t, _ = timed(hist_f)
            t_hist_f = min(t_hist_f, t)

    def best(ts):
        return next((t for t in ts if isinstance(t, str)), min(ts, default=None))

    def first(ts):
        return ts[0] if ts else None

    def ratio(f, q):
        return f"{f / q:,.1f}x" if isinstance(f, float) and q else "-"

    def s(x):
        return f"{x:,.3f} s" if isinstance(x, float) else (x or "-")

    print()
    print(f"| {'operation':<44} | {'Feast 0.67':>14} | {'quiver':>12} | {'quiver faster':>13} |")
    print(f"|{'-' * 46}|{'-' * 16}|{'-' * 14}|{'-' * 15}|")
    rows = [
        (f"get_historical_features, {len(entity_df):,} rows", t_hist_f, t_hist_q),
        ("  (each system's first call in the process)", t_first_f, t_first_q),
        (f"get_historical_features, {args.big:,} rows", best(big_f), best(big_q)),
        ("  (each system's first call of that size)", first(big_f), first(big_q)),
        (f"materialize {4 * args.entities:,} rows", t_mat_f, t_mat_q),
        ("  (quiver: ingest into Delta before it)", None, t_ingest),
    ]
    for name, f, qv in rows:
        if not args.big and (name.endswith(" 0 rows") or name.endswith("that size)")):
            continue
        print(f"| {name:<44} | {s(f):>14} | {s(qv):>12} | {ratio(f, qv):>13} |")
    for name, f, qv in [("get_online_features 1 x 50, p50 / p99", f1, q1),
                        ("get_online_features 50 x 23, p50 / p99", f50, q50)]:
        fs_ = f"{f[0]:,.0f} / {f[1]:,.0f} us" if f else "-"
        qs_ = f"{qv[0]:,.0f} / {qv[1]:,.0f} us"
        r = f"{f[1] / qv[1]:,.1f}x (p99)" if f else "-"
        print(f"| {name:<44} | {fs_:>14} | {qs_:>12} | {r:>13} |")
    if f_train is not None:
        print()
        print("training sets:", compare(q_train, f_train))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
