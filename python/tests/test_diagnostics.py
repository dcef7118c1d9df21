"""Diagnostics go to stderr as for the CLI: warnings only by default, more with
QUIVER_LOG (here a retrieval's phase timings)."""

import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import sys
    import pandas as pd
    import quiver
    store = quiver.FeatureStore(sys.argv[1])
    df = pd.DataFrame({"driver_id": [1001, 1002],
                       "event_timestamp": pd.Timestamp("2026-01-05 12:30", tz="UTC")})
    store.get_historical_features(df, ["driver_hourly_stats:conv_rate"])
    """
)


def run(demo_path, **env):
    child_env = {k: v for k, v in os.environ.items() if k != "QUIVER_LOG"}
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(demo_path)],
        env=child_env, capture_output=True, text=True, timeout=120, check=True,
    ).stderr


def test_quiver_log_shows_phase_timings_on_stderr(demo_path):
    err = run(demo_path, QUIVER_LOG="quiver_offline=debug")
    assert "historical retrieval" in err and 'phase="label index' in err, err
    # Not a terminal: no colour codes.
    assert "\x1b[" not in err


def test_nothing_is_logged_by_default(demo_path):
    assert run(demo_path) == ""
