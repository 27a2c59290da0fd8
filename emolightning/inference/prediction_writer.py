"""`emolightning predict`: a prediction file, in the format its name says.

    emolightning predict --config run/config.yaml --ckpt_path run/checkpoints/best-*.ckpt --output pred.txt

The columns are the input's ID and text columns (`ID, Tweet` for the official files; `id, text` for
a .txt with one text per line, whose IDs are line numbers), then one 0/1 column per label; one row
per input row in the input's order, with IDs and texts as the data module read them. Labels are
decided at the checkpoint's tuned thresholds (`predict_step`); `--probabilities true` adds a
`p_<label>` column per label. `.txt` and `.tsv` are tab-separated without quoting (the official
SemEval-2018 E-c submission format), `.csv` is CSV as the `csv` module and pandas write it, `.jsonl`
one JSON object a line and `.json` an array of objects (IDs and texts strings, labels 0/1 numbers,
probabilities numbers).

The writer reads only its hook arguments: each batch's `ids` and `texts`, each prediction's
`index`, `preds` and `probs`, and the module's `label_names` (outputs.Classifier), so any predict
loader whose batches carry those keys will do. Rows arrive in any order and are put back in place
by their `index`. The data module's input is streamed (stream.py): batches arrive length-sorted
within each chunk, and given that stream's `PredictLayout`, the writer writes each chunk's rows once
the chunk is complete; without one it holds every row until the end.
"""

from __future__ import annotations

import csv
import heapq
import json
import os
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Protocol

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..errors import ConfigError, DataError, StorageError
from ..files import atomic_open, remove_quietly, write_atomically
from ..outputs import Classifier

# the official files are tab-separated without quoting: these characters cannot appear in a field
UNSAFE = str.maketrans({"\t": " ", "\n": " ", "\r": " "})
COLUMNS = ("ID", "Tweet")  # the (ID, text) column names of a prediction file whose input names none
# the output's format, by the name's suffix
FORMATS = {".txt": "tsv", ".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}


def output_format(output: str) -> str:
    """The format `output` is written in (a key of FORMATS' values), from its name; ConfigError for another name."""
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"--output '{output}': the prediction file's format follows its name, and '{suffix or 'no suffix'}' names none. "
            "Name it .csv (CSV), .txt or .tsv (tab-separated, the official E-c format), .jsonl (one JSON object a line) or .json (an array of objects)."
        )
    return FORMATS[suffix]


def write_rows(out, kind: str, header: list[str], rows) -> None:
    """`header` and `rows` (lists: ID, text, 0/1 labels, probabilities) to the open file `out`, in format `kind` (see FORMATS)."""
    if kind == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for fields in rows:
            writer.writerow(fields[:2] + [str(v) if isinstance(v, int) else f"{v:.6f}" for v in fields[2:]])
    elif kind == "tsv":  # the part holds tab-free texts already (write_on_batch_end)
        out.write("\t".join(header) + "\n")
        for fields in rows:
            out.write("\t".join(fields[:2] + [str(v) if isinstance(v, int) else f"{v:.6f}" for v in fields[2:]]) + "\n")
    else:  # jsonl, json
        objects = (json.dumps(dict(zip(header, fields)), ensure_ascii=False) for fields in rows)
        if kind == "jsonl":
            for line in objects:
                out.write(line + "\n")
        else:
            out.write("[")
            for k, line in enumerate(objects):
                out.write(("," if k else "") + "\n" + line)
            out.write("\n]\n")


class PredictLayout(Protocol):
    """How this rank's predict input is cut into chunks (data.stream.PredictStream is one): what lets the writer write as it goes."""

    columns: tuple[str, str]  # the (ID, text) column names of the prediction file
    num_rows: int  # rows in the input, over all ranks
    max_length: int  # tokens a text is cut to (for the message about truncated texts)
    num_chunks: int  # chunks of the whole input, in input order; batch key `chunk` names each batch's

    def rows_in_chunk(self, chunk: int) -> int:
        """How many rows of `chunk` this rank predicts (0 when it gets none)."""
        ...


