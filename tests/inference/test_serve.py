"""`emolightning serve`: the real server, started in a subprocess on a free loopback port and called over HTTP (urllib).

The answers are compared with `emolightning predict` on the same texts; concurrent clients, every kind of
bad request and the start-up errors are checked against the running (or refusing) server itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import REPO, predict_args

pytest.importorskip("litserve")

START_TIMEOUT = 240  # s: two interpreters import torch and transformers on a shared 2-core machine
PRECISE = ["--backend", "torch", "--precision", "32-true"]  # the fp32 model, as predict_args runs it
TEXTS = [
    "so delighted with my friend today",
    "scared of the news this morning",
    "",
    "crying at home, with my\tfriend",  # a tab: predict reads it as a space
    "furious at work and gross game",
    " ".join(["hopeful awaiting the very shocked city news"] * 20),  # longer than max_length (64 tokens): truncated
    "reliable adore 😱 #doomed",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(port: int, path: str, body: bytes | dict | None = None, timeout: float = 60) -> tuple[int, object]:
    """(status, parsed JSON or text) of GET (body None) or POST `path` on the server."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "emolightning", "serve", *args]


def server_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@contextmanager
def running_server(tmp_path: Path, *args: str):
    """`emolightning serve ARGS` on a free port, once GET /health answers 200; always stopped (SIGTERM, then SIGKILL of its process group)."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            serve_command(*args, "--port", str(port)), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited {proc.returncode} before it was ready:\n{log.read_text()[-5000:]}")
            try:
                if call(port, "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server was not ready in {START_TIMEOUT} s:\n{log.read_text()[-5000:]}")
            time.sleep(0.5)
        yield {"port": port, "proc": proc, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its own process group is left (workers, HTTP processes)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def run_folder(trained_run: dict) -> str:
    return str(trained_run["ckpt"].parent.parent)  # lightning_logs/version_0: serve finds its best checkpoint


def predicted(trained_run: dict, tmp_path: Path, texts: list[str]) -> list[dict]:
    """`emolightning predict --probabilities true` (fp32, torch backend) on `texts`, as serve answers: labels and probabilities."""
    from emolightning.cli.main import run_cli

    source, out = tmp_path / "texts.txt", tmp_path / "predicted.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    run_cli(predict_args(trained_run, tmp_path, "--data.predict_file", str(source), "--output", str(out), "--probabilities", "true"))
    header, *rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    labels = [name for name in header[2:] if not name.startswith("p_")]
    answers = []
    for row in rows:
        values = dict(zip(header, row))
        answers.append({"labels": [n for n in labels if values[n] == "1"], "probabilities": {n: float(values[f"p_{n}"]) for n in labels}})
    return answers


def assert_same_answers(got: list[dict], want: list[dict], tolerance: float) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["labels"] == w["labels"], f"text {i}: {g['labels']} != {w['labels']}"
        assert list(g["probabilities"]) == list(w["probabilities"])
        worst = max(abs(g["probabilities"][n] - w["probabilities"][n]) for n in w["probabilities"])
        assert worst <= tolerance, f"text {i}: probabilities differ by {worst}"


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """One server of the tiny run's folder (fp32), with small request limits, shared by the tests that only call it."""
    with running_server(
        tmp_path_factory.mktemp("serve"), "--ckpt_path", run_folder(trained_run), *PRECISE, "--max_texts_per_request", "8", "--max_text_chars", "2000"
    ) as running:
        yield running


@pytest.mark.slow
def test_answers_equal_predict_on_the_same_texts(server, trained_run, tmp_path):
    want = predicted(trained_run, tmp_path, TEXTS)
    status, many = call(server["port"], "/predict", {"texts": TEXTS})
    assert status == 200, many
    # predict's file holds probabilities to 6 decimals: half a unit of the 6th, and float rounding
    assert_same_answers(many["predictions"], want, tolerance=1e-6)
    singles = []
    for text in TEXTS:
        status, one = call(server["port"], "/predict", {"text": text})
        assert status == 200, one
        singles.append(one)
    assert_same_answers(singles, want, tolerance=1e-6)


@pytest.mark.slow
def test_info_and_health_name_the_model(server, trained_run):
    import torch

    from emolightning import __version__

    assert call(server["port"], "/health")[0] == 200
    status, info = call(server["port"], "/info")
    assert status == 200
    ckpt = torch.load(trained_run["ckpt"], map_location="cpu", weights_only=True)
    model = info["model"]
    assert model["labels"] == ckpt["hyper_parameters"]["label_names"]
    assert list(model["thresholds"].values()) == pytest.approx(ckpt["state_dict"]["thresholds"].tolist())
    assert model["max_length"] == ckpt["datamodule_hyper_parameters"]["max_length"]
    assert model["model"] == ckpt["hyper_parameters"]["encoder"] and model["emolightning_version"] == __version__
    assert model["source"]["path"] == str(trained_run["ckpt"])


