"""A checkpoint stands alone: `emolightning predict --ckpt_path X --data.predict_file F` needs no config and no training files.

X is a .ckpt file or a run folder, which stands for its one best checkpoint (models/checkpoints.py).

A checkpoint written by `fit` holds the model's hyperparameters (encoder, labels, head; its tuned
thresholds are weights) and the data module's. Without `--config`, `checkpoint_arguments` puts
the model and the data module's text options in front of the user's own options, which override
them; the data files are never taken from it, so nothing reads the training files. With or without
a config, the CLI gives the data the checkpoint's label names, so test and predict read only their own split.
"""

from __future__ import annotations

import json
import os

EVALUATING = ("validate", "test", "predict")
# the data options that belong to the model as trained; files, folders and batch sizes of training do not
TEXT_OPTIONS = ("text_column", "id_column", "label_columns", "labels_column", "max_length")


def option_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def checkpoint_arguments(args: list[str]) -> list[str]:
    """`args` with the checkpoint's model and text options in front, for validate/test/predict with a .ckpt and no config or model."""
    if not args or args[0] not in EVALUATING:
        return args
    ckpt = option_value(args, "--ckpt_path")
    if not ckpt or not os.path.exists(ckpt) or ckpt.endswith(".json"):
        return args
    if any(a in ("-c", "--config") or a.startswith(("--config=", "--model")) for a in args[1:]):
        return args
    from ..models.checkpoints import check_checkpoint, checkpoint_path, hyperparameters

    ckpt = checkpoint_path(ckpt)  # a run folder stands for its best checkpoint (the CLI resolves it again, the same way)
    if not os.path.isfile(ckpt):
        return args

    model, data = hyperparameters(check_checkpoint(ckpt))  # a damaged file stops here, named
    model.pop("_instantiator", None)
    class_path = model.pop("_class_path", None)
    if class_path is None:
        return args  # not written by `emolightning fit`: Lightning's own error follows
    front = ["--model", json.dumps({"class_path": class_path, "init_args": model})]
    for key in TEXT_OPTIONS:
        if data.get(key) is not None:
            value = data[key]
            front += [f"--data.{key}", value if isinstance(value, str) else json.dumps(value)]
    return [args[0], *front, *args[1:]]