class PredictionFileWriter(BasePredictionWriter):
    def __init__(self, output: str, probabilities: bool = False, layout: Callable[[], PredictLayout | None] | None = None):
        """Writes `predict_step` outputs as a prediction file (an official E-c file for .txt/.tsv), as they come (stream.py).

        Each rank writes its rows, in input order, to a part file beside `output`; at the end rank 0
        merges the parts into `output` (replaced atomically). With a `layout`, rows wait in memory
        only until their chunk is complete, so memory stays flat however long the input. Under
        multi-node DDP the output directory must be one that every node sees.

        Each part is written atomically too (files.atomic_open: a temporary file renamed to the
        part's name once complete), so rank 0 never merges half a part. Under several processes a
        rank whose part cannot be written (a full disk) keeps the error until the end of the epoch
        and meets the others at the barrier there, so every rank stops instead of waiting for it.

        Batches must carry `ids` and `texts` (lists of str), with a layout also `chunk` (int), and
        may carry `truncated` (int: texts cut to max_length); each prediction `index` (the rows'
        positions in the input), `preds` (0/1) and `probs`, as `predict_step` returns them.

        Args:
            output: Path of the file to write; its suffix names the format (.csv, .txt/.tsv, .jsonl, .json).
            probabilities: Also write each label's probability, in columns `p_<label>`.
            layout: Called when predicting starts, for this rank's `PredictLayout` (the CLI passes
                the data module's predict stream). None, or a call that returns None: the rows
                wait until the end, the columns are named ID and Tweet, and no row count is checked.
        """
        super().__init__(write_interval="batch")
        self.output, self.probabilities, self.layout_of = output, probabilities, layout
        self.format = output_format(output)  # an unknown name stops before the model runs
        self.layout: PredictLayout | None = None
        self.part = None  # this rank's part file (its temporary file until complete), open while predicting
        self.writing = ExitStack()  # the atomic write of the part
        self.error: StorageError | None = None  # this rank's failed write, raised once every rank has met at the end

    def _beside_output(self, tag: str) -> str:
        directory, name = os.path.split(os.path.abspath(self.output))
        return os.path.join(directory, f".{name}.{tag}.tmp")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.layout = self.layout_of() if self.layout_of is not None else None
        self.needed = ("ids", "texts", "chunk") if self.layout is not None else ("ids", "texts")
        os.makedirs(os.path.dirname(os.path.abspath(self.output)), exist_ok=True)
        self.part_path, self.several = self._beside_output(f"part{trainer.global_rank}"), trainer.world_size > 1
        self.writing, self.error, self.part = ExitStack(), None, None
        with self._kept_if_several():
            self.part = self.writing.enter_context(atomic_open(self.part_path, "w", encoding="utf-8", newline="\n"))
        # chunk (0 without a layout) -> (row index, row as a JSON array) of rows not yet written: JSON, so the part holds any text on one line
        self.pending: dict[int, list[tuple[int, str]]] = {}
        self.next_chunk = self.rows = self.truncated = self.unsafe = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if missing := [key for key in self.needed if key not in batch]:
            raise ConfigError(
                f"PredictionFileWriter ({self.output}) needs each predict batch to carry {', '.join(self.needed)}; batch {batch_idx} lacks "
                f"{', '.join(missing)}. EmotionDataModule's predict batches carry them: give another loader's batches these keys."
            )
        preds = prediction["preds"].cpu().tolist()
        probs = prediction["probs"].float().cpu().tolist() if self.probabilities else None
        rows = self.pending.setdefault(batch["chunk"] if self.layout is not None else 0, [])
        tab_separated = self.format == "tsv"
        for k, (index, row_id, text) in enumerate(zip(prediction["index"].tolist(), batch["ids"], batch["texts"])):
            row_id, text = str(row_id), str(text)
            if tab_separated:
                safe = text.translate(UNSAFE)
                self.unsafe += safe != text
                row_id, text = row_id.translate(UNSAFE), safe
            fields = [row_id, text, *(int(v) for v in preds[k])] + ([round(p, 6) for p in probs[k]] if probs else [])
            rows.append((index, json.dumps(fields, ensure_ascii=False)))
        self.truncated += int(batch.get("truncated", 0))
        self._flush()

    def _flush(self, everything: bool = False) -> None:
        """Write out, in input order, every chunk whose rows (on this rank) have all arrived; without a layout, only at the end."""
        layout = self.layout
        while self.next_chunk < (layout.num_chunks if layout is not None else 1):
            rows = self.pending.get(self.next_chunk, [])
            if not everything and (layout is None or len(rows) < layout.rows_in_chunk(self.next_chunk)):
                return
            if self.part is not None:
                with self._kept_if_several():
                    for index, line in sorted(rows):
                        self.part.write(f"{index}\t{line}\n")
            self.rows += len(rows)
            self.pending.pop(self.next_chunk, None)
            self.next_chunk += 1

    def on_predict_epoch_end(self, trainer, pl_module: Classifier) -> None:
        self._flush(everything=True)  # chunks left incomplete by `limit_predict_batches`
        with self._kept_if_several():
            self.part = None
            self.writing.close()  # fsync, then the part gets its name
            # the counts travel in a file beside the part, not through a collective: NCCL reduces only
            # GPU tensors, and a file needs no device at all
            if self.error is None:
                write_atomically(f"{self.part_path}.counts", lambda f: json.dump([self.rows, self.truncated, self.unsafe], f), "w")
        trainer.strategy.barrier("prediction parts written")
        error = self.error
        if trainer.is_global_zero and error is None:
            try:
                self.merge(trainer.world_size, pl_module.label_names)
            except Exception as exc:  # every rank must learn of it, or the others wait for the next collective until a timeout
                error = exc
        failed = trainer.strategy.broadcast(None if error is None or not trainer.is_global_zero else str(error), src=0)
        self.layout = self.pending = None
        if self.error is not None:
            self._remove_part()
        if error is not None:
            raise error
        if failed is not None:
            raise DataError(f"Rank 0 could not write the prediction file {self.output}: {failed}")

    @contextmanager
    def _kept_if_several(self):
        """A failed write of the part: its temporary file goes, and the StorageError is raised at once by a single process,
        kept until the barrier at the end of the epoch under several (a rank that stopped early would leave the others waiting there)."""
        try:
            try:
                yield
            except OSError as err:  # from writing the part: the atomic write removes its temporary file and names the fault
                self.part = None
                if not self.writing.__exit__(type(err), err, err.__traceback__):
                    raise
        except StorageError as err:
            if not self.several:
                raise
            self.part, self.error = None, self.error or err

    def _remove_part(self) -> None:
        for path in (self.part_path, f"{self.part_path}.counts"):
            remove_quietly(path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a failed run leaves no part file behind: the temporary one goes with the atomic write, a complete one here
        self.part = None
        try:
            self.writing.__exit__(type(exception), exception, exception.__traceback__)
        except Exception:  # the run stops with `exception` already; this is cleanup only
            pass
        if getattr(self, "part_path", None):
            self._remove_part()

    def merge(self, world_size: int, label_names: list[str]) -> None:
        parts = [self._beside_output(f"part{rank}") for rank in range(world_size)]
        counts = [f"{part}.counts" for part in parts]
        if missing := [p for p in parts + counts if not os.path.exists(p)]:
            raise DataError(
                f"Rank 0 cannot see the prediction part file(s) {missing} that other ranks wrote: a rank that could not write its part says so in its "
                "own message; otherwise, on several nodes, --output must be on a filesystem that every node shares."
            )
        rows, truncated, unsafe = (sum(column) for column in zip(*(json.loads(Path(c).read_text()) for c in counts)))
        layout = self.layout
        header = [*(layout.columns if layout is not None else COLUMNS), *label_names] + ([f"p_{name}" for name in label_names] if self.probabilities else [])
        files = [open(p, encoding="utf-8", newline="\n") for p in parts]
        try:
            # atomic: a reader never sees half a prediction file, and a full disk leaves the old one
            with atomic_open(self.output, "w", needed=sum(os.path.getsize(p) for p in parts), encoding="utf-8", newline="\n") as out:
                # each part is in input order: a k-way merge keeps that, one line per part in memory
                numbered = [((int(index), row) for index, _, row in (line.partition("\t") for line in f)) for f in files]
                write_rows(out, self.format, header, (json.loads(row) for _, row in heapq.merge(*numbered, key=lambda pair: pair[0])))
        finally:
            for f in files:
                f.close()
        for p in parts + counts:
            os.remove(p)
        if layout is not None and rows < layout.num_rows:
            rank_zero_warn(
                f"Only {rows} of {layout.num_rows} texts were predicted (is `trainer.limit_predict_batches` set?); {self.output} holds those rows only."
            )
        if truncated:
            limit = f"max_length={layout.max_length} tokens" if layout is not None else "the model's maximum length"
            rank_zero_info(f"{truncated} of {rows} texts are longer than {limit} and were truncated.")
        if unsafe:
            rank_zero_warn(
                f"{unsafe} texts hold tabs or line breaks, which the tab-separated E-c format cannot represent: they are written with spaces instead."
            )
        rank_zero_info(f"Wrote {rows} predictions ({len(label_names)} labels) to {self.output}")
