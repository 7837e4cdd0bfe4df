"""Soak test of the HTTP service: many clients, valid and hostile requests, reloads, for minutes.

Builds the default small twin encoder (random weights) and a collection of ``--n`` items, starts
``retrieval serve`` on a free loopback port in a child process, then for ``--minutes`` (default
10) runs ``--clients`` (default 16) concurrent clients, each sending a random mix of

* valid requests (~70 %): text, image upload, embedding and item searches with varied ``where``
  filters (values, lists, ranges, modality), item metadata, collection info, clip-retrieval's
  ``/knn-service`` and ``/metadata``;
* invalid requests (~30 %): empty or over-long text, ``k`` out of range, unknown or hidden filter
  fields, JSON nested too deeply, bodies over the endpoint's limit, broken JSON, non-image
  uploads, vectors of the wrong dim, unknown collections and items, a foreign ``Host`` header and
  cross-site posts;

and a ``reload`` every ``--reload-every`` seconds (default 30). It reports errors on valid
requests (anything but 200), answers to invalid requests that were not a 4xx, every 5xx, and the
server's resident memory (RSS) at the end against its value after ``--warmup`` seconds (target:
within 10 %; a leak shows here). Prints a table and writes ``benchmarks/results/soak.md``.

    python benchmarks/bench_soak.py [--minutes 10] [--clients 16] [--n 20000] [--reload-every 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import WORDS, _free_port, _png_pool, build

COLLECTION = "bench"
HIDDEN = "path"  # served with --hide-field path: filtering on it must be refused


def start_server(model_dir: Path, coll_dir: Path, port: int, workers: int) -> subprocess.Popen[str]:
    import httpx

    cmd = [
        sys.executable, "-m", "retrieval", "-q", "serve", f"{COLLECTION}={coll_dir}", "--model", str(model_dir),
        "--port", str(port), "--reload-interval", "0", "--workers", str(workers), "--hide-field", HIDDEN,
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


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc; psutil elsewhere)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class Requests:
    """Builds one random request: ``(kind, valid, method, path, keyword arguments for httpx)``."""

    def __init__(self, rng: random.Random, n: int, dim: int, images: list[bytes]) -> None:
        self.rng, self.n, self.dim, self.images = rng, n, dim, images

    def _where(self) -> dict | None:
        r = self.rng
        choice = r.randrange(6)
        if choice == 0:
            return None
        if choice == 1:
            return {"modality": r.choice(["image", "text"])}
        if choice == 2:
            return {
                "caption": [" ".join(r.choices(WORDS, k=r.randint(3, 8))) for _ in range(r.randint(1, 50))]
            }
        if choice == 3:
            lo = r.choice(WORDS)
            return {"caption": {"gte": lo, "lt": lo + "~"}}
        if choice == 4:
            return {"modality": "image", "caption": {"gt": r.choice(WORDS)}}
        return {"modality": ["image", "text"]}

    def _vector(self, dim: int | None = None) -> list[float]:
        return [self.rng.gauss(0, 1) for _ in range(dim or self.dim)]

    def valid(self) -> tuple[str, str, str, dict]:
        r = self.rng
        kind = r.choice(["text", "text", "image", "embedding", "item", "get_item", "info", "knn", "metadata"])
        base = f"/collections/{COLLECTION}"
        k = r.randint(1, 50)
        if kind == "text":
            body = {"text": " ".join(r.choices(WORDS, k=r.randint(1, 8))), "k": k, "where": self._where()}
            return kind, "POST", f"{base}/search/text", {"json": body}
        if kind == "image":
            data = {"k": str(k)}
            where = self._where()
            if where:
                data["where"] = json.dumps(where)
            files = {"image": ("q.png", r.choice(self.images), "image/png")}
            return kind, "POST", f"{base}/search/image", {"files": files, "data": data}
        if kind == "embedding":
            return kind, "POST", f"{base}/search/embedding", {"json": {"embedding": self._vector(), "k": k}}
        if kind == "item":
            return kind, "POST", f"{base}/search/item", {"json": {"id": r.randrange(self.n), "k": k}}
        if kind == "get_item":
            return kind, "GET", f"{base}/items/{r.randrange(self.n)}", {}
        if kind == "info":
            return kind, "GET", base, {}
        if kind == "knn":
            body = {"text": r.choice(WORDS), "num_images": k, "indice_name": COLLECTION, "modality": "image"}
            return kind, "POST", "/knn-service", {"content": json.dumps(body)}
        ids = [r.randrange(self.n) for _ in range(r.randint(1, 40))]
        return kind, "POST", "/metadata", {"content": json.dumps({"ids": ids, "indice_name": COLLECTION})}

    def invalid(self) -> tuple[str, str, str, dict]:
        r = self.rng
        base = f"/collections/{COLLECTION}"
        cases = {
            "empty text": ("POST", f"{base}/search/text", {"json": {"text": "  "}}),
            "long text": ("POST", f"{base}/search/text", {"json": {"text": "a " * 5000}}),
            "k out of range": ("POST", f"{base}/search/text", {"json": {"text": "red", "k": 10_000}}),
            "unknown field": (
                "POST",
                f"{base}/search/text",
                {"json": {"text": "red", "where": {"colour": 1}}},
            ),
            "hidden field": (
                "POST",
                f"{base}/search/text",
                {"json": {"text": "red", "where": {HIDDEN: "/data"}}},
            ),
            "deep json": (
                "POST",
                f"{base}/search/text",
                {"content": '{"text": "red", "where": ' + "[" * 3000 + "]" * 3000 + "}"},
            ),
            "body too large": (
                "POST",
                f"{base}/search/text",
                {"json": {"text": "red", "pad": "x" * 100_000}},
            ),
            "broken json": ("POST", "/knn-service", {"content": '{"text": "red"'}),
            "not an image": (
                "POST",
                f"{base}/search/image",
                {"files": {"image": ("q.png", os.urandom(2000), "image/png")}},
            ),
            "bad base64": ("POST", "/knn-service", {"content": json.dumps({"image": "!!not base64!!"})}),
            "wrong dim": (
                "POST",
                f"{base}/search/embedding",
                {"json": {"embedding": self._vector(self.dim + 1)}},
            ),
            "unknown collection": ("GET", "/collections/nope", {}),
            "unknown item": ("GET", f"{base}/items/{10**12}", {}),
            "foreign host": ("GET", base, {"headers": {"host": "evil.example"}}),
            "cross-site post": (
                "POST",
                f"{base}/search/text",
                {"json": {"text": "red"}, "headers": {"origin": "http://evil.example"}},
            ),
            "cross-site reload": ("POST", f"{base}/reload", {"headers": {"origin": "http://evil.example"}}),
        }
        kind = r.choice(list(cases))
        method, path, kwargs = cases[kind]
        return kind, method, path, kwargs


def soak(base: str, args: argparse.Namespace, dim: int, images: list[bytes], server_pid: int) -> dict:
    import httpx

    stop = threading.Event()
    lock = threading.Lock()
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    first_problem: list[str] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    warmup = min(args.warmup, args.minutes * 60 / 3)
    rss: dict[str, float] = {}
    samples: list[tuple[float, float]] = []

    def note(group: str, kind: str, status: int, problem: str | None) -> None:
        with lock:
            stats[group]["sent"] += 1
            stats[group][f"kind:{kind}"] += 1
            if status >= 500:
                stats[group]["5xx"] += 1
            if problem:
                stats[group]["problems"] += 1
                if not first_problem:
                    first_problem.append(problem)

    def client(seed: int) -> None:
        requests = Requests(random.Random(seed), args.n, dim, images)
        with httpx.Client(base_url=base, timeout=60) as http:
            while not stop.is_set() and time.monotonic() < end:
                valid = requests.rng.random() < 0.7
                kind, method, path, kwargs = requests.valid() if valid else requests.invalid()
                try:
                    response = http.request(method, path, **kwargs)
                    status = response.status_code
                    if valid:
                        problem = None if status == 200 else f"{kind}: HTTP {status} {response.text[:200]}"
                    else:
                        body = response.json() if "json" in response.headers.get("content-type", "") else {}
                        shaped = isinstance(body, dict) and {"error", "detail"} <= set(body)
                        problem = (
                            None
                            if 400 <= status < 500 and shaped
                            else f"{kind}: HTTP {status} {response.text[:200]}"
                        )
                except httpx.HTTPError as exc:
                    status, problem = 599, f"{kind}: {type(exc).__name__}: {exc}"
                note("valid" if valid else "invalid", kind, status, problem)

    def reloader() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while not stop.wait(args.reload_every):
                if time.monotonic() >= end:
                    return
                response = http.post(f"/collections/{COLLECTION}/reload")
                note(
                    "reload",
                    "reload",
                    response.status_code,
                    None if response.status_code == 200 else response.text,
                )

    def monitor() -> None:
        while not stop.wait(1.0):
            now = time.monotonic() - started
            value = rss_mib(server_pid)
            samples.append((now, value))
            if "warm" not in rss and now >= warmup:
                rss["warm"] = value
            if now >= args.minutes * 60:
                return

    threads = [
        threading.Thread(target=client, args=(args.seed + i,), daemon=True) for i in range(args.clients)
    ]
    threads += [threading.Thread(target=reloader, daemon=True), threading.Thread(target=monitor, daemon=True)]
    for t in threads:
        t.start()
    try:
        for t in threads[: args.clients]:
            t.join()
    finally:
        stop.set()
    rss["end"] = rss_mib(server_pid)
    rss.setdefault("warm", samples[0][1] if samples else rss["end"])
    rss["max"] = max([v for _, v in samples] + [rss["end"]])
    return {
        "stats": stats,
        "rss": rss,
        "seconds": time.monotonic() - started,
        "warmup": warmup,
        "first_problem": first_problem[0] if first_problem else "",
    }


def report(args: argparse.Namespace, info: dict, result: dict) -> bool:
    stats, rss = result["stats"], result["rss"]
    valid, invalid, reload = stats["valid"], stats["invalid"], stats["reload"]
    growth = (rss["end"] - rss["warm"]) / rss["warm"] * 100 if rss["warm"] else 0.0
    total_5xx = valid["5xx"] + invalid["5xx"] + reload["5xx"]
    ok = valid["problems"] == 0 and invalid["problems"] == 0 and total_5xx == 0 and abs(growth) <= 10.0
    rows = [
        ("valid requests", valid["sent"], f"{valid['problems']} errors (target 0)"),
        (
            "invalid requests",
            invalid["sent"],
            f"{invalid['problems']} not a 4xx {{error, detail}} (target 0)",
        ),
        ("reloads", reload["sent"], f"{reload['problems']} failed"),
        ("5xx answers", total_5xx, "target 0"),
        (
            "server RSS",
            f"{rss['warm']:.0f} -> {rss['end']:.0f} MiB",
            f"{growth:+.1f} % after warm-up (target within 10 %), peak {rss['max']:.0f} MiB",
        ),
        ("requests/s", f"{(valid['sent'] + invalid['sent']) / result['seconds']:.1f}", ""),
    ]
    lines = ["| measure | value | note |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    table = "\n".join(lines)

    def kinds(counter: collections.Counter) -> str:
        return ", ".join(f"{k[5:]} {n}" for k, n in sorted(counter.items()) if k.startswith("kind:"))

    print()
    print(table)
    print(f"\nverdict: {'PASS' if ok else 'FAIL'}")
    if result["first_problem"]:
        print(f"first problem: {result['first_problem']}")
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    text = f"""# HTTP service soak test

