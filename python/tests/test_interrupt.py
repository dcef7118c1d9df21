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
    """Another Python thread runs while a call is in Rust. With a switch interval far
    longer than the test, Python never takes the GIL from the calling thread: the main
    thread can run between the calling thread's two flags only if the call released
    the GIL itself, and only often if it released it while Rust works."""
    import threading

    import numpy as np
    import pandas as pd
    import pyarrow as pa

    n = 1_000_000
    df = pd.DataFrame({"driver_id": 1001 + np.arange(n) % 100,
                       "event_timestamp": pd.Timestamp("2026-01-05 12:30", tz="UTC")})
    table = pa.Table.from_pandas(df, preserve_index=False)
    state = {"in_call": False, "done": False}
    seen_during_call = 0

    def call():
        state["in_call"] = True
        store._store.historical(table, ["driver_hourly_stats:conv_rate"], None, False, None)
        state["done"] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        worker = threading.Thread(target=call)
        worker.start()
        while not state["done"]:
            if state["in_call"] and not state["done"]:
                seen_during_call += 1
            time.sleep(0.001)  # lets the worker take the GIL
        worker.join()
    finally:
        sys.setswitchinterval(old)
    # Released for the whole call, the main thread runs about once a millisecond of
    # it (a few hundred times); held, at most once or twice (pyarrow itself releases
    # the GIL while it imports the result, at the end).
    assert seen_during_call >= 10, seen_during_call
