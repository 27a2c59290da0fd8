"""What `emolightning serve` serves, without the web server: the model a `--ckpt_path` names, its texts -> labels, and the request checks.

    emolightning serve --ckpt_path runs/quickstart/lightning_logs/version_0

server.py puts this behind LitServe; everything here runs without it, so it is what the tests of the
answers and of the request checks import. A request's texts take predict's path exactly: tabs and
line breaks become spaces (tables.spaced, as predict's file readers do), `encoding.TextBatches`
tokenises, truncates to the checkpoint's `max_length` and batches them longest first, the model (with
predict's `--backend` swap and `trainer.precision` autocast) gives one sigmoid probability per label,
and the checkpoint's tuned thresholds cut them. So a text gets the same labels from `serve` as from
`predict` with the same backend and precision.

`--ckpt_path` may be a run folder (its best checkpoint), a best checkpoint, an ensemble manifest
(ENSEMBLE.json: its members stay loaded, so a request reloads nothing) or a folder written by
`emolightning export` (its own model class, thresholds and tokenizer).
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..data.encoding import TextBatches
from ..data.tables import spaced
from ..errors import ConfigError
from ..files import check_model_folder
from ..hardware import cpu_flags, pad_multiple, resolve_precision
from ..models.checkpoints import check_checkpoint, checkpoint_path, hyperparameters, load_classifier
from ..models.thresholds import checkpoint_thresholds
from .backends import AUTO_BACKEND, FP32_HEAD_BACKENDS, Bf16Encoder, OnnxEncoder, require_onnx
from .export import MODEL_CLASS
from .manifest import is_manifest, read_manifest

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the interfaces LitServe binds to
DEFAULT_MAX_LENGTH = 128  # EmotionDataModule's max_length, for an export that does not record its own


def require_litserve():
    """`litserve`, imported, or a ConfigError naming the extra that provides it."""
    try:
        import litserve
    except ImportError as err:
        raise ConfigError(
            f"`emolightning serve` runs on LitServe, which is not installed ({type(err).__name__}: {err}). Install the extra with "
            "`pip install 'emolightning[serve]'` (litserve, which brings FastAPI and uvicorn), then start the server again."
        ) from None
    return litserve


@dataclass
class ModelSource:
    """What `--ckpt_path` names, read and checked without building the model: enough for `/info` and for a worker to load it."""

    kind: str  # "checkpoint", "ensemble" or "export"
    path: str
    model: str  # the encoder (a checkpoint, an export) or the members' encoders (an ensemble)
    label_names: list[str]
    thresholds: list[float]
    max_length: int | list[int]  # an ensemble's members each have their own
    tokenizer: str | None = None
    pad_to_multiple_of: int | None = None
    members: list[str] = field(default_factory=list)

    def info(self) -> dict:
        from .. import __version__

        return {
            "labels": self.label_names,
            "thresholds": dict(zip(self.label_names, self.thresholds)),
            "max_length": self.max_length,
            "model": self.model,
            "source": {"kind": self.kind, "path": self.path},
            "emolightning_version": __version__,
        }


def is_export(folder: str) -> bool:
    """Whether `folder` is a directory written by `emolightning export` (its config names the exported model class)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return MODEL_CLASS in (json.load(f).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return False


def model_source(path: str, max_length: int | None = None) -> ModelSource:
    """The model `--ckpt_path path` names, checked (a one-paragraph ConfigError for a missing or damaged one); `max_length` overrides an export's."""
    if os.path.isdir(path) and is_export(path):
        check_model_folder(path, "--ckpt_path")
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        length = max_length or int(config.get("emolightning_max_length") or DEFAULT_MAX_LENGTH)
        length = min(length, int(config.get("max_position_embeddings") or length))  # never more positions than the encoder has
        return ModelSource("export", path, config.get("_name_or_path") or path, labels, [float(t) for t in config["thresholds"]], length, tokenizer=path)
    if is_manifest(path):
        manifest = read_manifest(path)  # checks every member checkpoint
        encoders = [m.encoder for m in manifest.members]
        return ModelSource(
            "ensemble",
            path,
            " + ".join(encoders),
            manifest.label_names,
            manifest.thresholds,
            [m.max_length for m in manifest.members],
            members=[m.checkpoint for m in manifest.members],
        )
    ckpt_file = checkpoint_path(path)  # a run folder: its best checkpoint
    if not os.path.isfile(ckpt_file):
        raise ConfigError(
            f"The checkpoint '{ckpt_file}' (option --ckpt_path) does not exist. Give a run folder (<run>/lightning_logs/version_N), its "
            "best checkpoint (<run>/checkpoints/best-*.ckpt), an ensemble manifest (ENSEMBLE.json) or a folder written by `emolightning export`."
        )
    ckpt = check_checkpoint(ckpt_file)
    hparams, data = hyperparameters(ckpt)
    labels = list(hparams["label_names"])
    tuned = ckpt["state_dict"].get("thresholds")
    thresholds = [float(t) for t in tuned] if tuned is not None else [float(checkpoint_thresholds(hparams).threshold)] * len(labels)
    return ModelSource(
        "checkpoint",
        ckpt_file,
        hparams["encoder"],
        labels,
        thresholds,
        int(data.get("max_length") or DEFAULT_MAX_LENGTH),
        tokenizer=data.get("tokenizer") or hparams["encoder"],
        pad_to_multiple_of=data.get("pad_to_multiple_of"),
    )


def autocast(precision: str, device: torch.device):
    """The context that `trainer.precision` runs predict's step in: torch.autocast for the mixed precisions, else none."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def resolved(backend: str, precision: str, device: torch.device) -> tuple[str, str]:
    """(backend, precision) as predict resolves them (cli/main.py): `auto` is fp32, and the backends whose head runs in fp32
    (fp32, onnx, bf16) run without autocast; only `torch` runs at `precision`, whose `auto` is the device's fastest."""
    if backend == "auto":
        backend = AUTO_BACKEND
    if backend in FP32_HEAD_BACKENDS:
        precision = "32-true"
    elif precision == "auto":
        flags = cpu_flags() if device.type == "cpu" else set()
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        precision = resolve_precision(device.type, capability, flags)
    if backend in ("onnx", "bf16") and device.type != "cpu":
        raise ConfigError(f"`--backend {backend}` is a CPU path; this server runs on {device}. Use `--backend fp32` (or auto) there, or `--accelerator cpu`.")
    return backend, precision


class TextClassifier:
    """The served model on one device: texts -> each text's probabilities and labels, as predict computes them."""

    def __init__(self, source: ModelSource, device: str | torch.device = "cpu", backend: str = "auto", precision: str = "auto", batch_size: int = 64):
        from ..pretrained.encoders import load_tokenizer

        self.source, self.device, self.batch_size = source, torch.device(device), batch_size
        self.backend, self.precision = resolved(backend, precision, self.device)
        if source.kind == "ensemble" and self.backend != "torch":
            raise ConfigError(
                f"`--backend {self.backend}` swaps one model's encoder, but --ckpt_path is an ensemble manifest whose members run on PyTorch. "
                "Leave --backend at auto (or torch) for an ensemble, or serve one member's checkpoint."
            )
        if self.backend == "onnx":
            require_onnx("`--backend onnx`")
        self.workdir = None
        if source.kind == "ensemble":
            from .ensemble import EnsembleClassifier

            self.model = EnsembleClassifier(source.path, batch_size=batch_size, keep_members_loaded=True).to(self.device)
            self.thresholds = self.model.thresholds
            return
        if source.kind == "export":
            from transformers import AutoConfig

            from .modeling_emolightning import EmolightningForSequenceClassification

            config = AutoConfig.from_pretrained(source.path)  # the encoder's config class (the exported class names none of its own)
            self.model = EmolightningForSequenceClassification.from_pretrained(source.path, config=config).to(self.device).eval()
        else:
            self.model = load_classifier(source.path, self.device)
        # a checkpoint's tuned thresholds are a buffer of the model, as predict_step reads them; an export's are in its config
        self.thresholds = torch.tensor(source.thresholds, device=self.device) if source.kind == "export" else self.model.thresholds
        self.tokenizer = load_tokenizer(source.tokenizer)
        self.pad_to = source.pad_to_multiple_of or pad_multiple(self.device)
        self.swap_encoder()

    def swap_encoder(self) -> None:
        """predict's `--backend` (backends.InferenceBackend): the encoder runs in ONNX Runtime or with bf16 weights; the head stays fp32."""
        if self.backend == "onnx":
            import tempfile

            self.workdir = tempfile.TemporaryDirectory(prefix="emolightning-serve-onnx-")
            self.model.encoder = OnnxEncoder(self.model.encoder, self.workdir.name)
        elif self.backend == "bf16":
            self.model.encoder = Bf16Encoder(self.model.encoder)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return output.logits if self.source.kind == "export" else output

    @torch.inference_mode()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """(N, L) float32 probabilities of `texts`, in their order."""
        texts = [spaced(text) for text in texts]
        with autocast(self.precision, self.device):
            if self.source.kind == "ensemble":
                return self.model(texts).float()
            out = torch.empty(len(texts), len(self.source.label_names), device=self.device)
            for batch in TextBatches(texts, self.tokenizer, self.source.max_length, self.batch_size, self.pad_to):
                logits = self.logits(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
                out[torch.tensor(batch["rows"], device=self.device)] = torch.sigmoid(logits.float())
            return out

    def predict(self, texts: list[str]) -> list[dict]:
        """For each text, in order: `labels` (the names at or above their thresholds) and `probabilities` (label -> probability)."""
        probs = self.probabilities(texts)
        chosen = (probs >= self.thresholds).cpu().tolist()
        names = self.source.label_names
        return [
            {"labels": [n for n, on in zip(names, row) if on], "probabilities": dict(zip(names, p))} for row, p in zip(chosen, probs.float().cpu().tolist())
        ]


# ---- requests --------------------------------------------------------------------------------
USAGE = 'send {"text": "..."} or {"texts": ["...", ...]}'


class RequestError(Exception):
    """A request the server refuses: its HTTP status and one sentence saying why and what to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def checked_text(text, where: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise RequestError(422, f"{where} is a JSON {json_type(text)}, not a string: {USAGE}.")
    if len(text) > max_chars:
        raise RequestError(
            413, f"{where} has {len(text):,} characters, more than this server's limit of {max_chars:,} (--max_text_chars): shorten or split it."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape (\\ud800) that no tokenizer can take
        raise RequestError(400, f"{where} holds an unpaired UTF-16 surrogate at character {err.start}, which is not text: send valid Unicode.") from None
    return text


def json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def request_texts(body: bytes, max_texts: int, max_chars: int) -> tuple[list[str], bool]:
    """(the texts of a `POST /predict` body, whether it gave one `text`), or a RequestError with its status and one sentence."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RequestError(400, f"The request body is not UTF-8 (byte 0x{body[err.start]:02x} at position {err.start}): send JSON encoded as UTF-8.") from None
    except json.JSONDecodeError as err:
        raise RequestError(400, f"The request body is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): {USAGE}.") from None
    if not isinstance(payload, dict):
        raise RequestError(422, f"The request body is a JSON {json_type(payload)}, not an object: {USAGE}.")
    if ("text" in payload) == ("texts" in payload):
        what = "both `text` and `texts`" if "text" in payload else f"neither `text` nor `texts` (its keys: {', '.join(map(repr, list(payload)[:5])) or 'none'})"
        raise RequestError(422, f"The request has {what}: {USAGE}.")
    if "text" in payload:
        return [checked_text(payload["text"], "`text`", max_chars)], True
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f"`texts` is a JSON {json_type(texts)}, not an array of strings: {USAGE}.")
    if not texts:
        raise RequestError(422, f"`texts` is an empty array: {USAGE} with at least one text.")
    if len(texts) > max_texts:
        raise RequestError(
            413, f"`texts` holds {len(texts):,} texts, more than this server's limit of {max_texts:,} a request (--max_texts_per_request): split it."
        )
    return [checked_text(text, f"`texts[{i}]`", max_chars) for i, text in enumerate(texts)], False


def body_limit(max_texts: int, max_chars: int) -> int:
    """The most bytes a valid request can take: every text at its longest, each character escaped (\\uXXXX), plus the JSON around them."""
    return max_texts * (6 * max_chars + 8) + 4096


def check_port(host: str, port: int) -> None:
    """A one-paragraph ConfigError when `port` on `host` cannot be listened on (another server has it, or it is privileged)."""
    if host not in HOSTS:
        raise ConfigError(f"`--host {host}` is not an interface LitServe binds to: choose {', '.join(HOSTS)} (0.0.0.0 for every interface, as in a container).")
    if not 1024 <= port <= 65535:
        raise ConfigError(f"`--port {port}` is outside 1024-65535, the ports LitServe listens on. Choose one there, e.g. 8000.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port only in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"Port {port} on {host} cannot be listened on ({err.strerror or err}): another server (or an earlier `emolightning serve`) "
                "holds it. Stop that server, or choose another port with --port."
            ) from None
