"""Serving under load: `emolightning serve` against the hand-written FastAPI + `transformers.pipeline` server, and `emolightning predict` as the limit.

    python benchmarks/serve_load.py --texts path/to/2018-E-c-En-dev.txt --ckpt_path RUN_OR_CKPT --exported EXPORT_DIR \
        --clients 1 8 32 --requests 2000 --time_limit 60 --out serve_load.json

Sides (`--sides`): `serve` (`emolightning serve --ckpt_path RUN` with its defaults), `fastapi` and
`fastapi_batch` (benchmarks/fastapi_pipeline_server.py on the export, without and with the pipeline's
`--batch_size`), and `predict` (`emolightning predict` on the same texts: texts/s of the model pass,
from the difference between a run on every text and a run on one, so start-up and imports cancel).

Each server starts in its own process group on a free loopback port; once GET /health answers, a few
warm-up requests go first. Then, for each number of clients, that many threads each keep one HTTP
connection to 127.0.0.1 and send single-text requests (`{"text": ...}`, the texts in turn) until
`--requests` requests are done in all or `--time_limit` seconds have passed, whichever is first:
every client stops by itself. Reported: requests/s (completed / wall time), p50 and p99 latency,
errors, and the peak memory of the server's whole process tree (RSS summed over its processes,
sampled every 0.1 s). The texts are read from the file given (an E-c file's Tweet column, or one text
a line); nothing of them is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def read_texts(path: str, limit: int | None) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if lines and lines[0].split("\t")[:2] == ["ID", "Tweet"]:
        texts = [line.split("\t")[1] for line in lines[1:] if line]
    else:
        texts = [line for line in lines if line.strip()]
    return texts[:limit] if limit else texts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakMemory(threading.Thread):
    """The largest RSS of a process tree, sampled every 0.1 s until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self.done.wait(0.1)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def post(connection: http.client.HTTPConnection, text: str) -> int:
    connection.request("POST", "/predict", json.dumps({"text": text}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status


def load(port: int, texts: list[str], clients: int, requests: int, time_limit: float) -> dict:
    """`clients` threads sending single-text requests until `requests` are done or `time_limit` s have passed."""
    lock, counter, latencies, errors = threading.Lock(), [0], [], [0]
    deadline = time.monotonic() + time_limit

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if counter[0] >= requests:
                        return
                    i = counter[0]
                    counter[0] += 1
                start = time.perf_counter()
                try:
                    ok = post(connection, texts[(i + k) % len(texts)]) == 200
                except OSError:
                    ok = False
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                elapsed = time.perf_counter() - start
                with lock:
                    (latencies.append(elapsed) if ok else None)
                    errors[0] += not ok
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=time_limit + 180)
    wall = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * cuts[49], 1),
        "p99_ms": round(1000 * cuts[98], 1),
    }


def start_server(command: list[str], port: int, log: Path, timeout: float = 600) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"{' '.join(command)} was not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its workers, if any outlived it
    except ProcessLookupError:
        pass
    proc.wait()


def server_side(name: str, command: list[str], texts: list[str], args, workdir: Path) -> dict:
    port = free_port()
    proc = start_server([*command, "--port", str(port)], port, workdir / f"{name}.log")
    memory = PeakMemory(proc.pid)
    memory.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for text in texts[:8]:  # warm-up: first calls pay one-off costs
            post(connection, text)
        connection.close()
        rows = []
        for clients in args.clients:
            row = load(port, texts, clients, args.requests, args.time_limit)
            print(json.dumps({"side": name, **row}), flush=True)
            rows.append(row)
    finally:
        peak = memory.stop()
        stop(proc)
    return {"side": name, "command": " ".join(command), "peak_rss_mb": round(peak / 2**20), "load": rows}


