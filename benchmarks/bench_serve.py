"""Load on the HTTP service: concurrent clients sending mixed text and image queries over loopback.

Builds the default small twin encoder (random weights: latency does not depend on training) and
a collection of ``--n`` items (clustered random unit vectors under the model's fingerprint, 90 %
images and 10 % texts with realistic metadata), starts ``retrieval serve`` on a free loopback
port in a child process, then runs two phases with ``--clients`` concurrent HTTP clients sending
``--queries`` queries each phase (half text, half uploaded PNG images; k=10, images only):

1. ``static``: the collection does not change (first one client alone, for the latency of an
   unloaded server, then all the clients);
2. ``writes + reloads``: a second process adds ``--add-batch`` items at a time to the collection
   (saving after each batch) while the server notices the change and reopens it.

Each phase stops after its queries or ``--max-seconds``, whichever comes first. Prints a table
(errors, p50/p99 latency, throughput) and writes ``benchmarks/results/serve.md``.

    python benchmarks/bench_serve.py [--n 100000] [--clients 16] [--queries 800] [--max-seconds 90]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "small",
    "large",
    "dog",
    "cat",
    "car",
    "tree",
    "sky",
    "house",
    "boat",
    "bird",
    "on",
    "under",
    "near",
    "a",
    "the",
    "with",
]


def _captions(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


def _clustered(rng: np.random.Generator, centres: np.ndarray, m: int) -> np.ndarray:
    dim = centres.shape[1]
    noise = rng.standard_normal((m, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))  # [m, D]
    vectors = centres[rng.integers(0, len(centres), m)] + noise  # [m, D]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _metadata(rng: np.random.Generator, start: int, m: int) -> list[dict]:
    out = []
    for i, caption in enumerate(_captions(rng, m)):
        item = start + i
        if rng.random() < 0.9:
            out.append({"modality": "image", "path": f"/data/images/{item:07d}.jpg", "caption": caption})
        else:
            out.append({"modality": "text", "caption": caption})
    return out


def build(workdir: Path, n: int, index: str, seed: int) -> tuple[Path, Path, float]:
    """Save the model and fill the collection; returns (model dir, collection dir, build seconds)."""
    from indexes import Collection
    from retrieval.config import ModelConfig
    from retrieval.model import build_model

    rng = np.random.default_rng(seed)
    model = build_model(ModelConfig(), _captions(rng, 2000), device="cpu")
    model_dir = workdir / "model"
    model.save(model_dir)
    coll_dir = workdir / "collection"
    started = time.perf_counter()
    centres = rng.standard_normal((1000, model.embed_dim)).astype(np.float32)  # [C, D]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    np.save(workdir / "centres.npy", centres)
    with Collection.create(coll_dir, model.embed_dim, index=index, fingerprint=model.fingerprint()) as coll:
        for lo in range(0, n, 20_000):
            m = min(n, lo + 20_000) - lo
            coll.add(_clustered(rng, centres, m), _metadata(rng, lo, m))
    return model_dir, coll_dir, time.perf_counter() - started


def writer(coll_dir: str, seconds: float, batch: int) -> None:
    """Child process: add ``batch`` items and save, repeatedly, for ``seconds`` or until a ``stop``
    file appears beside the collection; prints the number of saves and items added."""
    from indexes import Collection

    rng = np.random.default_rng(1234)
    centres = np.load(Path(coll_dir).parent / "centres.npy")
    deadline = time.monotonic() + seconds
    added = batches = 0
    stop = Path(coll_dir).parent / "stop"
    while time.monotonic() < deadline and not stop.exists():
        with Collection.open(coll_dir) as coll:
            coll.add(_clustered(rng, centres, batch), _metadata(rng, 10**7 + added, batch))
        added += batch
        batches += 1
        time.sleep(0.5)
    print(f"{batches} {added}", flush=True)


def _png_pool(rng: np.random.Generator, count: int) -> list[bytes]:
    from PIL import Image

    pool = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        pool.append(buf.getvalue())
    return pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, coll_dir: Path, port: int, workers: int, batch: int) -> subprocess.Popen:
    import httpx

    cmd = [
        sys.executable, "-m", "retrieval", "-q", "serve", f"bench={coll_dir}", "--model", str(model_dir),
        "--port", str(port), "--reload-interval", "1", "--workers", str(workers), "--batch-size", str(batch),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server did not start within 300 s")


def load(base: str, clients: int, queries: int, max_seconds: float, images: list[bytes], seed: int) -> dict:
    """Send ``queries`` mixed queries from ``clients`` threads; latency per request in ms."""
    import httpx

    rng = np.random.default_rng(seed)
    plan = [
        ("text", c) if rng.random() < 0.5 else ("image", int(rng.integers(len(images))))
        for c in _captions(rng, queries)
    ]
    lock = threading.Lock()
    cursor = iter(plan)
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.monotonic() < deadline:
                with lock:
                    job = next(cursor, None)
                if job is None:
                    return
                t0 = time.perf_counter()
                try:
                    if job[0] == "text":
                        r = http.post(
                            "/collections/bench/search/text",
                            json={"text": job[1], "k": 10, "modality": "image"},
                        )
                    else:
                        r = http.post(
                            "/collections/bench/search/image",
                            files={"image": ("q.png", images[job[1]], "image/png")},
                            data={"k": "10", "modality": "image"},
                        )
                    ok = r.status_code == 200 and len(r.json()["hits"]) == 10
                    problem = None if ok else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = repr(exc)
                elapsed = (time.perf_counter() - t0) * 1000.0
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "sent": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "mean": float(lat.mean()),
        "qps": len(latencies) / wall if wall > 0 else 0.0,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items in the collection")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--queries", type=int, default=800, help="queries per phase")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time cap per phase")
    parser.add_argument("--add-batch", type=int, default=2000, help="items the writer adds per save")
    parser.add_argument("--workers", type=int, default=4, help="server worker threads")
    parser.add_argument("--batch-size", type=int, default=32, help="most queries the server encodes together")
    parser.add_argument("--index", default="auto", help="index spec of the collection")
    parser.add_argument(
        "--workdir", default=None, help="where to build (default: a temporary folder in the cache)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.md"))
    parser.add_argument(
        "--writer", nargs=3, metavar=("COLLECTION", "SECONDS", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.writer:
        writer(args.writer[0], float(args.writer[1]), int(args.writer[2]))
        return

    import httpx

    from retrieval.paths import cache_dir

    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-serve-", dir=cache_dir("benchmarks")))
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        print(f"building a {args.n}-item collection in {workdir} ...", flush=True)
        model_dir, coll_dir, build_s = build(workdir, args.n, args.index, args.seed)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(model_dir, coll_dir, port, args.workers, args.batch_size)
        info = httpx.get(f"{base}/collections/bench", timeout=30).json()
        print(
            f"serving {info['count']} items, index {info['index_spec']}, dim {info['dim']} (built in {build_s:.0f} s)"
        )
        images = _png_pool(np.random.default_rng(args.seed), 32)
        load(base, 2, 20, 30, images, args.seed + 99)  # warm-up

        single = load(base, 1, max(50, args.queries // 8), args.max_seconds, images, args.seed + 3)
        static = load(base, args.clients, args.queries, args.max_seconds, images, args.seed + 1)
        rows = [("static, one client", single, 1, "", ""), ("static", static, args.clients, "", "")]
        write_seconds = args.max_seconds
        proc = subprocess.Popen(
            [sys.executable, __file__, "--writer", str(coll_dir), str(write_seconds), str(args.add_batch)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        during = load(base, args.clients, args.queries, args.max_seconds, images, args.seed + 2)
        (workdir / "stop").touch()
        try:
            out, err = proc.communicate(timeout=write_seconds + 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        batches, added = (int(x) for x in out.split()) if out.strip() else (0, 0)
        if proc.returncode:
            print(f"writer failed: {err[-500:]}", file=sys.stderr)
        deadline = time.monotonic() + 60  # the server notices the last save within a reload interval
        after = httpx.get(f"{base}/collections/bench", timeout=30).json()
        while after["count"] < info["count"] + added and time.monotonic() < deadline:
            time.sleep(0.5)
            after = httpx.get(f"{base}/collections/bench", timeout=30).json()
        rows.append(
            ("writes + reloads", during, args.clients, f"{added} in {batches} saves", str(after["reloads"]))
        )
        report(args, info, build_s, rows, after)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def report(args: argparse.Namespace, info: dict, build_s: float, rows: list, after: dict) -> None:
    header = "| phase | clients | queries | errors | p50 ms | p99 ms | mean ms | queries/s | items added | reloads |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, r, clients, added, reloads in rows:
        lines.append(
            f"| {name} | {clients} | {r['sent']} | {r['errors']} | {r['p50']:.1f} | {r['p99']:.1f} | "
            f"{r['mean']:.1f} | {r['qps']:.1f} | {added or '-'} | {reloads or '-'} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    for name, r, *_ in rows:
        if r["first_error"]:
            print(f"first error in {name}: {r['first_error']}")
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    text = f"""# HTTP service under load

`python benchmarks/bench_serve.py --n {args.n} --clients {args.clients} --queries {args.queries} --max-seconds {args.max_seconds:g}`

- Collection: {info["count"]} items (90 % images, 10 % texts), dim {info["dim"]}, index `{info["index_spec"]}`,
  built in {build_s:.0f} s; after the write phase: {after["count"]} items.
- Model: the default small twin encoder (CNN image tower 128 px, GRU text tower), random weights, CPU.
- Server: `retrieval serve` in its own process on loopback, {args.workers} worker threads, queries encoded
  in batches of up to {args.batch_size}, reload check every 1 s.
- Queries: half text, half uploaded 96x96 PNG images; k=10, images only; each client sends the next query
  as soon as the previous one is answered. Latency is measured by the client (HTTP round trip).
- Write phase: a second process opens the collection for writing, adds {args.add_batch} items and saves,
  every 0.5 s; the server reopens the collection when its manifest changes.
- Machine: {machine}; shared with other jobs while measured, so absolute figures are noisy.

{table}
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
