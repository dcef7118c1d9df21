#!/usr/bin/env python3
"""The peer figure of `quiver-bench pit`: the same training set with DuckDB, file to file.

    python3 scripts/peers/duckdb_pit.py /tmp/quiver-bench-pit-M

Same semantics as quiver's historical retrieval over the bench data: for each label row
(entity_id, event_timestamp), the feature row of that entity with the greatest
event_timestamp <= the label's time (ties: the greatest created_timestamp), null when
older than the ttl of 30 days; every label row kept, in input order. Prints seconds and
the process's peak RSS.
"""
import resource
import sys
import time

import duckdb

d = sys.argv[1]
threads = sys.argv[2] if len(sys.argv) > 2 else "2"
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
t = time.time()
con.execute(f"""
COPY (
  WITH l AS (SELECT *, row_number() OVER () AS rn FROM read_parquet('{d}/labels.parquet')),
       f AS (SELECT * FROM read_parquet('{d}/features/*.parquet')
             QUALIFY row_number() OVER (PARTITION BY entity_id, event_timestamp
                                        ORDER BY created_timestamp DESC NULLS LAST) = 1)
  SELECT l.* EXCLUDE (rn),
         {", ".join(f"CASE WHEN l.event_timestamp - f.event_timestamp <= INTERVAL 30 DAY THEN f.f{i} END AS f{i}" for i in range(10))}
  FROM l ASOF LEFT JOIN f
    ON l.entity_id = f.entity_id AND l.event_timestamp >= f.event_timestamp
  ORDER BY l.rn
) TO '{d}/training-duckdb.parquet' (FORMAT parquet, COMPRESSION snappy)
""")
secs = time.time() - t
rows = con.execute(f"SELECT count(*), count(f0) FROM read_parquet('{d}/training-duckdb.parquet')").fetchone()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"duckdb {duckdb.__version__}: {secs:.2f} s, peak RSS {rss:.0f} MiB, rows={rows[0]} matched={rows[1]}")
