"""A load test of the REST server: `mlflow models serve` of a registered captioner under concurrent clients.

    python benchmarks/serve_load.py --tracking-uri sqlite:////tmp/shot/mlflow.db
    python benchmarks/serve_load.py --model models:/captioner/3 --clients 2 --requests 40 --out serve_load_small.json

Starts `mlflow models serve --env-manager local` on a free port of 127.0.0.1 (no pickles), waits for /ping, warms
the model up with every request shape of the run (sent by as many clients as the run), then `--clients` threads send
`--requests` requests in all, each of 1 to 4 images (or `--rows`; greedy or the model's own beam width). Every tenth
is malformed, in turn: a row that is not base64, a server path, a beam width of 1,000, a frame with no rows; each
must be refused with HTTP 400 (INVALID_PARAMETER_VALUE). A 200 must hold one non-empty caption per image sent;
anything else (another status, a wrong answer, no answer) counts as failed.

The images are the embedded dataset's 250 test scenes, drawn in memory (as captioning.data.synthetic writes them);
`--photos DIR` sends the JPEGs of DIR instead (e.g. Flickr8k's, for a Flickr8k model: read at run time, never
written anywhere). The server's resident memory (its process and its children, uvicorn's worker included) is read
after warm-up, every half second during the run (the peak), at each tenth of the requests, and at the end. Written
to benchmarks/results/ (`--out`).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MALFORMED = ("not base64", "path", "huge beam", "empty frame")
TEST_SCENES = range(1750, 2000)  # the embedded dataset's test split: 2,000 scenes of seed 0, the last 250
BEAMS = (1, 0)  # greedy, and the model's own beam width


class ServerError(RuntimeError):
    """The model server did not start, or stopped answering."""


@dataclass(frozen=True)
class Request:
    kind: str  # "good" or one of MALFORMED
    body: bytes
    images: int  # rows sent; a good answer holds as many captions


def scene_images(count: int = len(TEST_SCENES)) -> list[str]:
    """The first `count` test scenes of the embedded dataset as base64 JPEG text (quality 92, as written to disk)."""
    from captioning.data.synthetic import make_scene

    encoded = []
    for index in TEST_SCENES[:count]:
        buffer = io.BytesIO()
        make_scene(index, seed=0)[0].save(buffer, "JPEG", quality=92)
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return encoded


def photo_images(folder: Path, count: int = 250) -> list[str]:
    photos = sorted(folder.glob("*.jpg"))[:count]
    if not photos:
        raise SystemExit(f"--photos {folder} holds no .jpg file; give a folder of JPEG photos")
    return [base64.b64encode(path.read_bytes()).decode() for path in photos]


def frame(rows: list[str], beam_width: int | None = None) -> bytes:
    body = {"dataframe_split": {"columns": ["image"], "data": [[row] for row in rows]}}
    if beam_width is not None:
        body["params"] = {"beam_width": beam_width}
    return json.dumps(body).encode()


def good_request(images: list[str], rng: random.Random, count: int | None = None, beam: int | None = None) -> Request:
    count = count or rng.randint(1, 4)
    return Request("good", frame(rng.sample(images, count), rng.choice(BEAMS) if beam is None else beam), count)


def malformed_request(kind: str, images: list[str], rng: random.Random) -> Request:
    rows = rng.sample(images, rng.randint(1, 3))
    if kind == "not base64":
        rows.insert(rng.randint(0, len(rows)), "not base64!")
        return Request(kind, frame(rows), len(rows))
    if kind == "path":  # a file that exists on the server: it must not be opened
        rows.insert(rng.randint(0, len(rows)), str(Path(__file__).resolve()))
        return Request(kind, frame(rows), len(rows))
    if kind == "huge beam":
        return Request(kind, frame(rows, beam_width=1000), len(rows))
    if kind == "empty frame":
        return Request(kind, frame([]), 0)
    raise ValueError(f"unknown malformed request {kind!r}; one of {MALFORMED}")


def request_plan(count: int, images: list[str], seed: int = 0, rows: int | None = None) -> list[Request]:
    """`count` requests, every tenth malformed (the kinds in turn), the good ones of `rows` images (default: 1-4)."""
    rng = random.Random(seed)
    return [malformed_request(MALFORMED[(i // 10) % len(MALFORMED)], images, rng) if i % 10 == 9
            else good_request(images, rng, rows) for i in range(count)]


def warm_up_plan(images: list[str], rows: int | None = None) -> list[Request]:
    """One request of every shape the run sends (1-4 images or `rows`, each beam), and one of each malformed kind."""
    rng = random.Random(-1)
    counts = [rows] if rows else range(1, 5)
    return ([good_request(images, rng, count, beam) for count in counts for beam in BEAMS]
            + [malformed_request(kind, images, rng) for kind in MALFORMED])


def post(port: int, body: bytes, timeout: float = 300) -> tuple[int, dict | None]:
    """POST one request; (HTTP status, the JSON answer or None). A refusal is a status, not an exception."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


