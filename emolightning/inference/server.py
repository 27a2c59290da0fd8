"""`emolightning serve`: the model of a run behind LitServe, with dynamic batching across requests.

    emolightning serve --ckpt_path runs/quickstart/lightning_logs/version_0 --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"texts": ["what a day", "so scared"]}'

LitServe runs the HTTP side (uvicorn, FastAPI) in its own processes and the model in
`--workers_per_device` inference workers per device; a worker takes up to `--max_batch_size`
requests that arrive within `--batch_timeout` seconds of each other and runs all their texts in one
call of serving.TextClassifier, so concurrent clients share forward passes. Requests are checked on the
HTTP side, before they reach a batch (RequestCheck): a bad request gets its 4xx and one sentence,
and never fails the good requests it would have shared a batch with.

Endpoints: `POST /predict`, LitServe's `GET /health` (200 once every worker has loaded the model)
and `GET /info` (`model`: labels, thresholds, max_length, model, emolightning version; `server`:
LitServe's devices and workers). Ctrl-C and SIGTERM stop the workers and the HTTP processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import litserve as ls
from starlette.responses import JSONResponse

from ..errors import ConfigError
from .serving import ModelSource, RequestError, TextClassifier, body_limit, request_texts

log = logging.getLogger("emolightning.serve")


def log_to_stderr() -> None:
    """INFO lines of `emolightning.serve` on stderr, once per process (the inference workers are fresh processes)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s emolightning.serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class EmotionAPI(ls.LitAPI):
    """The LitAPI of `emolightning serve`: a batch of checked requests -> one TextClassifier call -> each request's answer."""

    def __init__(self, source: ModelSource, backend: str, precision: str, max_batch_size: int, batch_timeout: float, workers_per_device: int):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.source, self.backend, self.precision, self.workers_per_device = source, backend, precision, workers_per_device

    def setup(self, device) -> None:
        import torch

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process stops the workers
        log_to_stderr()
        if str(device).startswith("cpu") and self.workers_per_device > 1:  # workers share the cores instead of each taking them all
            torch.set_num_threads(max(1, torch.get_num_threads() // self.workers_per_device))
        self.model = TextClassifier(self.source, device, self.backend, self.precision, batch_size=self.max_batch_size)
        log.info(f"worker on {device}: backend {self.model.backend}, precision {self.model.precision}, {len(self.source.label_names)} labels")

    def decode_request(self, request):  # unannotated: LitServe would hand an annotation to FastAPI as the body's type
        return request  # checked and normalised by RequestCheck: {"texts": [...], "single": bool}

    def batch(self, inputs: list[dict]) -> list[dict]:
        return inputs

    def predict(self, requests):
        one = isinstance(requests, dict)  # max_batch_size 1: LitServe hands over the request itself
        requests = [requests] if one else requests
        start = time.perf_counter()
        texts = [text for request in requests for text in request["texts"]]
        answers = iter(self.model.predict(texts))
        outputs = []
        for request in requests:
            mine = [next(answers) for _ in request["texts"]]
            outputs.append(mine[0] if request["single"] else {"predictions": mine})
        log.info(
            f"batch of {len(requests)} request{'s' * (len(requests) != 1)}, {len(texts)} text{'s' * (len(texts) != 1)}: {1000 * (time.perf_counter() - start):.1f} ms"
        )
        return outputs[0] if one else outputs

    def unbatch(self, outputs: list[dict]) -> list[dict]:
        return outputs

    def encode_response(self, output: dict) -> dict:
        return output


class RequestCheck:
    """ASGI middleware on the HTTP side: a `POST /predict` body is read (up to serving.body_limit), checked by serving.request_texts and
    passed on normalised, or answered at once with its 4xx and `{"detail": "<one sentence>"}`; every other request passes untouched."""

    def __init__(self, app, path: str = "/predict", max_texts: int = 64, max_chars: int = 10000):
        self.app, self.path, self.max_texts, self.max_chars = app, path, max_texts, max_chars
        self.limit = body_limit(max_texts, max_chars)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self.refuse(
                    413,
                    f"The request body is over {self.limit:,} bytes, more than {self.max_texts} texts of {self.max_chars:,} characters take: split it.",
                    scope,
                    receive,
                    send,
                )
        try:
            texts, single = request_texts(body, self.max_texts, self.max_chars)
        except RequestError as err:
            return await self.refuse(err.status, err.message, scope, receive, send)
        payload = json.dumps({"texts": texts, "single": single}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length", b"content-encoding")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    @staticmethod
    async def refuse(status: int, message: str, scope, receive, send) -> None:
        await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # LitServer.run's own graceful shutdown (workers and HTTP processes stopped) handles it


def quiet_child_signals() -> None:
    """In the HTTP processes LitServe forks: Ctrl-C is the main process's to handle, and SIGTERM (how it stops them) ends them
    without a traceback. uvicorn handles both while it serves, then raises the signal again with the handler it found."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def serve(
    source: ModelSource,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 64,
    batch_timeout: float = 0.01,
    workers_per_device: int = 1,
    accelerator: str = "auto",
    backend: str = "auto",
    precision: str = "auto",
    max_texts: int = 64,
    max_chars: int = 10000,
    timeout: float = 30,
) -> None:
    """Serve `source` until Ctrl-C or SIGTERM (module docstring)."""
    log_to_stderr()
    api = EmotionAPI(source, backend, precision, max_batch_size, batch_timeout, workers_per_device)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        workers_per_device=workers_per_device,
        timeout=timeout,
        model_metadata=source.info(),
        middlewares=[(RequestCheck, {"path": api.api_path, "max_texts": max_texts, "max_chars": max_chars})],
    )
    log.info(
        f"serving {source.kind} {source.path} ({len(source.label_names)} labels) on http://{host}:{port}/predict: max_batch_size {max_batch_size}, "
        f"batch_timeout {batch_timeout} s, {workers_per_device} worker(s) per device, backend {backend}, precision {precision}"
    )
    os.register_at_fork(after_in_child=quiet_child_signals)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        # no client.py written into the working folder; no access line per request (the workers log one line a batch)
        server.run(host=host, port=port, generate_client_file=False, access_log=False)
    except KeyboardInterrupt:  # during start-up, before LitServer.run's own handler is in place: stop the workers started so far
        for worker in getattr(server, "inference_workers", None) or []:
            worker.terminate()
    except RuntimeError as err:
        if "workers failed to start" not in str(err):
            raise
        raise ConfigError(
            f"The server's inference worker could not load {source.path}: its error is logged above. Fix what it names (often the memory, "
            "or a model folder copied in part) and start the server again."
        ) from None
    log.info("stopped")