@pytest.mark.slow
def test_sixteen_concurrent_clients_get_their_own_answers(server):
    port = server["port"]
    texts = [f"{word} at home with my friend {'so ' * i}today" for i, word in enumerate(["delighted", "scared", "crying", "furious"] * 4)]
    alone = [call(port, "/predict", {"text": text})[1] for text in texts]  # one at a time: nothing to mix up
    start, answers, errors = threading.Barrier(16), {}, []

    def client(i: int) -> None:
        try:
            start.wait(timeout=60)
            for round in range(3):
                mine = texts[i : i + 1 + round % 2]  # one text, or two, per request
                status, body = call(port, "/predict", {"texts": mine})
                assert status == 200, body
                answers[(i, round)] = (mine, body["predictions"])
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(answers) == 48
    for mine, got in answers.values():
        assert_same_answers(got, [alone[texts.index(t)] for t in mine], tolerance=1e-5)  # batched with others: padding moves them by ~1e-7
    sizes = [int(n) for n in re.findall(r"batch of (\d+) request", server["log"].read_text())]
    assert max(sizes) > 1, f"no two requests shared a batch: {sizes}"


BAD_REQUESTS = {
    "malformed JSON": (b'{"text": "so delighted', 400, "not valid JSON"),
    "non-UTF-8 bytes": (b'{"text": "caf\xe9 \xff"}', 400, "not UTF-8"),
    "a missing field": (b'{"txt": "so delighted"}', 422, "neither `text` nor `texts`"),
    "a wrong type": (b'{"text": 42}', 422, "not a string"),
    "texts not a list": (b'{"texts": "so delighted"}', 422, "not an array"),
    "a text of a wrong type": (b'{"texts": ["fine", null]}', 422, "`texts[1]` is a JSON null"),
    "not an object": (b'["so delighted"]', 422, "not an object"),
    "an empty list": (b'{"texts": []}', 422, "empty array"),
    "too many texts": (json.dumps({"texts": ["fine"] * 9}).encode(), 413, "limit of 8"),
    "too long a text": (json.dumps({"texts": ["fine", "a" * 2001]}).encode(), 413, "2,001 characters"),
    "a lone surrogate": (b'{"text": "\\ud800 x"}', 400, "surrogate"),
    "an empty body": (b"", 400, "not valid JSON"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_its_4xx_in_one_sentence_and_the_server_keeps_serving(server, case):
    body, status, words = BAD_REQUESTS[case]
    got, answer = call(server["port"], "/predict", body)
    assert got == status, answer
    assert isinstance(answer, dict) and list(answer) == ["detail"], answer
    detail = answer["detail"]
    assert words in detail and "\n" not in detail and "Traceback" not in detail and detail.endswith(".")
    assert call(server["port"], "/predict", {"text": "so delighted"})[0] == 200
    assert "Traceback" not in server["log"].read_text()


@pytest.mark.slow
def test_an_exported_folder_serves_the_checkpoints_answers(trained_run, tmp_path):
    from emolightning.inference.export import export_checkpoint

    exported = export_checkpoint(trained_run["ckpt"], tmp_path / "exported")
    want = predicted(trained_run, tmp_path, TEXTS)
    import torch

    trained_length = torch.load(trained_run["ckpt"], map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]["max_length"]
    with running_server(tmp_path, "--ckpt_path", str(exported), *PRECISE, "--max_length", str(trained_length)) as running:
        status, answer = call(running["port"], "/predict", {"texts": TEXTS})
    assert status == 200, answer
    assert_same_answers(answer["predictions"], want, tolerance=1e-6)


@pytest.mark.slow
def test_sigterm_stops_the_server_and_its_workers(trained_run, tmp_path):
    with running_server(tmp_path, "--ckpt_path", str(trained_run["ckpt"]), "--max_batch_size", "1") as running:
        assert call(running["port"], "/predict", {"text": "so delighted"})[0] == 200  # max_batch_size 1: LitServe's unbatched loop
        proc = running["proc"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        deadline = time.monotonic() + 30
        while True:  # the workers and HTTP processes it started are gone too
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "processes of the server outlived it"
            time.sleep(0.5)
        log = running["log"].read_text()
    assert "Traceback" not in log and "stopped" in log


# ---- start-up errors: one paragraph, exit 2, before any worker starts ----------------------------------------------
def refused(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, "serve", *args] if code else serve_command(*args)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=server_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("emolightning: error: "), proc.stderr[-3000:]
    return proc


def test_a_damaged_checkpoint_stops_the_start_in_one_paragraph(trained_run, tmp_path):
    damaged = tmp_path / "best-damaged.ckpt"
    damaged.write_bytes(trained_run["ckpt"].read_bytes()[:5000])  # a copy cut short
    proc = refused("--ckpt_path", str(damaged), "--port", str(free_port()))
    assert str(damaged) in proc.stderr and "cannot be used" in proc.stderr


def test_an_occupied_port_stops_the_start_in_one_paragraph(trained_run):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = refused("--ckpt_path", str(trained_run["ckpt"]), "--port", str(port))
    assert f"Port {port} on 127.0.0.1" in proc.stderr and "--port" in proc.stderr


def test_a_missing_litserve_names_the_serve_extra(trained_run):
    hidden = "import sys; sys.modules['litserve'] = None; from emolightning.cli.launch import main; main()"  # `import litserve` fails as if absent
    proc = refused("--ckpt_path", str(trained_run["ckpt"]), "--port", str(free_port()), code=hidden)
    assert "pip install 'emolightning[serve]'" in proc.stderr


def test_a_missing_checkpoint_stops_the_start_in_one_paragraph(tmp_path):
    proc = refused("--ckpt_path", str(tmp_path / "nowhere.ckpt"), "--port", str(free_port()))
    assert "does not exist" in proc.stderr
