"""The module keeps the memory a retrieval used for the next one: a notebook's calls
come seconds apart, and memory handed back to the system in between comes back as
page faults (zeroed pages) on the next call — a large share of a retrieval's time.

Page faults are counted per process, so the calls run in a child process of their own,
on a table large enough (400k feature rows, 400k labels) that a retrieval's buffers
span whole allocator chunks, as they do in use. Run with ``MIMALLOC_PURGE_DELAY=1000``
in the environment (mimalloc's own default, which the module otherwise replaces) and
the test fails."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import quiver

DRIVERS = 100_000
FEATURES = """\
entities:
  - name: driver
    join_keys: [{ name: driver_id, dtype: int64 }]
sources:
  - { name: stats_source, type: file, path: data/stats.parquet,
      timestamp_field: event_timestamp }
feature_views:
  - name: stats
    entities: [driver]
    source: stats_source
    ttl: 7d
    features:
      - { name: conv_rate, dtype: float64 }
      - { name: trips, dtype: int64 }
"""

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import pyarrow as pa
    import quiver

    store = quiver.FeatureStore(repo_path=sys.argv[1])
    n, end = int(sys.argv[2]), int(sys.argv[3])
    labels = pa.table({
        "driver_id": np.repeat(np.arange(1, n // 4 + 1, dtype=np.int64), 4),
        "event_timestamp": pa.array(
            np.tile(end - np.array([1, 5, 18, 29]) * 3_600_000_000 - 1_800_000_000, n // 4),
            pa.timestamp("us", tz="UTC")),
    })
    features = ["stats:conv_rate", "stats:trips"]

    def faults():
        # Arrow in and out: the result's buffers are the module's, dropped at once.
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        assert store.get_historical_features(labels, features).to_arrow().num_rows == n
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    first = faults()
    for _ in range(3):  # the allocator's chunks settle over the first calls
        faults()
    paused = []
    for _ in range(3):
        time.sleep(1.5)  # a pause as between notebook cells
        paused.append(faults())
    print(json.dumps({"first": first, "paused": paused}))
    """
)


def test_a_retrieval_seconds_after_another_reuses_its_memory(tmp_path):
    rows = DRIVERS * 4
    end = 1_780_000_000_000_000  # µs, 2026-05-28
    rng = np.random.default_rng(3)
    (tmp_path / "data").mkdir()
    stamp = end - np.tile(np.array([2, 7, 19, 30]), DRIVERS) * 3_600_000_000
    pq.write_table(
        pa.table({
            "driver_id": np.repeat(np.arange(1, DRIVERS + 1, dtype=np.int64), 4),
            "event_timestamp": pa.array(stamp, pa.timestamp("us", tz="UTC")),
            "conv_rate": rng.random(rows),
            "trips": rng.integers(0, 1000, rows),
        }),
        tmp_path / "data" / "stats.parquet",
    )
    (tmp_path / "quiver.yaml").write_text(
        "project: memory\nregistry: data/registry\n"
        "offline_store: { type: delta, path: data/offline }\n"
        "online_store: { type: embedded, path: data/online }\n"
    )
    (tmp_path / "features.yaml").write_text(FEATURES)
    store = quiver.FeatureStore(repo_path=tmp_path)
    store.apply()
    store.ingest()

    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(rows), str(end)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The first call faults its buffers in (thousands of pages); a call after a pause
    # finds most of them still there. Handed back in between, nearly all fault again.
    # The median of three pauses: one may meet the allocator's periodic purge.
    paused = sorted(result["paused"])[1]
    assert paused * 4 < result["first"], result