def timed_predict(ckpt: str, texts: list[str], workdir: Path, name: str) -> tuple[float, int]:
    source = workdir / f"{name}.txt"
    source.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "emolightning",
        "predict",
        "--ckpt_path",
        ckpt,
        "--data.predict_file",
        str(source),
        "--output",
        str(workdir / f"{name}.pred"),
    ]
    command += ["--trainer.default_root_dir", str(workdir), "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    memory = PeakMemory(proc.pid)
    memory.start()
    _, err = proc.communicate(timeout=3600)
    peak = memory.stop()
    if proc.returncode:
        raise SystemExit(f"predict failed:\n{err[-3000:]}")
    return time.perf_counter() - start, peak


def predict_side(ckpt: str, texts: list[str], workdir: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from emolightning.models.checkpoints import checkpoint_path

    ckpt = checkpoint_path(ckpt)  # predict takes the checkpoint itself, not its run folder
    everything, peak = timed_predict(ckpt, texts, workdir, "all")
    one, _ = timed_predict(ckpt, texts[:1], workdir, "one")
    rate = (len(texts) - 1) / max(everything - one, 1e-9)
    print(json.dumps({"side": "predict", "texts": len(texts), "wall_s": round(everything, 1), "one_text_wall_s": round(one, 1)}), flush=True)
    return {
        "side": "predict",
        "texts": len(texts),
        "texts_per_s": round(rate, 1),
        "wall_s": round(everything, 1),
        "one_text_wall_s": round(one, 1),
        "peak_rss_mb": round(peak / 2**20),
    }


def markdown(results: list[dict]) -> str:
    lines = ["| side | clients | requests/s | p50 ms | p99 ms | errors | peak memory MB |", "|---|---|---|---|---|---|---|"]
    for side in results:
        if side["side"] == "predict":
            lines.append(f"| predict (limit) | - | {side['texts_per_s']} texts/s | - | - | - | {side['peak_rss_mb']} |")
            continue
        for row in side["load"]:
            lines.append(
                f"| {side['side']} | {row['clients']} | {row['requests_per_s']} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} | {side['peak_rss_mb']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", required=True, help="An E-c file (its Tweet column) or a text file, one text a line.")
    parser.add_argument("--ckpt_path", required=True, help="The run folder or checkpoint that `emolightning serve` and `predict` use.")
    parser.add_argument("--exported", help="Its `emolightning export` folder, for the FastAPI sides.")
    parser.add_argument(
        "--sides", nargs="+", default=["serve", "fastapi", "fastapi_batch", "predict"], choices=["serve", "fastapi", "fastapi_batch", "predict"]
    )
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="Requests per number of clients, at most.")
    parser.add_argument("--time_limit", type=float, default=60, help="Seconds per number of clients, at most.")
    parser.add_argument("--limit_texts", type=int, help="Use only the first N texts.")
    parser.add_argument("--pipeline_batch_size", type=int, default=32, help="The pipeline's batch_size on the fastapi_batch side.")
    parser.add_argument("--out", help="Write the results here as JSON.")
    args = parser.parse_args()
    texts = read_texts(args.texts, args.limit_texts)
    if {"fastapi", "fastapi_batch"} & set(args.sides) and not args.exported:
        parser.error("the fastapi sides need --exported (an `emolightning export` folder of the same checkpoint)")
    sides = {
        "serve": [sys.executable, "-m", "emolightning", "serve", "--ckpt_path", args.ckpt_path],
        "fastapi": [sys.executable, str(HERE / "fastapi_pipeline_server.py"), "--model", str(args.exported)],
        "fastapi_batch": [
            sys.executable,
            str(HERE / "fastapi_pipeline_server.py"),
            "--model",
            str(args.exported),
            "--batch_size",
            str(args.pipeline_batch_size),
        ],
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        workdir = Path(folder)
        for side in args.sides:
            results.append(predict_side(args.ckpt_path, texts, workdir) if side == "predict" else server_side(side, sides[side], texts, args, workdir))
    report = {"machine": f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB", "texts": len(texts), "args": vars(args), "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
