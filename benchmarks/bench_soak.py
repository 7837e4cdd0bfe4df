"""Soak test of the HTTP service: many clients, valid, invalid and hostile traffic, reloads, for minutes.

Builds the default small twin encoder (random weights) and a collection of ``--n`` items, plus a
small collection of large photos (``--big-side`` px square JPEGs) served with a media root, starts
``retrieval serve`` on a free loopback port in a child process, then runs two phases:

1. **baseline** (``--baseline-minutes``, default 3): ``--clients`` (default 16) concurrent clients
   sending valid requests only: text, image upload, embedding and item searches with varied
   ``where`` filters (values, lists, ranges, modality), item metadata, collection info,
   clip-retrieval's ``/knn-service`` and ``/metadata``;
2. **hostile** (``--minutes``, default 10): the same clients send ~60 % valid requests, ~25 %
   invalid ones (empty or over-long text, ``k`` out of range or of the wrong type, unknown or
   hidden filter fields, JSON nested too deeply, bodies over the endpoint's limit, broken JSON,
   non-image uploads, invalid base64, vectors of the wrong dim, unknown collections and items, a
   foreign ``Host`` header, cross-site posts) and ~15 % hostile ones: **aspect bombs** (a
   1 x 39,000 PNG upload, a 39,000 x 1 one, a 1 x 8,000 PNG as base64), **lone surrogates** in texts
   and filters, integers past Python's digit limit, **reload spam**; meanwhile ``--thumb-clients``
   (default 4) **flood thumbnails** of the large photos at random sizes (cache misses), and a
   **slow-socket** attacker keeps ``--slow-sockets`` (default 64) connections from another loopback
   address (127.0.0.2) sending their headers a line at a time, reopening each as soon as it is closed.

It reports errors on valid requests (anything but 200), answers to invalid or hostile requests that
were not what they should be (a 4xx ``{error, detail}``; 200 for the aspect bombs and thumbnails,
200 or 429 for reloads), every 5xx, the server's resident memory (RSS) at the end of the hostile
phase against its value ``--warmup`` seconds into it (target: within 10 %), and the median latency
of valid requests in each phase (target: hostile p50 within 2x of the baseline's). Prints a table
and writes ``benchmarks/results/soak.md``.

    python benchmarks/bench_soak.py [--minutes 10] [--baseline-minutes 3] [--clients 16] [--n 20000]
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import platform
import random
import shutil
import socket
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


PHOTOS = "photos"  # the collection of large photos whose thumbnails are flooded
SLOW_ADDRESS = "127.0.0.2"  # the slow-socket attacker's address (all of 127.0.0.0/8 is this machine)
HUGE_INT = "9" * 5000  # past Python's 4,300-digit limit


def build_photos(workdir: Path, model_dir: Path, count: int, side: int) -> tuple[Path, Path]:
    """``count`` smooth ``side`` x ``side`` JPEGs (large to decode, small on disk) and a collection of them."""
    from PIL import Image

    from indexes import Collection
    from retrieval.model import load_model

    media = workdir / "photos"
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    small = side // 16
    for i in range(count):
        base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(base).resize((small, small)).resize((side, side), Image.Resampling.BILINEAR).save(
            media / f"photo_{i}.jpg", quality=90
        )
    model = load_model(str(model_dir))
    vectors = rng.standard_normal((count, model.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    coll = workdir / "photos.coll"
    with Collection.create(coll, model.embed_dim, index="Flat", fingerprint=model.fingerprint()) as c:
        c.add(
            vectors,
            [{"modality": "image", "path": f"photo_{i}.jpg", "caption": "a photo"} for i in range(count)],
        )
    return media, coll


def strip_png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def start_server(
    model_dir: Path, coll_dir: Path, photos: tuple[Path, Path], port: int, workers: int
) -> subprocess.Popen[str]:
    import httpx

    media, photos_coll = photos
    cmd = [
        sys.executable, "-m", "retrieval", "-q", "serve", f"{COLLECTION}={coll_dir}", f"{PHOTOS}={photos_coll}",
        "--media-root", f"{PHOTOS}={media}", "--model", str(model_dir),
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
    """Builds one random request: ``(kind, method, path, keyword arguments for httpx)``; hostile ones
    also say which statuses are right."""

    STRIPS = {"aspect bomb 1x39000": (1, 39_000), "aspect bomb 39000x1": (39_000, 1)}

    def __init__(self, rng: random.Random, n: int, dim: int, images: list[bytes]) -> None:
        self.rng, self.n, self.dim, self.images = rng, n, dim, images
        self.strips = {kind: strip_png(*shape) for kind, shape in self.STRIPS.items()}
        self.strip_b64 = base64.b64encode(strip_png(1, 8_000)).decode()

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
            "k as a string": ("POST", f"{base}/search/text", {"json": {"text": "red", "k": "5"}}),
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

    def hostile(self) -> tuple[str, str, str, dict, tuple[int, ...]]:
        """A request meant to cost the server: ``(kind, method, path, kwargs, right statuses)``."""
        r = self.rng
        base = f"/collections/{COLLECTION}"
        kind = r.choice(
            [*self.STRIPS, "aspect bomb base64 1x8000", "surrogate text", "surrogate knn", "surrogate filter",
             "huge integer", "reload spam"]
        )  # fmt: skip
        ok, bad = (200,), (400, 422)
        if kind in self.STRIPS:
            files = {"image": ("strip.png", self.strips[kind], "image/png")}
            return kind, "POST", f"{base}/search/image", {"files": files, "data": {"k": "10"}}, ok
        if kind == "aspect bomb base64 1x8000":
            body = {"image": self.strip_b64, "num_images": 10, "indice_name": COLLECTION}
            return kind, "POST", "/knn-service", {"content": json.dumps(body)}, ok
        if kind == "surrogate text":  # json.dumps writes the lone surrogate as the escape \ud800
            body = json.dumps({"text": f"{r.choice(WORDS)} \ud800 {r.choice(WORDS)}"})
            return kind, "POST", f"{base}/search/text", {"content": body, "headers": JSON_HEADERS}, bad
        if kind == "surrogate knn":
            body = json.dumps({"text": "x \udfff", "indice_name": COLLECTION})
            return kind, "POST", "/knn-service", {"content": body}, bad
        if kind == "surrogate filter":
            body = json.dumps({"text": "red", "where": {"caption": "\ud800"}})
            return kind, "POST", f"{base}/search/text", {"content": body, "headers": JSON_HEADERS}, bad
        if kind == "huge integer":
            body = '{"ids": [' + HUGE_INT + '], "indice_name": "' + COLLECTION + '"}'
            return kind, "POST", "/metadata", {"content": body}, bad
        return kind, "POST", f"{base}/reload", {}, (200, 429)


JSON_HEADERS = {"content-type": "application/json"}


def slow_sockets(
    address: tuple[str, int], count: int, stop: threading.Event, counts: collections.Counter
) -> None:
    """Keep ``count`` connections from :data:`SLOW_ADDRESS` sending headers a line every 0.5 s,
    reopening each as soon as the server closes it; counts how they ended."""
    sockets: list[socket.socket | None] = [None] * count
    while not stop.is_set():
        for i, sock in enumerate(sockets):
            try:
                if sock is None:
                    sock = socket.socket()
                    sock.settimeout(1.0)
                    sock.bind((SLOW_ADDRESS, 0))
                    sock.connect(address)
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    sock.setblocking(False)
                    sockets[i] = sock
                    counts["opened"] += 1
                else:
                    sock.send(b"X-Slow: 1\r\n")
                    answer = sock.recv(256)
                    raise ConnectionError(answer)
            except BlockingIOError:
                pass
            except (OSError, ConnectionError) as exc:
                text = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else b""
                counts["408" if b" 408 " in text else "503" if b" 503 " in text else "closed"] += 1
                if sock is not None:
                    sock.close()
                sockets[i] = None
        stop.wait(0.5)
    for sock in sockets:
        if sock is not None:
            sock.close()


def soak(
    base: str, args: argparse.Namespace, dim: int, images: list[bytes], server_pid: int, photos: int
) -> dict:
    import httpx

    lock = threading.Lock()
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    latency: dict[str, list[float]] = collections.defaultdict(list)
    first_problem: list[str] = []
    rss: dict[str, float] = {}
    samples: list[tuple[float, float]] = []
    slow: collections.Counter = collections.Counter()
    phase = {"name": "baseline"}

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

    def shaped_4xx(response: httpx.Response) -> bool:
        body = response.json() if "json" in response.headers.get("content-type", "") else {}
        return (
            400 <= response.status_code < 500 and isinstance(body, dict) and {"error", "detail"} <= set(body)
        )

    def client(seed: int, end: float, hostile: bool) -> None:
        requests = Requests(random.Random(seed), args.n, dim, images)
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.monotonic() < end:
                draw = requests.rng.random()
                group = "valid" if not hostile or draw < 0.6 else "invalid" if draw < 0.85 else "hostile"
                right: tuple[int, ...] = ()
                if group == "valid":
                    kind, method, path, kwargs = requests.valid()
                elif group == "invalid":
                    kind, method, path, kwargs = requests.invalid()
                else:
                    kind, method, path, kwargs, right = requests.hostile()
                started = time.perf_counter()
                try:
                    response = http.request(method, path, **kwargs)
                    status = response.status_code
                    if group == "valid":
                        with lock:
                            latency[phase["name"]].append(time.perf_counter() - started)
                        problem = None if status == 200 else f"{kind}: HTTP {status} {response.text[:200]}"
                    elif group == "invalid" or 400 in right:
                        good = (
                            shaped_4xx(response)
                            if group == "invalid"
                            else status in right and shaped_4xx(response)
                        )
                        problem = None if good else f"{kind}: HTTP {status} {response.text[:200]}"
                    else:
                        problem = None if status in right else f"{kind}: HTTP {status} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    status, problem = 599, f"{kind}: {type(exc).__name__}: {exc}"
                note(f"{phase['name']}/{group}", kind, status, problem)

    def thumbnails(seed: int, end: float) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.monotonic() < end:
                path = f"/collections/{PHOTOS}/items/{rng.randrange(photos)}/image?max_side={rng.randint(16, 1024)}"
                try:
                    response = http.get(path)
                    status = response.status_code
                    problem = None if status == 200 else f"thumbnail: HTTP {status} {response.text[:200]}"
                    kind = "busy: original" if response.headers.get("x-thumbnail") == "busy" else "thumbnail"
                except httpx.HTTPError as exc:
                    status, problem, kind = 599, f"thumbnail: {type(exc).__name__}: {exc}", "thumbnail"
                note("hostile/thumbnail flood", kind, status, problem)

    def reloader(end: float) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while time.monotonic() + args.reload_every < end:
                time.sleep(args.reload_every)
                response = http.post(f"/collections/{COLLECTION}/reload")
                problem = None if response.status_code in (200, 429) else response.text
                note(f"{phase['name']}/reload", "reload", response.status_code, problem)

    def monitor(start: float, end: float, warmup: float) -> None:
        while time.monotonic() < end:
            time.sleep(1.0)
            value = rss_mib(server_pid)
            samples.append((time.monotonic() - start, value))
            if "warm" not in rss and time.monotonic() - start >= warmup:
                rss["warm"] = value

    def run_phase(name: str, minutes: float, hostile: bool) -> float:
        phase["name"] = name
        start = time.monotonic()
        end = start + minutes * 60
        threads = [
            threading.Thread(
                target=client, args=(args.seed + i + (1000 if hostile else 0), end, hostile), daemon=True
            )
            for i in range(args.clients)
        ]
        threads.append(threading.Thread(target=reloader, args=(end,), daemon=True))
        stop = threading.Event()
        helpers: list[threading.Thread] = []
        if hostile:
            warmup = min(args.warmup, minutes * 60 / 3)
            helpers.append(threading.Thread(target=monitor, args=(start, end, warmup), daemon=True))
            helpers += [
                threading.Thread(target=thumbnails, args=(args.seed + 500 + i, end), daemon=True)
                for i in range(args.thumb_clients)
            ]
            host, port = base.removeprefix("http://").split(":")
            helpers.append(
                threading.Thread(
                    target=slow_sockets, args=((host, int(port)), args.slow_sockets, stop, slow), daemon=True
                )
            )
        for t in threads + helpers:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        for t in helpers:
            t.join(timeout=30)
        return time.monotonic() - start

    seconds = {"baseline": run_phase("baseline", args.baseline_minutes, hostile=False)}
    seconds["hostile"] = run_phase("hostile", args.minutes, hostile=True)
    rss["end"] = rss_mib(server_pid)
    rss.setdefault("warm", samples[0][1] if samples else rss["end"])
    rss["max"] = max([v for _, v in samples] + [rss["end"]])
    return {
        "stats": stats,
        "latency": latency,
        "slow": slow,
        "rss": rss,
        "seconds": seconds,
        "warmup": min(args.warmup, args.minutes * 60 / 3),
        "first_problem": first_problem[0] if first_problem else "",
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(args: argparse.Namespace, info: dict, result: dict) -> bool:
    stats, rss, latency = result["stats"], result["rss"], result["latency"]
    groups = sorted(stats)
    total_5xx = sum(stats[g]["5xx"] for g in groups)
    problems = sum(stats[g]["problems"] for g in groups)
    growth = (rss["end"] - rss["warm"]) / rss["warm"] * 100 if rss["warm"] else 0.0
    p50 = {name: _pct(latency[name], 0.5) for name in ("baseline", "hostile")}
    ratio = p50["hostile"] / p50["baseline"] if p50["baseline"] else float("inf")
    ok = problems == 0 and total_5xx == 0 and abs(growth) <= 10.0 and ratio <= 2.0
    rows = []
    for group in groups:
        counter = stats[group]
        rows.append(
            (group, counter["sent"], f"{counter['problems']} wrong answers, {counter['5xx']} 5xx (target 0)")
        )
    slow = result["slow"]
    rows += [
        (
            "hostile/slow sockets",
            slow["opened"],
            f"opened from {SLOW_ADDRESS}; closed by the server: {slow['408']} x 408 (header deadline), "
            f"{slow['503']} x 503 (per-address bound), {slow['closed']} otherwise",
        ),
        ("5xx answers", total_5xx, "target 0"),
        (
            "valid requests p50 / p99",
            f"{p50['baseline']:.0f} / {_pct(latency['baseline'], 0.99):.0f} ms -> "
            f"{p50['hostile']:.0f} / {_pct(latency['hostile'], 0.99):.0f} ms",
            f"baseline -> hostile: p50 x{ratio:.2f} (target within 2x)",
        ),
        (
            "server RSS",
            f"{rss['warm']:.0f} -> {rss['end']:.0f} MiB",
            f"{growth:+.1f} % after {result['warmup']:.0f} s of the hostile phase (target within 10 %), "
            f"peak {rss['max']:.0f} MiB",
        ),
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
    seconds = result["seconds"]
    mix = "\n".join(f"- {group}: {kinds(stats[group])}." for group in groups)
    text = f"""# HTTP service soak test

