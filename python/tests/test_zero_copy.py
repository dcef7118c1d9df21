"""Results cross into pandas and polars without copying feature columns: the numpy
and polars buffers are the Arrow buffers Rust built."""

import numpy as np
import pandas as pd
import pyarrow as pa

from conftest import READ_AT


def training(store, n=2000):
    df = pd.DataFrame({"driver_id": [1001 + i % 100 for i in range(n)],
                       "event_timestamp": [READ_AT] * n})
    return store.get_historical_features(
        df, ["driver_hourly_stats:conv_rate", "driver_hourly_stats:avg_daily_trips"])


def data_address(chunked: pa.ChunkedArray) -> int:
    assert chunked.num_chunks == 1
    arr = chunked.chunk(0)
    return arr.buffers()[1].address + arr.offset * arr.type.bit_width // 8


def test_pandas_shares_the_arrow_buffers(store):
    job = training(store)
    table = job.to_arrow()
    assert table.column("conv_rate").null_count == 0
    pdf = job.to_pandas()
    for name in ["conv_rate", "avg_daily_trips"]:
        values = pdf[name].to_numpy()
        assert values.__array_interface__["data"][0] == data_address(table.column(name)), name
        assert not values.flags.owndata


def test_polars_shares_the_arrow_buffers(store):
    job = training(store)
    table = job.to_arrow()
    pol = job.to_polars()
    for name in ["conv_rate", "avg_daily_trips"]:
        # A view of polars' own buffer (allow_copy=False raises rather than copy).
        values = pol[name].to_numpy(allow_copy=False)
        assert values.__array_interface__["data"][0] == data_address(table.column(name)), name


def test_arrow_dtypes_keep_nulls_without_copies(store):
    job = training(store)
    pdf = job.to_pandas(types_mapper=pd.ArrowDtype)
    arrow_back = pa.array(pdf["conv_rate"])
    assert arrow_back.buffers()[1].address == data_address(job.to_arrow().column("conv_rate"))
    assert np.isfinite(pdf["conv_rate"].to_numpy(dtype="float64")).all()
