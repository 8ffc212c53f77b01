#!/usr/bin/env python3
"""The DuckDB side of the backfill comparison in BENCHMARKS.md.

Exports the track events of a stopped Seam data folder (each with the profile Seam placed it on) to Parquet,
then times DuckDB answering the same question as the segment `seam bench ingest --backfill` defines:
who has at least 2 "Product Viewed" events with category "coffee" in the last 30 days.

usage: scripts/duckdb-backfill.py DATA_DIR [OUT.parquet]   (needs `pip install duckdb`)
"""
import csv
import json
import sqlite3
import sys
import time

import duckdb

data = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/seam-events.parquet"

conn = sqlite3.connect(f"file:{data}/projections.db?mode=ro", uri=True)
conn.execute(f"ATTACH 'file:{data}/seam.db?mode=ro' AS log")
rows = []
csv_path = out + ".csv"
for profile, ts, name, body in conn.execute(
    "SELECT t.profile, t.ts, e.name, e.body FROM timeline t JOIN log.events e ON e.seq = t.seq "
    "WHERE e.type = 'track'"
):
    props = json.loads(body).get("properties") or {}
    rows.append((profile, ts, name, props.get("category"), props.get("product_id")))
with open(csv_path, "w", newline="") as f:
    csv.writer(f).writerows(rows)
db = duckdb.connect()
db.execute(
    f"COPY (SELECT * FROM read_csv('{csv_path}', header = false, columns = {{'profile': 'BIGINT', "
    "'ts': 'BIGINT', 'name': 'VARCHAR', 'category': 'VARCHAR', 'product_id': 'VARCHAR'})) "
    f"TO '{out}' (FORMAT parquet)"
)
db.close()
now = max(r[1] for r in rows)
since = now - 30 * 86_400_000

db = duckdb.connect()
query = f"""
    SELECT profile FROM read_parquet('{out}')
    WHERE name = 'Product Viewed' AND category = 'coffee' AND ts > {since} AND ts <= {now}
    GROUP BY profile HAVING count(*) >= 2
"""
times = []
for _ in range(5):
    t = time.perf_counter()
    members = db.execute(query).fetchall()
    times.append(time.perf_counter() - t)
print(f"{len(rows)} track events exported; {len(members)} members")
print(f"duckdb {duckdb.__version__}: min {min(times):.3f} s, median {sorted(times)[2]:.3f} s over 5 runs")