`python benchmarks/bench_soak.py --minutes {args.minutes:g} --baseline-minutes {args.baseline_minutes:g} --clients {args.clients} --n {args.n} --reload-every {args.reload_every:g} --thumb-clients {args.thumb_clients} --slow-sockets {args.slow_sockets} --big-side {args.big_side}`

- Collection: {info["count"]} items, dim {info["dim"]}, index `{info["index_spec"]}`, and {args.photos} photos of
  {args.big_side} x {args.big_side} px in a second collection with a media root; served by `retrieval serve`
  in its own process on 127.0.0.1 with `--hide-field {HIDDEN}`, {args.workers} worker threads.
- Baseline: {args.clients} clients for {seconds["baseline"]:.0f} s sending valid requests only, each the next
  as soon as the previous one is answered.
- Hostile: the same clients for {seconds["hostile"]:.0f} s sending ~60 % valid, ~25 % invalid and ~15 % hostile
  requests (aspect bombs, lone surrogates, huge integers, reload spam); {args.thumb_clients} clients flooding
  thumbnails of the photos at random sizes; {args.slow_sockets} slow sockets from {SLOW_ADDRESS}. A `reload`
  every {args.reload_every:g} s in both phases. RSS is the server process's resident memory after
  {result["warmup"]:.0f} s of the hostile phase and at its end.
{mix}
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
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the hostile phase runs")
    parser.add_argument(
        "--baseline-minutes", type=float, default=3.0, help="how long the valid-only phase runs first"
    )
    parser.add_argument("--thumb-clients", type=int, default=4, help="clients flooding thumbnails")
    parser.add_argument("--slow-sockets", type=int, default=64, help="slow connections held open")
    parser.add_argument("--photos", type=int, default=4, help="large photos whose thumbnails are flooded")
    parser.add_argument("--big-side", type=int, default=6000, help="side of the large photos in px")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--n", type=int, default=20_000, help="items in the collection")
    parser.add_argument("--reload-every", type=float, default=30.0, help="seconds between reloads")
    parser.add_argument(
        "--warmup", type=float, default=180.0, help="seconds into the hostile phase of the reference RSS"
    )
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
        photos = build_photos(workdir, model_dir, args.photos, args.big_side)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(model_dir, coll_dir, photos, port, args.workers)
        info = httpx.get(f"{base}/collections/{COLLECTION}", timeout=30).json()
        print(
            f"serving {info['count']} items on {base}; baseline {args.baseline_minutes:g} min, "
            f"then hostile {args.minutes:g} min ...",
            flush=True,
        )
        images = _png_pool(np.random.default_rng(args.seed), 32)
        result = soak(base, args, int(info["dim"]), images, server.pid, args.photos)
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
