"""Reading corpora: manifest rows per second, and image bytes read back from Parquet / Arrow rows
against the same images as files in a folder or members of a tar shard.

Each case runs in a fresh subprocess, so its peak RSS is its own. The image cases write N JPEGs
(256 x 192, ~10 KB each) in five layouts: a folder of files, one tar shard, a Parquet file with
``datasets``' 100-row groups, a Parquet file with one row group (what ``pyarrow.write_table`` of
a small table or pandas gives), and an Arrow IPC stream (``save_to_disk``). For each: the time of
``read_corpus`` and the images read back through their references (``read_ref_bytes``) in order
(as ``embed`` reads them) and 300 of them in a random order (as shuffled training reads them), after the first
reference has opened what is opened once per process (a tar's member index, a table's layout).

    python benchmarks/bench_readers.py             # 20k images, 1M manifest rows (minutes, ~1 GB of disk in /tmp)
    python benchmarks/bench_readers.py --quick     # 500 images, 50k rows: a check, seconds

Prints a table and writes it to benchmarks/results/readers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "readers.md"

WRITE_CODE = r"""
import io, json, sys, tarfile
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from PIL import Image

root, n_images, n_rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
base = rng.integers(0, 255, (192, 256, 3), dtype=np.uint8)
blobs = []
for i in range(n_images):
    pixels = np.roll(base, i, axis=1) // (1 + i % 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    blobs.append(buffer.getvalue())
(root / "folder").mkdir()
for i, blob in enumerate(blobs):
    (root / "folder" / f"{i:07d}.jpg").write_bytes(blob)
    (root / "folder" / f"{i:07d}.txt").write_text(f"image {i}")
with tarfile.open(root / "shard.tar", "w") as tar:
    for i, blob in enumerate(blobs):
        for name, data in ((f"{i:07d}.jpg", blob), (f"{i:07d}.txt", f"image {i}".encode())):
            info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
table = pa.table({
    "image": pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(blobs)], type=struct),
    "caption": [f"image {i}" for i in range(n_images)],
})
pq.write_table(table, root / "groups100.parquet", row_group_size=100)
pq.write_table(table, root / "one_group.parquet", row_group_size=n_images)
with pa.OSFile(str(root / "stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
    w.write_table(table, max_chunksize=1000)
rows = [{"image": f"folder/{i % n_images:07d}.jpg", "caption": f"row {i}", "split": "train"} for i in range(n_rows)]
(root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
pq.write_table(pa.Table.from_pylist(rows), root / "manifest.parquet")
print(sum(len(b) for b in blobs))
"""

CASE_CODE = r"""
import json, random, resource, sys, time
import pyarrow, pyarrow.compute, pyarrow.parquet  # imported before timing: the cases time reading only
from retrieval.data import read_corpus
from retrieval.data.images import read_ref_bytes

source, read_back = sys.argv[1], sys.argv[2] == "1"
RANDOM = 300  # references read in a random order (a large row group costs a pass per read)
t0 = time.perf_counter()
corpus = read_corpus(source)
read_s = time.perf_counter() - t0
out = {"records": len(corpus), "read_s": read_s}
if read_back:
    refs = list(dict.fromkeys(r.image for r in corpus))
    read_ref_bytes(refs[-1])  # opens what a reader opens once (a tar's index, a table's layout)
    t0 = time.perf_counter()
    total = sum(len(read_ref_bytes(ref)) for ref in refs)
    out["in_order_per_s"] = len(refs) / (time.perf_counter() - t0)
    order = random.Random(0).sample(refs, min(len(refs), RANDOM))
    t0 = time.perf_counter()
    total += sum(len(read_ref_bytes(ref)) for ref in order)
    out["random_per_s"] = len(order) / (time.perf_counter() - t0)
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script in seconds")
    parser.add_argument("--images", type=int, default=None, help="images per layout")
    parser.add_argument("--rows", type=int, default=None, help="manifest rows")
    args = parser.parse_args()
    n_images = args.images or (500 if args.quick else 20_000)
    n_rows = args.rows or (50_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        image_bytes = int(run(WRITE_CODE, str(root), str(n_images), str(n_rows)))
        print(f"wrote the corpora in {time.perf_counter() - t0:.0f} s ({image_bytes / 2**20:.0f} MB of JPEG)")
        cases = [
            ("image folder with .txt sidecars", "folder", True),
            ("tar shard", "shard.tar", True),
            ("Parquet, 100-row groups", "groups100.parquet", True),
            ("Parquet, one row group", "one_group.parquet", True),
            ("Arrow IPC stream", "stream.arrow", True),
            (f"JSON Lines manifest, {n_rows} rows", "manifest.jsonl", False),
            (f"Parquet manifest, {n_rows} rows", "manifest.parquet", False),
        ]
        rows = []
        for name, path, read_back in cases:
            result = json.loads(run(CASE_CODE, str(root / path), "1" if read_back else "0"))
            rows.append((name, result))
            print(name, result, flush=True)
    lines = [
        "# Reading corpora",
        "",
        f"`python benchmarks/bench_readers.py{' --quick' if args.quick else ''}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {n_images} JPEGs of 256 x 192 "
        f"({image_bytes / n_images / 1024:.1f} KB each). One process per case (peak RSS is its own).",
        "",
        "| source | records | read_corpus (s) | rows/s | bytes read in order (images/s) | in random order (images/s) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        ordered = f"{r['in_order_per_s']:,.0f}" if "in_order_per_s" in r else ""
        shuffled = f"{r['random_per_s']:,.0f}" if "random_per_s" in r else ""
        lines.append(
            f"| {name} | {r['records']:,} | {r['read_s']:.2f} | {r['records'] / r['read_s']:,.0f} | "
            f"{ordered} | {shuffled} | {r['peak_mb']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table, encoding="utf-8")
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