def check(request: Request, status: int, answer: dict | None) -> str | None:
    """What is wrong with the server's answer to `request`, or None if it is right."""
    if request.kind != "good":
        if status != 400 or not answer or answer.get("error_code") != "INVALID_PARAMETER_VALUE":
            return f"{request.kind}: expected a 400 (INVALID_PARAMETER_VALUE), got {status}: {str(answer)[:200]}"
        return "a traceback in a refusal" if "Traceback" in json.dumps(answer) else None
    if status != 200:
        return f"expected a 200, got {status}: {str(answer)[:300]}"
    predictions = (answer or {}).get("predictions")
    if not isinstance(predictions, list) or len(predictions) != request.images:
        return f"expected {request.images} captions, got {str(answer)[:300]}"
    if not all(isinstance(p, dict) and isinstance(p.get("caption"), str) and p["caption"].strip() for p in predictions):
        return f"an empty or missing caption: {str(predictions)[:300]}"
    return None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (the scoring server runs as a child of `mlflow models serve`)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants: psutil if installed, else /proc/PID/status (VmRSS)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    ended = (OSError, psutil.Error) if psutil else OSError
    total = 0
    for member in process_tree(pid):
        try:
            if psutil:
                total += psutil.Process(member).memory_info().rss
                continue
            status = Path(f"/proc/{member}/status").read_text()
        except ended:
            continue  # ended meanwhile
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


