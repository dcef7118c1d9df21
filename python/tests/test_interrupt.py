"""Ctrl-C interrupts a long call: the GIL is released while Rust works, and the wait
looks for signals, so KeyboardInterrupt is raised at once instead of after the call."""

import os
import signal
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import pandas as pd
    import quiver
    store = quiver.FeatureStore(sys.argv[1])
    n = 2_000_000
    df = pd.DataFrame({"driver_id": 1001 + np.arange(n) % 100,
                       "event_timestamp": pd.Timestamp("2026-01-05 12:30", tz="UTC")})
    # The same call, timed once to completion.
    t = time.perf_counter()
    store.get_historical_features(df, ["driver_hourly_stats:conv_rate"])
    print("full", time.perf_counter() - t, flush=True)
    print("started", flush=True)
    t = time.perf_counter()
    try:
        store.get_historical_features(df, ["driver_hourly_stats:conv_rate"])
        print("completed", time.perf_counter() - t, flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.perf_counter() - t, flush=True)
    """
)


def test_ctrl_c_interrupts_a_long_call(demo_path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(demo_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    full = float(child.stdout.readline().split()[1])
    assert child.stdout.readline().strip() == "started"
    time.sleep(min(0.2, full / 4))
    os.kill(child.pid, signal.SIGINT)
    outcome, seconds = child.stdout.readline().split()
    child.wait(timeout=60)
    assert outcome == "interrupted", f"the call ran to its end ({seconds} s of {full} s)"


def test_the_gil_is_released_while_rust_works(store):
    """Another Python thread runs during a long call: the longest pause it sees is a
    small part of the call (were the GIL held, it would wait for the whole call)."""
    import threading

    import numpy as np
    import pandas as pd

    n = 1_000_000
    df = pd.DataFrame({"driver_id": 1001 + np.arange(n) % 100,
                       "event_timestamp": pd.Timestamp("2026-01-05 12:30", tz="UTC")})
    table = __import__("pyarrow").Table.from_pandas(df, preserve_index=False)
    done = threading.Event()
    took = []

    def call():
        t = time.perf_counter()
        store.get_historical_features(table, ["driver_hourly_stats:conv_rate"])
        took.append(time.perf_counter() - t)
        done.set()

    worker = threading.Thread(target=call)
    last, longest = time.perf_counter(), 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        time.sleep(0.001)
    worker.join()
    assert longest < took[0] / 2, (longest, took[0])
