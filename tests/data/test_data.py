import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emolightning.data.batching import Collator, LengthGroupedSampler
from emolightning.data.datamodule import EmotionDataModule
from emolightning.data.tables import read_table
from emolightning.data.token_cache import read_cache, write_cache
from emolightning.errors import DataError

from conftest import LABELS, make_rows, write_official


def dm(tiny_encoder, cache_dir, **kwargs):
    return EmotionDataModule(tokenizer=tiny_encoder, cache_dir=cache_dir, batch_size=8, eval_batch_size=16, **kwargs)


def test_official_dir_loads_labels_from_header(ec_dir, tiny_encoder, cache_dir):
    data = dm(tiny_encoder, cache_dir, data_dir=ec_dir)
    assert data.label_names == LABELS and data.num_labels == 11
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["labels"].shape == (8, 11) and batch["input_ids"].shape[0] == 8
    # dynamic padding: the batch is as long as its longest text, not max_length
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
    assert len(data.splits["validation"]) == 41


def test_labels_follow_the_data_not_a_fixed_list(tmp_path, tiny_encoder, cache_dir):
    other = ["admiration", "curiosity", "grief"]
    rows = [(f"g{i}", "so very happy news", [i % 2, 1, 0]) for i in range(12)]
    write_official(tmp_path / "x-train.txt", rows, labels=other)
    write_official(tmp_path / "x-dev.txt", rows[:4], labels=other)
    data = dm(tiny_encoder, cache_dir, data_dir=str(tmp_path))
    assert data.label_names == other


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "tsv"])
def test_table_formats_agree(tmp_path, fmt):
    rows = make_rows(10, 3, "r")
    records = [{"ID": i, "Tweet": text, **dict(zip(LABELS, gold))} for i, text, gold in rows]
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps({**r, **{k: bool(r[k]) for k in LABELS}}) for r in records))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        write_official(path, rows)
    table = read_table(str(path))
    assert table.ids == [r[0] for r in rows]
    assert table.texts == [r[1] for r in rows]
    assert table.labels.tolist() == [r[2] for r in rows]


def test_unlabelled_official_test_file_loads_for_predict(tmp_path, tiny_encoder, cache_dir):
    write_official(tmp_path / "2018-E-c-En-train.txt", make_rows(10, 0, "a"))
    write_official(tmp_path / "2018-E-c-En-test.txt", make_rows(7, 1, "b"), unlabelled=True)
    data = dm(tiny_encoder, cache_dir, data_dir=str(tmp_path))
    data.prepare_data()
    data.setup("predict")
    batches = list(data.predict_stream)
    assert data.predict_stream.num_rows == 7 and sorted(i for b in batches for i in b["index"].tolist()) == list(range(7))
    assert all("labels" not in b for b in batches)
    with pytest.raises(DataError, match="no labels"):
        data.setup("test")


def test_plain_text_file_for_predict(tmp_path, ec_dir, tiny_encoder, cache_dir):
    (tmp_path / "texts.txt").write_text("so happy today\nscared of the news\n")
    data = dm(tiny_encoder, cache_dir, data_dir=ec_dir, predict_file=str(tmp_path / "texts.txt"))
    data.setup("predict")
    (batch,) = list(data.predict_stream)
    rows = sorted(zip(batch["index"].tolist(), batch["ids"], batch["texts"]))  # the batch is length-sorted
    assert rows == [(0, "1", "so happy today"), (1, "2", "scared of the news")]


def test_tokenisation_is_cached(ec_dir, tiny_encoder, cache_dir, monkeypatch):
    data = dm(tiny_encoder, cache_dir, data_dir=ec_dir)
    data.prepare_data()
    calls = []
    monkeypatch.setattr(EmotionDataModule, "_tokenize", lambda self, split: calls.append(split))
    fresh = dm(tiny_encoder, cache_dir, data_dir=ec_dir)
    fresh.setup("fit")
    assert calls == [] and len(fresh.splits["train"]) == 96


