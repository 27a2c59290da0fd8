"""List-of-labels datasets (GoEmotions: `labels: [3, 27]`), from tiny local files shaped like it and a Hub split built in memory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from emolightning.data.datamodule import EmotionDataModule
from emolightning.data.tables import read_table
from emolightning.errors import DataError

REPO = Path(__file__).resolve().parents[2]
NAMES = yaml.safe_load((REPO / "configs" / "goemotions" / "minilm-l6.yaml").read_text())["data"]["label_names"]
ROWS = [
    ("eew5j0j", "Game hurt, I was so delighted", [17, 3]),
    ("ed2mah1", "You do right\nif you don't care", [27]),
    ("eeibobj", 'he said "shocked"', [26, 14, 17]),
]


def multi_hot(ids: list[int]) -> list[int]:
    return [int(i in ids) for i in range(len(NAMES))]


def write(path: Path, rows=ROWS, names: bool = False) -> Path:
    labels = [[NAMES[i] for i in ids] if names else ids for _, _, ids in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "labels": lab, "id": i}) + "\n" for (i, t, _), lab in zip(rows, labels)), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["text", "labels", "id"]] + [[t, ",".join(map(str, lab)), i] for (i, t, _), lab in zip(rows, labels)])
    else:  # GoEmotions' own tsv layout (text, comma-separated ids, id), with a header
        path.write_text(
            "text\tlabels\tid\n" + "".join(f"{t.replace(chr(10), ' ')}\t{','.join(map(str, lab))}\t{i}\n" for (i, t, _), lab in zip(rows, labels)),
            encoding="utf-8",
        )
    return path


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".csv"])
@pytest.mark.parametrize("names", [False, True])
def test_label_lists_of_ids_or_names(tmp_path, suffix, names):
    table = read_table(str(write(tmp_path / f"train{suffix}", names=names)), "text", "id", labels_column="labels", label_names=NAMES)
    assert table.label_names == NAMES and table.ids == [r[0] for r in ROWS]
    assert table.labels.tolist() == [multi_hot(ids) for _, _, ids in ROWS]
    assert table.texts[1] == "You do right if you don't care"


def test_an_unknown_label_id_names_its_line(tmp_path):
    path = write(tmp_path / "train.tsv", rows=ROWS + [("x", "odd", [28])])
    with pytest.raises(DataError, match=r"train.tsv, line 5: .*'labels' holds '28'.*0\.\.27 of `data.label_names`"):
        read_table(str(path), "text", "id", labels_column="labels", label_names=NAMES)


def test_hub_split_names_come_from_its_classlabel_feature(tiny_encoder, cache_dir, monkeypatch):
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "labels": datasets.Sequence(datasets.ClassLabel(names=NAMES)), "id": datasets.Value("string")}
    )
    split = datasets.Dataset.from_dict(
        {"text": [t for _, t, _ in ROWS], "labels": [ids for _, _, ids in ROWS], "id": [i for i, _, _ in ROWS]}, features=features
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.DatasetDict({"train": split, "validation": split, "test": split}))
    data = EmotionDataModule(
        hub_dataset="google-research-datasets/go_emotions",
        hub_config="simplified",
        text_column="text",
        id_column="id",
        labels_column="labels",
        tokenizer=tiny_encoder,
        cache_dir=cache_dir,
    )
    assert data.label_names == NAMES  # no data.label_names: the Hub feature's
    data.prepare_data()
    data.setup("fit")
    assert data.splits["validation"].labels.int().tolist() == [multi_hot(ids) for _, _, ids in ROWS]


@pytest.mark.slow  # several processes or a full fit: CI runs the slow set too
def test_goemotions_config_trains_and_predicts_one_column_per_label(tiny_encoder, tmp_path):
    from helpers import emolightning

    train = write(tmp_path / "train.jsonl", [(f"{i}-{k}", t, ids) for k in range(4) for i, t, ids in ROWS])
    dev = write(tmp_path / "dev.tsv")
    texts = tmp_path / "texts.txt"
    texts.write_text("so delighted\nshocked and scared\n", encoding="utf-8")
    common = ["--data.cache_dir", str(tmp_path / "cache"), "--trainer.enable_progress_bar", "false"]
    emolightning(
        "fit",
        "--config",
        "configs/goemotions/minilm-l6.yaml",
        "--model.init_args.encoder",
        tiny_encoder,
        "--data.train_file",
        str(train),
        "--data.val_file",
        str(dev),
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.accelerator",
        "cpu",
        *common,
    )
    run = next((tmp_path / "run" / "lightning_logs").glob("version_*"))
    out = tmp_path / "pred.txt"
    emolightning(
        "predict",
        "--config",
        str(run / "config.yaml"),
        "--ckpt_path",
        str(next((run / "checkpoints").glob("best-*.ckpt"))),
        "--data.predict_file",
        str(texts),
        "--output",
        str(out),
        *common,
    )
    header, *rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert header == ["id", "text", *NAMES]
    assert [r[:2] for r in rows] == [["1", "so delighted"], ["2", "shocked and scared"]] and all(set(r[2:]) <= {"0", "1"} and len(r) == 30 for r in rows)