class ModelServer:
    """`mlflow models serve` of one model on a free port of 127.0.0.1, in its own process group."""

    def __init__(self, model_uri: str, tracking_uri: str, start_timeout: float = 300):
        from captioning.serving.infra import free_port

        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="serve-load-", suffix=".log", delete=False)
        bindir = Path(sys.executable).parent  # the server starts `uvicorn` by name
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
               "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.process = subprocess.Popen([str(bindir / "mlflow"), "models", "serve", "-m", model_uri,
                                         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port)],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=tempfile.gettempdir())
        self.started, self.killed = time.perf_counter(), False
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - self.started

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"the model server exited with code {self.process.returncode} before answering "
                                  f"/ping; its output ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:  # not listening yet, or the model is still loading (503)
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"the model server did not answer /ping within {timeout:.0f} s; its output ends:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.5)

    def rss(self) -> int:
        return tree_rss(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self, patience: float = 30) -> int | None:
        """SIGTERM to the group (uvicorn shuts down gracefully), SIGKILL after `patience` s; the exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(patience)
            except subprocess.TimeoutExpired:
                self.killed = True
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        os.unlink(self.log.name)


def send_all(port: int, plan: list[Request], clients: int, on_answer=None) -> list[dict]:
    """Each request of `plan` sent once by `clients` threads; per request: kind, status, seconds, problem."""
    def send(request: Request) -> dict:
        start = time.perf_counter()
        try:
            status, answer = post(port, request.body)
            problem = check(request, status, answer)
        except OSError as exc:  # refused, reset or timed out: the server stopped answering
            status, problem = None, f"no answer: {exc}"
        outcome = {"kind": request.kind, "status": status, "seconds": time.perf_counter() - start,
                   "problem": problem}
        if on_answer:
            on_answer(outcome)
        return outcome

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(send, plan))


def percentiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{q}": ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] for q in (50, 95, 99)}


def load_test(model_uri: str, tracking_uri: str, requests: int, clients: int, images: list[str], seed: int = 0,
              log=print, rows: int | None = None) -> dict:
    """Serve `model_uri`, warm it up, run the clients (good requests of `rows` images, or 1-4); every figure of the
    report."""
    plan = request_plan(requests, images, seed, rows)
    with ModelServer(model_uri, tracking_uri) as server:
        log(f"server on 127.0.0.1:{server.port} answered /ping after {server.ready_seconds:.1f} s")
        start = time.perf_counter()
        warm = send_all(server.port, warm_up_plan(images, rows), clients)  # as concurrent as the run
        problems = [o["problem"] for o in warm if o["problem"]]
        if problems:
            raise ServerError(f"the warm-up got wrong answers: {problems}; the server's output ends:\n"
                              f"{server.log_tail()}")
        warm_seconds = time.perf_counter() - start
        rss_warm = server.rss()
        log(f"warmed up in {warm_seconds:.1f} s ({len(warm)} requests); server RSS {rss_warm / 2**20:.0f} MiB")

        peak, running = [rss_warm], threading.Event()

        def sample_rss() -> None:
            while not running.wait(0.5):
                peak.append(server.rss())

        sampler = threading.Thread(target=sample_rss, daemon=True)
        done, by_tenth = [], []

        def progress(outcome: dict) -> None:
            done.append(outcome)
            if len(done) % max(1, requests // 10) == 0:
                by_tenth.append(server.rss() / 2**20)
                log(f"  {len(done)}/{requests} requests, {sum(bool(o['problem']) for o in done)} failed, server RSS "
                    f"{by_tenth[-1]:.0f} MiB")

        sampler.start()
        start = time.perf_counter()
        outcomes = send_all(server.port, plan, clients, progress)
        seconds = time.perf_counter() - start
        running.set()
        sampler.join()
        rss_end = server.rss()
        alive = server.process.poll() is None
        tail = server.log_tail()
        exit_code = server.stop()

    answered = [o for o in outcomes if o["kind"] == "good" and not o["problem"]]
    refused = [o for o in outcomes if o["kind"] != "good" and not o["problem"]]
    failed = [o for o in outcomes if o["problem"]]
    by_kind = {kind: sum(o["kind"] == kind and not o["problem"] for o in outcomes) for kind in MALFORMED}
    return {
        "model": model_uri, "requests": requests, "clients": clients, "seed": seed,
        "images_sent": sum(r.images for r in plan if r.kind == "good"),
        "malformed": sum(r.kind != "good" for r in plan),
        "answered": len(answered), "answers_checked": len(answered), "refused_400": len(refused),
        "refused_400_by_kind": by_kind, "failed": len(failed),
        "failures": [{k: o[k] for k in ("kind", "status", "problem")} for o in failed[:20]],
        "latency_s": percentiles([o["seconds"] for o in outcomes]),
        "latency_answered_s": percentiles([o["seconds"] for o in answered]),
        "latency_refused_s": percentiles([o["seconds"] for o in refused]),
        "seconds": seconds, "requests_per_second": requests / seconds,
        "images_per_second": sum(r.images for r in plan if r.kind == "good") / seconds,
        "server_ready_s": server.ready_seconds, "warm_up_s": warm_seconds, "warm_up_requests": len(warm),
        "rss_after_warm_up_mib": rss_warm / 2**20, "rss_end_mib": rss_end / 2**20, "rss_peak_mib": max(peak) / 2**20,
        "rss_growth": (rss_end - rss_warm) / rss_warm, "rss_by_tenth_mib": by_tenth,
        "server_alive_at_end": alive, "server_exit_code": exit_code, "server_needed_sigkill": server.killed,
        "server_log_tail": tail.splitlines()[-5:] if failed else [],
    }


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        model = platform.processor() or platform.machine()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} CPU cores, {memory:.0f} GiB, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/captioner@champion", help="the registered model to serve")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI of its registry (default: $MLFLOW_TRACKING_URI, "
                        "else ./mlflow.db)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=1000, help="requests in all, a tenth of them malformed")
    parser.add_argument("--photos", type=Path, help="a folder of JPEG photos to send instead of generated scenes")
    parser.add_argument("--rows", type=int, help="images in every good request (default: 1 to 4 at random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", help="a line to keep in the results file")
    parser.add_argument("--out", default="serve_load_shapes.json", help="file name under benchmarks/results/")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or not 1 <= (1 if args.rows is None else args.rows) <= 250:
        parser.error("--clients and --requests must be at least 1, --rows from 1 to 250")

    from captioning.core.tracking import default_tracking_uri

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    images = photo_images(args.photos) if args.photos else scene_images()
    try:
        result = load_test(args.model, tracking_uri, args.requests, args.clients, images, args.seed, rows=args.rows)
    except ServerError as exc:
        print(f"serve_load: {exc}", file=sys.stderr)
        return 1
    result = {"command": "python benchmarks/serve_load.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "tracking_uri": tracking_uri,
              "images": str(args.photos) if args.photos else "embedded test scenes 1750-1999, drawn in memory",
              **({"note": args.note} if args.note else {}), **result}
    latency = result["latency_s"]
    print(f"{result['answered']} answered, {result['refused_400']} refused with 400, {result['failed']} failed; "
          f"latency p50 {latency['p50']:.3f} s, p95 {latency['p95']:.3f} s, p99 {latency['p99']:.3f} s; "
          f"{result['requests_per_second']:.2f} requests/s; server RSS {result['rss_after_warm_up_mib']:.0f} -> "
          f"{result['rss_end_mib']:.0f} MiB ({result['rss_growth']:+.1%}, peak {result['rss_peak_mib']:.0f})")
    for failure in result["failures"]:
        print(f"  failed: {failure}")
    out = Path(__file__).parent / "results" / args.out
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