def test_truncation_keeps_final_special_token(tmp_path, tiny_encoder, cache_dir):
    long_text = " ".join(["very"] * 50)
    write_official(tmp_path / "a-train.txt", [("1", long_text, [1] + [0] * 10), ("2", "so happy", [0] * 11)])
    data = dm(tiny_encoder, cache_dir, data_dir=str(tmp_path), max_length=16)
    out = data._tokenize("train")
    assert out["truncated"] == 1
    ids = out["input_ids"][0]
    assert len(ids) == 16 and ids[-1].item() == 3  # [SEP]


def test_collator_pads_to_longest():
    items = [
        {"input_ids": torch.tensor([2, 7, 3]), "index": 0, "labels": torch.ones(2)},
        {"input_ids": torch.tensor([2, 3]), "index": 1, "labels": torch.zeros(2)},
    ]
    batch = Collator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["index"].tolist() == [0, 1]


def test_length_grouped_sampler_groups_and_covers():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47, 9, 46, 10]
    sampler = LengthGroupedSampler(lengths, batch_size=2, seed=0, num_replicas=1, rank=0)
    order = list(sampler)
    assert sorted(set(order)) == list(range(11)) and len(order) == len(sampler) == 12
    spreads = [abs(lengths[order[i]] - lengths[order[i + 1]]) for i in range(0, 12, 2)]
    assert sorted(spreads)[3] <= 2  # most batches pair near-equal lengths