`python benchmarks/bench_soak.py --minutes {args.minutes:g} --clients {args.clients} --n {args.n} --reload-every {args.reload_every:g}`

- Collection: {info["count"]} items, dim {info["dim"]}, index `{info["index_spec"]}`; served by `retrieval serve`
  in its own process on 127.0.0.1 with `--hide-field {HIDDEN}`, {args.workers} worker threads.
- {args.clients} clients for {result["seconds"]:.0f} s, each sending the next request as soon as the previous
  one is answered: ~70 % valid requests with varied `where` filters, ~30 % invalid ones; a `reload` every
  {args.reload_every:g} s. RSS is the server process's resident memory after {result["warmup"]:.0f} s of
  warm-up and at the end.
- Valid requests sent: {kinds(valid)}.
- Invalid requests sent: {kinds(invalid)}.
- Machine: {machine}.
- Verdict: **{"PASS" if ok else "FAIL"}**{f" (first problem: `{result['first_problem'][:200]}`)" if result["first_problem"] else ""}

{table}
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"\nwrote {out}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the clients run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--n", type=int, default=20_000, help="items in the collection")
    parser.add_argument("--reload-every", type=float, default=30.0, help="seconds between reloads")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the reference RSS")
    parser.add_argument("--workers", type=int, default=4, help="server worker threads")
    parser.add_argument("--index", default="auto", help="index spec of the collection")
    parser.add_argument(
        "--workdir", default=None, help="where to build (default: a temporary folder in the cache)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.md"))
    args = parser.parse_args()

    import httpx

    from retrieval.paths import cache_dir

    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-soak-", dir=cache_dir("benchmarks")))
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        print(f"building a {args.n}-item collection in {workdir} ...", flush=True)
        model_dir, coll_dir, _ = build(workdir, args.n, args.index, args.seed)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(model_dir, coll_dir, port, args.workers)
        info = httpx.get(f"{base}/collections/{COLLECTION}", timeout=30).json()
        print(f"serving {info['count']} items on {base}; soaking for {args.minutes:g} min ...", flush=True)
        images = _png_pool(np.random.default_rng(args.seed), 32)
        result = soak(base, args, int(info["dim"]), images, server.pid)
        ok = report(args, info, result)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
