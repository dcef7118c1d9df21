"""Served equals trained: for the same keys at the same time, get_online_features gives
get_historical_features' values, bit for bit, for snapshot, aggregated and on-demand
features."""

import math

import pandas as pd

from conftest import READ_AT


def test_online_equals_historical_at_the_same_time(store):
    drivers = list(range(1001, 1101))
    customers = [5001 + (i * 7) % 1200 for i in range(len(drivers))]  # some unknown
    distances = [0.5 + i % 13 for i in range(len(drivers))]
    services = ["ride_ranking_v1", "ride_ranking_v2", "ride_ranking_v3"]
    for service in services:
        entity_df = pd.DataFrame(
            {
                "driver_id": drivers,
                "customer_id": customers,
                "event_timestamp": [READ_AT] * len(drivers),
                "distance_km": distances,
            }
        )
        trained = store.get_historical_features(entity_df, feature_service=service).to_arrow()
        served = store.get_online_features(
            feature_service=service,
            # Request data only where an on-demand view needs it (a key that is
            # neither a join key nor a request field is an error).
            entity_rows=[
                {"driver_id": d, "customer_id": c}
                | ({"distance_km": k} if service == "ride_ranking_v2" else {})
                for d, c, k in zip(drivers, customers, distances)
            ],
            at=READ_AT,
        )
        values = served.to_dict()
        statuses = served.statuses()
        for name in served.feature_names:
            t = trained.column(name).to_pylist()
            s = values[name]
            assert len(t) == len(s) == len(drivers)
            for i, (a, b) in enumerate(zip(t, s)):
                if isinstance(a, float) and isinstance(b, float):
                    # Bit for bit, not approximately.
                    assert a.hex() == b.hex(), (service, name, i, a, b)
                    assert not math.isnan(a)
                else:
                    assert a == b, (service, name, i, a, b)
                # Not PRESENT: no value (a count over no events is 0, as trained).
                if statuses[name][i] != "PRESENT" and not name.startswith("count"):
                    assert b is None, (service, name, i, b)
        present = sum(st == "PRESENT" for col in statuses.values() for st in col)
        assert present > len(drivers), f"{service}: too few values to compare"