def test_length_grouped_sampler_splits_global_batches_across_ranks():
    lengths = list(range(3, 40))
    one = LengthGroupedSampler(lengths, batch_size=4, seed=1, num_replicas=1, rank=0)
    two = [LengthGroupedSampler(lengths, batch_size=2, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    single = list(one)
    ranks = [list(s) for s in two]
    for b in range(len(single) // 4):
        assert sorted(single[4 * b : 4 * b + 4]) == sorted(ranks[0][2 * b : 2 * b + 2] + ranks[1][2 * b : 2 * b + 2])
    one.set_epoch(1)
    assert list(one) != single


def test_named_files_never_fall_back_to_the_hub(ec_dir, tiny_encoder, cache_dir, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked for a split although files were named")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    data = dm(tiny_encoder, cache_dir, train_file=f"{ec_dir}/2018-E-c-En-train.txt", val_file=f"{ec_dir}/2018-E-c-En-dev.txt")
    data.prepare_data()
    assert data.split_source("test") is None
    assert sorted(p.name.split("-")[0] for p in __import__("pathlib").Path(cache_dir).iterdir()) == ["train", "validation"]


def test_dev_labels_in_another_column_order_are_matched_by_name(tmp_path, tiny_encoder, cache_dir):
    rows = make_rows(12, 4, "d")
    write_official(tmp_path / "x-train.txt", rows)
    shuffled = LABELS[::-1]
    write_official(tmp_path / "x-dev.txt", [(i, t, gold[::-1]) for i, t, gold in rows[:5]], labels=shuffled)
    data = dm(tiny_encoder, cache_dir, data_dir=str(tmp_path))
    data.prepare_data()
    data.setup("fit")
    assert data.label_names == LABELS
    # the training split's column order wins: row i of dev has the labels of row i of train
    assert data.splits["validation"].labels.int().tolist() == [gold for _, _, gold in rows[:5]]


def test_dev_with_other_labels_is_refused_naming_the_difference(tmp_path, tiny_encoder, cache_dir):
    rows = make_rows(6, 4, "d")
    write_official(tmp_path / "x-train.txt", rows)
    write_official(tmp_path / "x-dev.txt", [(i, t, gold[:10]) for i, t, gold in rows], labels=LABELS[:10])
    data = dm(tiny_encoder, cache_dir, data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"x-dev.txt: its labels differ .*missing: \['trust'\].*data\.label_columns"):
        data.prepare_data()


def test_hub_offline_says_what_to_do(tiny_encoder, cache_dir, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'SemEvalWorkshop/sem_eval_2018_task_1' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    data = dm(tiny_encoder, cache_dir)
    with pytest.raises(
        DataError, match=r"Could not load the Hub dataset 'SemEvalWorkshop/sem_eval_2018_task_1'.*ConnectionError.*data\.data_dir.*data\.train_file"
    ):
        data.prepare_data()


@pytest.mark.parametrize(("stage", "cached"), [("fit", ["train", "validation"]), ("validate", ["validation"]), ("test", ["test"]), ("predict", [])])
def test_prepare_data_tokenises_only_the_splits_of_the_running_stage(ec_dir, tiny_encoder, cache_dir, stage, cached):
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    data = dm(tiny_encoder, cache_dir, data_dir=ec_dir)
    data.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn(stage)), world_size=1)
    data.prepare_data()
    assert sorted(p.name.split("-")[0] for p in Path(cache_dir).glob("*.npz")) == cached


def test_a_run_describes_each_file_once_however_often_it_reads_it(tmp_path, tiny_encoder, cache_dir, caplog):
    """fit reads the train file for the label names and again to tokenise it, and predict may read it as its input too:
    its notes (columns chosen, texts whose line breaks became spaces) are one line each per run, and a new run says them again."""
    import csv
    import logging
    from collections import Counter

    def write_csv(path, rows):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text", *LABELS])
            writer.writerows([row_id, text.replace(" ", "\n", 1) if i % 3 == 0 else text, *gold] for i, (row_id, text, gold) in enumerate(rows))
        return str(path)

    train, dev = write_csv(tmp_path / "train.csv", make_rows(12, 4, "t")), write_csv(tmp_path / "dev.csv", make_rows(6, 5, "d"))
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.emolightning"):
        for run in range(2):  # two runs, each tokenising (a cached split is not read again)
            data = dm(tiny_encoder, f"{cache_dir}/{run}", train_file=train, val_file=dev, predict_file=train)
            assert data.label_names == LABELS
            data.prepare_data()
            data.setup("fit")
            data.setup("predict")
    notes = Counter(r.getMessage() for r in caplog.records if "held tabs or line breaks" in r.getMessage() or "text column 'text'" in r.getMessage())
    assert len(notes) == 4 and set(notes.values()) == {2}, notes


def test_token_cache_round_trips_without_pickle(tmp_path, tiny_encoder, cache_dir):
    rows = make_rows(6, 5, "u")
    rows[1] = (rows[1][0], "so happy today ünïcödé 😀", rows[1][2])
    write_official(tmp_path / "x-train.txt", rows)
    data = dm(tiny_encoder, cache_dir, data_dir=str(tmp_path), max_length=6, teacher_tokenizer=tiny_encoder)
    fresh = data._tokenize("train")
    data.prepare_data()
    path = data._cache_path("train", data.split_source("train"))
    with np.load(path, allow_pickle=False) as npz:  # every member is a plain array: nothing to unpickle
        assert all(npz[name].dtype != object for name in npz.files)
    cached = data._tokenized("train", build=False)
    assert cached.keys() == fresh.keys() and cached["texts"][1] == "so happy today ünïcödé 😀"
    for key in ("input_ids", "teacher_input_ids"):
        assert all(torch.equal(a, b) and a.dtype == torch.int32 for a, b in zip(cached[key], fresh[key], strict=True))
    assert torch.equal(cached["labels"], fresh["labels"]) and cached["labels"].dtype == torch.float32
    assert [cached[k] for k in ("ids", "texts", "truncated", "source")] == [fresh[k] for k in ("ids", "texts", "truncated", "source")]
    assert fresh["truncated"] > 0
    lone = dict(fresh, texts=["a lone \ud83d surrogate, as a JSON table's escape reads"] + fresh["texts"][1:], labels=None)
    write_cache(str(tmp_path / "lone.npz"), lone)
    assert read_cache(str(tmp_path / "lone.npz"))["texts"] == lone["texts"] and read_cache(str(tmp_path / "lone.npz"))["labels"] is None


class RunsOnLoad:
    ran = False

    def __reduce__(self):
        return (setattr, (RunsOnLoad, "ran", True))


def test_a_cache_file_holding_a_pickle_is_rebuilt_never_run(ec_dir, tiny_encoder, cache_dir):
    data = dm(tiny_encoder, cache_dir, data_dir=ec_dir)
    path = data._cache_path("train", data.split_source("train"))
    Path(path).parent.mkdir(parents=True)
    torch.save({"input_ids": RunsOnLoad()}, path)  # what `torch.load(weights_only=False)` would have executed
    with pytest.warns(UserWarning, match="damaged"):
        data.setup("fit")
    assert not RunsOnLoad.ran and len(data.splits["train"]) == 96
