"""The module keeps the memory a retrieval used for the next one: a notebook's calls
come seconds apart, and memory handed back to the system in between comes back as
page faults (zeroed pages) on the next call — a large share of a retrieval's time."""

import resource
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from conftest import READ_AT


def faults_of(f) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_retrieval_seconds_after_another_reuses_its_memory(store):
    n = 400_000
    labels = pa.Table.from_pandas(pd.DataFrame({
        "driver_id": np.arange(n, dtype=np.int64) % 100 + 1001,
        "event_timestamp": pd.Series([READ_AT] * n).astype("datetime64[ns, UTC]"),
    }), preserve_index=False)
    feats = ["driver_hourly_stats:conv_rate", "driver_hourly_stats:avg_daily_trips"]

    def call():
        # Arrow output (built by Rust), dropped at once: no Python-side allocation of
        # the result's size.
        assert store.get_historical_features(labels, feats).to_arrow().num_rows == n

    call()
    warm = faults_of(call)  # right after the first: the memory is still there
    time.sleep(2.5)  # a pause as between notebook cells
    later = faults_of(call)
    # A retrieval of 400k labels touches tens of MiB (thousands of pages) of buffers.
    assert later <= max(4 * warm, 1000), (warm, later)
