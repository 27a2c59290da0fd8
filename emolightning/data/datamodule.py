"""The LightningDataModule for SemEval-2018 E-c and other multi-label emotion sets.

A batch flows: table (tables.py) -> token ids, tokenised once (encoding.py) and cached on disk
(token_cache.py) by `prepare_data` (rank 0 only; the other ranks load the cache) -> length-grouped
sampler -> `Collator`, which pads each batch only to its own longest text (batching.py).
`predict` input is not cached: it is streamed, a chunk at a time (stream.py), whatever its length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message, rank_zero_only
from torch.utils.data import DataLoader

from ..errors import DataError
from ..files import write_atomically
from ..hardware import pad_multiple
from ..pretrained.encoders import load_tokenizer
from .batching import Collator, LengthGroupedSampler, ResumableDataLoader, TokenizedSplit, replicas, shard
from .encoding import encode, longest_first
from .stream import PredictStream
from .tables import SPLIT_OPTIONS, Table, aligned_labels, file_records, find_split_file, load_hub, output_columns, read_table, table_from_hub
from .token_cache import read_cache, write_cache

CACHE_VERSION = 1
HUB_LABELS_WAIT_S = 1800  # as long as NCCL's default timeout: local rank 0 may be downloading the data set
log = logging.getLogger("lightning.pytorch.emolightning")  # Lightning's handler shows its INFO lines
# the splits each stage reads (`all`: prepare_data called outside a trainer, e.g. by a script)
STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": (), "all": ("train", "validation", "test")}
OFFICIAL_EXAMPLE = {"train": "2018-E-c-En-train.txt", "validation": "2018-E-c-En-dev.txt", "test": "2018-E-c-En-test-gold.txt"}


class EmotionDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        predict_split: str = "test",
        hub_dataset: str = "SemEvalWorkshop/sem_eval_2018_task_1",
        hub_config: str | None = "subtask5.english",
        text_column: str | None = None,
        id_column: str | None = None,
        label_columns: list[str] | None = None,
        labels_column: str | None = None,
        label_names: list[str] | None = None,
        tokenizer: str = "sentence-transformers/all-MiniLM-L6-v2",
        max_length: int = 128,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        num_workers: int = 0,
        seed: int = 42,
        cache_dir: str | None = None,
        teacher_tokenizer: str | None = None,
        predict_chunk_batches: int = 128,
        pad_to_multiple_of: int | None = None,
        text_chunks: bool = False,
    ):
        """Multi-label emotion data from the official E-c files, local tables or the Hub.

        Args:
            data_dir: Folder with the official E-c files (`*-train.txt`, `*-dev.txt`,
                `*-test-gold.txt` or the unlabelled `*-test.txt`); `builtin:demo` is the bundled demo set.
            train_file: A train table (.txt/.tsv/.csv/.jsonl/.parquet). Files named with train_file,
                val_file and test_file replace data_dir for every split: a split without one is absent.
            val_file: The validation table.
            test_file: The test table.
            predict_file: A table, or a .txt with one text per line, for `predict`; else `predict_split`.
            predict_split: Which split `predict` labels when no predict_file is given.
            hub_dataset: Hub dataset used when neither data_dir nor files are given.
            hub_config: Its configuration name.
            text_column: Column holding the text; it must exist in every file. Unset: `Tweet` (the
                official files), else the one column named like text, sentence, message, comment, ...
                (in any case), found in each file and logged.
            id_column: Column holding the example ID; it must exist in every table. Unset: `ID`, else the
                one column named like id, idx, guid, ... or ending in `_id` (`msg_id`), else row numbers.
            label_columns: Label columns (one 0/1 column per label), matched by name in every split (the
                training split's order wins); default every column but the ID and text.
            labels_column: Instead of 0/1 columns, one column holding each row's list of label ids or
                names, as GoEmotions stores them (`labels: [3, 27]`). The names come from the Hub
                dataset's ClassLabel feature, or from `label_names`.
            label_names: The label names, in id order, for `labels_column` (needed for local files), and the labels
                to use when no training split can be read (test/predict set them from the checkpoint).
            tokenizer: Tokenizer name or path; linked to the model's encoder by the CLI.
            max_length: Longer texts are truncated (and counted in the log).
            batch_size: Training batch size per device.
            eval_batch_size: Batch size for validation, test and predict.
            group_by_length: Batch texts of similar length together in training.
            num_workers: DataLoader worker processes.
            seed: Seed of the training order.
            cache_dir: Where tokenised splits are cached (default ~/.cache/emolightning).
            teacher_tokenizer: Distillation only, when the teacher tokenises differently from the
                student (e.g. a RoBERTa teacher, a DistilBERT student): the teacher's tokenizer name
                or path. Train batches then also hold `teacher_input_ids`/`teacher_attention_mask`.
                Leave unset when both share a vocabulary (no extra cost).
            predict_chunk_batches: `predict` streams its input: it reads, tokenises and length-sorts
                this many eval batches of texts at a time, so memory does not grow with the file
                (larger: less padding, more memory; see stream.py).
            pad_to_multiple_of: Pad each batch's length up to a multiple of this (1: to its longest
                text). Default: 8 on a GPU (fewer distinct shapes, each of which costs a one-off kernel
                selection; tensor cores want multiples of 8), 1 elsewhere.
            text_chunks: For a model that tokenises the texts itself, such as an ensemble whose members
                use different tokenizers (`--ckpt_path ENSEMBLE.json` sets it): each validation, test
                and predict step gets a whole chunk (`predict_chunk_batches` x `eval_batch_size` rows)
                whose batch also carries the raw `texts`.
        """
        super().__init__()
        # not a hyperparameter: Lightning refuses a data and a model hyperparameter of one name with two values
        self.save_hyperparameters(ignore=["label_names"])
        self.given_label_names = list(label_names) if label_names else None
        self.files = {"train": train_file, "validation": val_file, "test": test_file, "predict": predict_file}
        self.cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "emolightning")
        self._label_names: list[str] | None = None
        self._hub = None
        self.splits: dict[str, TokenizedSplit] = {}
        # the notes about a file (its columns, its tabs and line breaks) given once a run, however often the file is read
        self.notes_logged: set[tuple] = set()

    # ---- where each split comes from -------------------------------------------------
    def split_source(self, split: str) -> str | None:
        if split == "predict" and self.files["predict"] is None:
            return self.split_source(self.hparams.predict_split)
        if self.files.get(split):
            return self.files[split]
        # files named one by one replace data_dir for every split: a config's data_dir (the quickstart's
        # builtin:demo) must never lend its test file to a run on the user's own data
        if self.hparams.data_dir is not None and not self.named_files():
            return find_split_file(self.hparams.data_dir, split) if split in ("train", "validation", "test") else None
        if any(self.files.values()):  # files named one by one: a split without one is absent, not on the Hub
            return None
        return f"hub:{split}"

    def named_files(self) -> list[str]:
        """The `data.*_file` options set for train, validation and test."""
        return [f"data.{SPLIT_OPTIONS[s]}" for s in ("train", "validation", "test") if self.files[s]]

    def load_table(self, split: str) -> Table:
        source = self.split_source(split)
        if source is None and (named := self.named_files()):
            option = SPLIT_OPTIONS.get(split, "data_dir")
            raise DataError(
                f"No {split} split: `{'`, `'.join(named)}` name{'s' if len(named) == 1 else ''} files, which replace `data.data_dir` for every split, "
                f"and `data.{option}` is not set. Name the {split} file with `--data.{option} FILE`."
            )
        if source is None:
            option = SPLIT_OPTIONS.get(split, "data_dir")
            raise DataError(
                f"No {split} split: the data directory '{self.hparams.data_dir}' has no official file for it "
                f"and `data.{option}` is not set. Add the file (named like {OFFICIAL_EXAMPLE.get(split, OFFICIAL_EXAMPLE['test'])}) or set `data.{option}`."
            )
        if source.startswith("hub:"):
            hp = self.hparams
            if self._hub_lacks(source):
                raise DataError(self._missing_hub_split(split, source[4:]))
            return table_from_hub(self._hub, source[4:], hp.text_column, hp.id_column, hp.label_columns, hp.labels_column, self.given_label_names)
        # a predict file never comes here: it is streamed (file_records), plain-text files included
        hp = self.hparams
        return read_table(
            source, hp.text_column, hp.id_column, hp.label_columns, labels_column=hp.labels_column, label_names=self.given_label_names, logged=self.notes_logged
        )

    def _hub_lacks(self, source: str) -> bool:
        """Whether `source` names a split (`hub:<name>`) that the Hub dataset, loaded once, does not have."""
        if not source.startswith("hub:"):
            return False
        if self._hub is None:
            self._hub = load_hub(self.hparams.hub_dataset, self.hparams.hub_config)
        return source[4:] not in self._hub

    def _missing_hub_split(self, split: str, name: str) -> str:
        hp = self.hparams
        found = f"The Hub dataset '{hp.hub_dataset}' (config {hp.hub_config!r}; options `data.hub_dataset`, `data.hub_config`) has no '{name}' split: its splits are {sorted(self._hub)}. "
        if split == "predict":
            return found + "Set `data.predict_split` to one of them, or name a table or text file with `data.predict_file`."
        return found + (
            "fit reads the splits 'train' and 'validation', test reads 'test'. Use a dataset with those splits, or save its splits as "
            "tables and name them with `data.train_file`, `data.val_file` and `data.test_file` (named files replace the Hub for every split)."
        )

    @property
    def label_names(self) -> list[str]:
        """Label names: `label_columns`, else the columns of the first labelled split."""
        if self._label_names is None:
            if self.hparams.label_columns:
                self._label_names = list(self.hparams.label_columns)
            elif self.given_label_names and (self.hparams.labels_column or not self.has_training_split()):
                # without a training split (test/predict from a checkpoint alone) the checkpoint's labels stand in for
                # its columns; where one exists it still decides, so a checkpoint of other labels is refused by name
                self._label_names = list(self.given_label_names)
            else:
                split = next((s for s in ("train", "validation", "test") if self.split_source(s)), None)
                if split is None:
                    raise DataError(
                        f"The data directory '{self.hparams.data_dir}' holds no official E-c file (*-train.txt, *-dev.txt, *-test-gold.txt). Add them, or name files with `data.train_file` etc."
                    )
                source = self.split_source(split)
                self._label_names = self._hub_label_names(source) if source.startswith("hub:") else self.load_table(split).label_names
        return self._label_names

    def has_training_split(self) -> bool:
        """Whether the training split can be read: a Hub or bundled source, or a file that exists."""
        try:
            source = self.split_source("train")
        except DataError:
            return False
        return source is not None and (source.startswith(("hub:", "builtin:")) or os.path.isfile(source))

    def _hub_label_names(self, source: str) -> list[str]:
        """A Hub split's label columns, read from the Hub by local rank 0 only and shared through a file in cache_dir.

        The names are needed when the model is built, before `prepare_data`: under torchrun or SLURM
        every rank builds one, and 16 ranks downloading the data at once (or offline compute nodes
        trying to) is what this avoids. The other ranks of the node wait for the file.
        No framework primitive fits: the CLI builds the model from these names before the Trainer
        exists, so there is neither `prepare_data` nor a process group to barrier or broadcast on yet.
        """
        key = hashlib.sha1(f"{self.hparams.hub_dataset}/{self.hparams.hub_config}/{source}/{self.hparams.text_column}/{self.hparams.id_column}".encode())
        path = os.path.join(self.cache_dir, f"labels-{key.hexdigest()[:16]}.json")
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        if not os.path.exists(path) and local_rank == 0:
            names = self.load_table(source[4:]).label_names
            os.makedirs(self.cache_dir, exist_ok=True)
            write_atomically(path, lambda f: json.dump(names, f), "w")  # a waiting rank never reads half a file
        deadline = time.monotonic() + HUB_LABELS_WAIT_S
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise DataError(
                    f"Local rank {local_rank} waited {HUB_LABELS_WAIT_S} s for local rank 0 to read the label names of the Hub dataset "
                    f"'{self.hparams.hub_dataset}' into {path}. Check rank 0's log, or set `data.label_columns` so that no rank needs the Hub for them."
                )
            time.sleep(0.5)
        return json.loads(Path(path).read_text())

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    # ---- tokenisation, cached ----------------------------------------------------------
    def _cache_path(self, split: str, source: str) -> str:
        key = hashlib.sha1()
        if os.path.isfile(source):
            key.update(Path(source).read_bytes())
        else:
            key.update(f"{self.hparams.hub_dataset}/{self.hparams.hub_config}/{source}".encode())
        key.update(f"{CACHE_VERSION}|{self.hparams.tokenizer}|{self.hparams.max_length}|{self.hparams.text_column}|{self.label_names}".encode())
        if split == "train" and self.hparams.teacher_tokenizer:
            key.update(f"|teacher={self.hparams.teacher_tokenizer}".encode())
        return os.path.join(self.cache_dir, f"{split}-{key.hexdigest()[:16]}.npz")

    def _rank_message(self, message: str) -> str:
        """`message` with Lightning's `[rank: N]` prefix when several processes print it; as is on one."""
        world_size = self.trainer.world_size if self.trainer is not None else int(os.environ.get("WORLD_SIZE", "1"))
        return rank_prefixed_message(message, rank_zero_only.rank) if world_size > 1 else message

    def _tokenize(self, split: str) -> dict:
        table = aligned_labels(self.load_table(split), self.label_names)
        # printed by every rank (not rank 0 only): under DDP only local rank 0 should ever tokenise
        log.info(self._rank_message(f"tokenising the {split} split: {len(table.texts)} texts from {table.source}"))
        limit = self.hparams.max_length
        ids, lengths = encode(load_tokenizer(self.hparams.tokenizer), table.texts, limit)
        labels = None if table.labels is None else torch.from_numpy(table.labels.astype(np.float32))
        truncated = sum(length > limit for length in lengths)
        data = {"input_ids": ids, "labels": labels, "ids": table.ids, "texts": table.texts, "truncated": truncated, "source": table.source}
        if split == "train" and self.hparams.teacher_tokenizer:  # only training runs the teacher
            data["teacher_input_ids"] = encode(load_tokenizer(self.hparams.teacher_tokenizer), table.texts, limit)[0]
        return data

    def _tokenized(self, split: str, build: bool) -> dict:
        source = self.split_source(split)
        path = self._cache_path(split, source) if source else None
        if path and os.path.exists(path):
            try:
                return read_cache(path)
            except Exception as err:  # cut short (a killed copy, a full disk elsewhere) or not a cache file: rebuilt, never trusted
                warnings.warn(f"The token cache '{path}' is damaged ({type(err).__name__}); tokenising the {split} split again and rewriting it.", stacklevel=2)
                build = True
        data = self._tokenize(split)
        if build and path:
            os.makedirs(self.cache_dir, exist_ok=True)
            write_cache(path, data)  # atomically: each node's rank 0 may write into one shared cache dir
        return data

    def prepare_data(self) -> None:
        """Tokenise once each split the running stage reads (Lightning runs this on local rank 0 only).

        `predict` streams its own input and reads no split: tokenising the train split there cost a
        first predict more time than the model's forward passes (BENCHMARKS.md "Inference").
        """
        for split in STAGE_SPLITS[self._stage()]:
            source = self.split_source(split)
            if source is None or os.path.exists(self._cache_path(split, source)):
                continue
            # a Hub dataset without a split is a directory without its file: fine until a stage needs the split (setup says so then)
            if not self._hub_lacks(source):
                self._tokenized(split, build=True)

    def _stage(self) -> str:
        """The stage the trainer runs (`fit`, `validate`, `test`, `predict`); `all` outside a trainer."""
        fn = self.trainer.state.fn if self.trainer is not None else None
        return fn.value if fn is not None else "all"

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.predict_stream = self._predict_stream()
            return
        for split in STAGE_SPLITS[stage]:
            data = self._tokenized(split, build=False)
            if data["truncated"]:
                rank_zero_info(
                    f"{data['source']}: {data['truncated']} of {len(data['input_ids'])} texts are longer than max_length={self.hparams.max_length} tokens and were truncated."
                )
            if data["labels"] is None:
                raise DataError(
                    f"{data['source']} has no labels (NONE), so it cannot be used to {stage}. Use it with `emolightning predict`, or give the gold file."
                )
            texts = data["texts"] if split != "train" and self.hparams.text_chunks else None
            self.splits[split] = TokenizedSplit(
                data["input_ids"], data["labels"], data.get("teacher_input_ids"), ids=data["ids"], source=data["source"], texts=texts
            )

    def _predict_stream(self) -> PredictStream:
        source = self.split_source("predict")
        if source is None:
            self.load_table("predict")  # raises the missing-split error
        hp = self.hparams
        if source.startswith("hub:"):  # a Hub split is in memory already
            table = self.load_table("predict")
            records = partial(iter, [(row_id, text, None) for row_id, text in zip(table.ids, table.texts)])
            num_rows = len(table)
        else:
            # a first pass checks every row (and holds the IDs, for the duplicate check) before the
            # model sees a text; the streaming pass then needs no check that keeps anything
            columns = (source, hp.text_column, hp.id_column, hp.label_columns)
            num_rows = sum(1 for _ in file_records(*columns, labels_column=hp.labels_column, label_names=self.given_label_names, logged=self.notes_logged))
            records = partial(
                file_records, *columns, unique_ids=False, labels_column=hp.labels_column, label_names=self.given_label_names, logged=self.notes_logged
            )
        log.info(self._rank_message(f"predicting {num_rows} texts from {source}, {hp.predict_chunk_batches * hp.eval_batch_size} at a time"))
        batch_size, chunk_batches = self._eval_step_rows(), 1 if hp.text_chunks else hp.predict_chunk_batches
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # with several ranks, a short file leaves some without a batch: they just write nothing
        self.allow_zero_length_dataloader_with_multiple_devices = True
        stream = PredictStream(records, num_rows, hp.tokenizer, hp.max_length, batch_size, chunk_batches, rank, world_size, self._pad_multiple())
        if not source.startswith("hub:"):
            stream.columns = output_columns(source, hp.text_column, hp.id_column, self.notes_logged)  # the prediction file keeps the input's own names
        return stream

    # ---- loaders ---------------------------------------------------------------------
    def _eval_step_rows(self) -> int:
        """Rows of a validation, test or predict step: a batch, or with `text_chunks` a whole chunk."""
        hp = self.hparams
        return hp.eval_batch_size * hp.predict_chunk_batches if hp.text_chunks else hp.eval_batch_size

    def _pad_multiple(self) -> int | None:
        if self.hparams.pad_to_multiple_of is not None:
            return self.hparams.pad_to_multiple_of
        return pad_multiple(self.trainer.strategy.root_device if self.trainer is not None else None)

    def _collate(self) -> Collator:
        teacher = self.hparams.teacher_tokenizer
        return Collator(
            load_tokenizer(self.hparams.tokenizer).pad_token_id,
            self._pad_multiple(),
            teacher_pad_token_id=load_tokenizer(teacher).pad_token_id if teacher else None,
        )

    def train_dataloader(self) -> DataLoader:
        split = self.splits["train"]
        # resumable mid-epoch (resume.py): the order is a function of (seed, epoch) in both modes
        sampler = LengthGroupedSampler(split.lengths, self.hparams.batch_size, seed=self.hparams.seed, by_length=self.hparams.group_by_length)
        return ResumableDataLoader(split, batch_size=self.hparams.batch_size, sampler=sampler, collate_fn=self._collate(), num_workers=self.hparams.num_workers)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.splits[split]
        # this rank's share of the longest-first order: Lightning does not deal it (use_distributed_sampler=False)
        order = shard(longest_first(dataset.lengths), *replicas())
        return DataLoader(dataset, batch_size=self._eval_step_rows(), sampler=order, collate_fn=self._collate(), num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        # batch_size=None: the stream yields whole batches. Lightning warns that an IterableDataset's
        # __len__ may be wrong with several workers; this one's is exact (chunks are dealt to workers).
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return DataLoader(self.predict_stream, batch_size=None, num_workers=self.hparams.num_workers)

    # ---- statistics the model may ask for ------------------------------------------------
    def train_label_frequencies(self) -> list[float]:
        """Fraction of training texts carrying each label, in `label_names` order (after setup("fit"))."""
        return self.splits["train"].labels.mean(dim=0).tolist()
