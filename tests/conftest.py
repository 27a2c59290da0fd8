"""Shared fixtures: a tiny random BERT and a tiny random MPNet, each with its own (very different) tokenizer, and E-c-format data written here.

Nothing is downloaded and nothing is read from outside the test's tmp dirs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# property tests (test_roundtrip.py) draw the same examples on every run: CI stays deterministic
settings.register_profile(
    "emolightning", derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("emolightning")

LABELS = ["anger", "anticipation", "disgust", "fear", "joy", "love", "optimism", "pessimism", "sadness", "surprise", "trust"]
# One cue word per label, so that a tiny model can learn something in a few steps.
CUES = {
    "anger": "furious",
    "anticipation": "awaiting",
    "disgust": "gross",
    "fear": "scared",
    "joy": "delighted",
    "love": "adore",
    "optimism": "hopeful",
    "pessimism": "doomed",
    "sadness": "crying",
    "surprise": "shocked",
    "trust": "reliable",
}
FILLER = "the a today my friend work this is was so very and with at home news game city morning".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_rows(n: int, seed: int, prefix: str) -> list[tuple[str, str, list[int]]]:
    """n (id, text, labels) rows: 0-3 labels each, each label signalled by its cue word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice([0, 1, 1, 2, 2, 3])
        gold = set(rng.sample(LABELS, k))
        words = rng.sample(FILLER, rng.randint(3, 12)) + [CUES[label] for label in gold]
        rng.shuffle(words)
        rows.append((f"{prefix}-{i:04d}", " ".join(words), [int(label in gold) for label in LABELS]))
    return rows


def write_official(path: Path, rows, labels=LABELS, unlabelled: bool = False) -> Path:
    lines = ["\t".join(["ID", "Tweet", *labels])]
    for row_id, text, gold in rows:
        values = ["NONE"] * len(labels) if unlabelled else [str(v) for v in gold]
        lines.append("\t".join([row_id, text, *values]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 random BERT and a WordPiece tokenizer over the fixture words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = SPECIALS + sorted(set(FILLER) | set(CUES.values()) | set("abcdefghijklmnopqrstuvwxyz"))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    return str(out)


MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # the order of all-mpnet-base-v2's vocabulary: <s> 0, pad 1, </s> 2


def split_word(word: str) -> list[str]:
    """The pieces tiny_mpnet's vocabulary cuts a word into: words of more than 5 letters become two WordPiece pieces."""
    return [word] if len(word) <= 5 else [word[:4], "##" + word[4:]]


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 random MPNet whose tokenizer differs from tiny_encoder's in everything that can differ: its specials
    (`<s>` 0, pad 1, `</s>` 2, where tiny_encoder has [PAD] 0, [CLS] 2, [SEP] 3), every word's id (another order, offset by
    other pieces) and the segmentation (words of more than 5 letters are two pieces here, one token in tiny_encoder's)."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    out = tmp_path_factory.mktemp("tiny-mpnet")
    words = sorted(set(FILLER) | set(CUES.values()) | set("abcdefghijklmnopqrstuvwxyz"), reverse=True)
    vocab = MPNET_SPECIALS + list(dict.fromkeys(piece for word in words for piece in split_word(word)))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # `vocab=`: transformers 5 ignores `vocab_file=`; the unk token must be one of the vocabulary's
    MPNetTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=True, unk_token="<unk>").save_pretrained(out)
    config = MPNetConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=80, pad_token_id=1
    )
    MPNetModel(config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def ec_dir(tmp_path_factory) -> str:
    """The official E-c layout: train 96, dev 41 (odd on purpose, for DDP padding), test-gold 30 rows."""
    out = tmp_path_factory.mktemp("ec")
    write_official(out / "2018-E-c-En-train.txt", make_rows(96, 0, "train"))
    write_official(out / "2018-E-c-En-dev.txt", make_rows(41, 1, "dev"))
    write_official(out / "2018-E-c-En-test-gold.txt", make_rows(30, 2, "test"))
    return str(out)


@pytest.fixture
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture(scope="session")
def trained_run(tiny_encoder, ec_dir, tmp_path_factory) -> dict:
    """One `emolightning fit` of the tiny BERT (1 epoch, 2 steps), shared by the predict and export tests.

    Returns its root dir, saved config.yaml, best checkpoint and the full last.ckpt (kept, as a resume needs it).
    """
    from helpers import emolightning, tiny_args

    root = tmp_path_factory.mktemp("trained")
    emolightning(
        "fit",
        *tiny_args(
            tiny_encoder,
            ec_dir,
            root,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--model.init_args.lr",
            "1e-3",
            "--last_checkpoint.keep_after_fit",
            "true",
        ),
    )
    run = next((root / "run" / "lightning_logs").glob("version_*"))
    checkpoints = run / "checkpoints"
    return {"root": root, "config": run / "config.yaml", "ckpt": next(checkpoints.glob("best-*.ckpt")), "last": checkpoints / "last.ckpt"}


@pytest.fixture
def one_thread():
    """On 2 shared cores, a second intra-op thread makes the tiny models slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never touch the network, and W&B never asks for a login."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
