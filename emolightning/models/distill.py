"""DistilBERT-style distillation: a frozen teacher classifier trains a smaller student.

The student IS an EmotionClassifier (encoder -> pooling -> dropout -> linear); only its training
loss changes (losses.py): soft_weight * soft-target KL to the teacher (temperature T, scaled by
T²) + hard_weight * BCE on the gold labels + cosine_weight * (1 - cos) between the last hidden
states of student and teacher. Validation, test, thresholds and metrics are the plain module's.

The teacher is an emolightning checkpoint (.ckpt), the folder of the run that wrote it (its best
checkpoint), or a Hugging Face directory/name of a fine-tuned AutoModelForSequenceClassification.
What it is (encoder, tokenizer, labels) is read from its checkpoint. Where it tokenises unlike the
student, the training batches also carry its own token ids (`data.teacher_tokenizer`, which the CLI
sets from the teacher: `data_teacher_tokenizer`). It is frozen, always in eval mode, run under no_grad and never
saved. With `student_layers` the student starts as in DistilBERT from the teacher itself: its
embeddings, the chosen layers (e.g. every other one) and its head.

The student is saved explicitly. The distiller's arguments split in two when it is built: its own
(DISTILLATION_ARGUMENTS: teacher, loss weights, ...) go to `distillation`, and `hparams` keeps the
rest, which are exactly the student's EmotionClassifier arguments. So every checkpoint it writes
(best and last alike) is at its top level the student's own EmotionClassifier checkpoint: its
hyperparameters and weights, which `EmotionClassifier.load_from_checkpoint`, `test`, `predict`,
`export`, ensembles and a later distillation read with no teacher. Beside it, the `distillation`
entry keeps what is the distiller's alone: its arguments (a record of how the student was made) and
the cosine loss's projection weights. To resume (`fit --ckpt_path last`), the CLI builds the
distiller that `resumed_distiller` reads from those two parts of the checkpoint it has read (Lightning
alone would build the plain classifier its top level describes), and `on_load_checkpoint` takes the
projection back.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from ..data.encoding import sorted_batches
from ..errors import ConfigError
from ..files import check_model_folder
from ..pretrained.encoders import keep_layers, layer_list, load_tokenizer, resolve_encoder
from .averaging import average_logits
from .checkpoints import best_checkpoint_of_run, check_checkpoint, label_names, load_classifier, tokenizer_name
from .classifier import EmotionClassifier
from .losses import hidden_cosine_loss, soft_target_loss
from .objectives import RDrop

# text whose tokenisation tells two tokenizers apart beyond their vocabularies (casing, accents, emoji)
PROBE = "Hello World! I'm SO happy :) #blessed @user https://t.co/x 😀 café naïve"


def same_tokenizer(a: str, b: str) -> bool:
    """Whether two tokenizers give the same ids (e.g. bert-base-uncased and distilbert-base-uncased)."""
    if a == b or resolve_encoder(a) == resolve_encoder(b):
        return True
    ta, tb = load_tokenizer(a), load_tokenizer(b)
    return ta.get_vocab() == tb.get_vocab() and ta(PROBE)["input_ids"] == tb(PROBE)["input_ids"]


# what makes a folder a Hugging Face model's (a damaged one too, which its loader names) rather than a run folder
MODEL_FOLDER_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json")


def teacher_source(source: str) -> str:
    """What a `teacher` entry names: a run folder (a folder without a Hugging Face model's files) stands for its best checkpoint."""
    if not os.path.isdir(source) or any(os.path.isfile(os.path.join(source, name)) for name in MODEL_FOLDER_FILES):
        return source
    try:
        return best_checkpoint_of_run(source, "model.init_args.teacher")
    except ConfigError as err:
        raise ConfigError(f"{err} A folder holding a Hugging Face model (with its config.json) is read as that model instead.") from None


def teacher_tokenizers(teacher: str | list[str]) -> list[str | None]:
    """The tokenizer each teacher reads, from its checkpoint (its encoder) or, for a Hugging Face model, its own name; None for a
    checkpoint that is not there (the distiller says so when it loads it). Reads the checkpoints' hyperparameters, not their weights."""
    names = []
    for source in [teacher] if isinstance(teacher, str) else list(teacher):
        resolved = teacher_source(source)
        if resolved.endswith(".ckpt"):
            names.append(tokenizer_name(check_checkpoint(resolved, "model.init_args.teacher")) if os.path.isfile(resolved) else None)
        else:
            names.append(source)
    return names


def data_teacher_tokenizer(student: str, teacher: str | list[str], given: str | None) -> str | None:
    """What `data.teacher_tokenizer` must be to distil `student` from `teacher`: `given` where the two tokenise alike (no teacher
    ids needed) or where `given` tokenises like the teacher, the teacher's own tokenizer where `given` is unset; a ConfigError
    where `given` tokenises unlike the teacher (the teacher would read ids of another vocabulary)."""
    wanted = teacher_tokenizers(teacher)[0]  # an ensemble's members share one (TeacherEnsemble checks)
    if wanted is None or same_tokenizer(student, wanted):
        return given
    if given is None or same_tokenizer(given, wanted):
        return given or wanted
    raise ConfigError(
        f"`data.teacher_tokenizer` is '{given}', but the teacher {teacher} (option `model.init_args.teacher`) reads the tokenizer "
        f"'{wanted}', which tokenises differently: the teacher would be run on token ids of another vocabulary. Remove "
        f"`data.teacher_tokenizer` (the teacher's own is then used) or set it to '{wanted}'."
    )


# EmotionDistiller's own arguments; every other one is the student's (an EmotionClassifier's)
DISTILLATION_ARGUMENTS = (
    "teacher",
    "student_layers",
    "temperature",
    "soft_weight",
    "hard_weight",
    "cosine_weight",
    "cosine_projection",
    "soft_loss",
    "cache_teacher_logits",
)
# what the CLI records of the class it built: it names the distiller, not the student
CLI_RECORDS = ("_class_path", "_instantiator")


def resumed_distiller(checkpoint: dict) -> dict | None:
    """The `model` config (class_path, init_args) of the distiller that wrote the checkpoint dict: its student's hyperparameters
    and its own arguments (module docstring); None for a checkpoint that no distiller wrote."""
    distillation = checkpoint.get("distillation")
    if distillation is None:
        return None
    return {"class_path": distillation["class_path"], "init_args": {**checkpoint["hyper_parameters"], **distillation["hyper_parameters"]}}


class Teacher(nn.Module):
    """A frozen classifier: (B, T) ids and mask -> (B, L) logits and (B, T, H) last hidden states.

    Holds the encoder and head of an emolightning checkpoint, or a whole Hugging Face
    AutoModelForSequenceClassification. `train()` keeps it in eval mode whatever calls it (Lightning
    calls `model.train()` at the start of fit and after each validation), so dropout stays off and
    its outputs are a fixed function of the input, which is what makes caching them valid.
    """

    def __init__(self, source: str):
        super().__init__()
        self.source, self.model = source, None
        self.checkpoint = teacher_source(source)  # a run folder's best checkpoint
        if self.checkpoint.endswith(".ckpt"):
            if not os.path.isfile(self.checkpoint):
                raise ConfigError(
                    f"The teacher checkpoint '{source}' (option `model.init_args.teacher`) does not exist. Fine-tune the "
                    "teacher first (e.g. `emolightning fit --config configs/semeval/minilm-l6.yaml`) and pass its run folder "
                    "(`--model.init_args.teacher runs/semeval/minilm-l6`, whose best checkpoint is used) or its checkpoint."
                )
            # a damaged file stops here, named, not in torch's zip reader
            checkpoint = check_checkpoint(self.checkpoint, "model.init_args.teacher")
            classifier = load_classifier(self.checkpoint)
            self.classifier, self.pooling = classifier, classifier.pooling_name
            # what the teacher is comes from its checkpoint, whatever the classifier was built under
            self.label_names: list[str] | None = label_names(checkpoint)
            self.tokenizer = tokenizer_name(checkpoint)
        else:
            from transformers import AutoModelForSequenceClassification

            if os.path.isdir(resolve_encoder(source)):
                check_model_folder(resolve_encoder(source), "model.init_args.teacher")
            try:
                self.model = AutoModelForSequenceClassification.from_pretrained(resolve_encoder(source))
            except (OSError, ValueError) as err:
                raise ConfigError(
                    f"Could not load the teacher '{source}' (option `model.init_args.teacher`) as a Hugging Face sequence "
                    f"classifier ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Give an emolightning checkpoint "
                    "(.ckpt) or a local directory holding a fine-tuned AutoModelForSequenceClassification."
                ) from err
            names = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
            generic = all(re.fullmatch(r"LABEL_\d+", str(name)) for name in names)
            self.label_names = None if generic else names
            self.num_labels, self.pooling, self.tokenizer = self.model.config.num_labels, None, source
            if self.model.config.problem_type == "single_label_classification":
                rank_zero_warn(
                    f"The teacher '{source}' is a single-label (softmax) classifier; its sigmoid soft targets mean little. Consider `soft_loss: softmax`."
                )
        self.requires_grad_(False)
        self.eval()

    @property
    def base(self) -> nn.Module:
        """The transformer under the head (what a DistilBERT-style student is copied from)."""
        return self.classifier.encoder if self.model is None else self.model.base_model

    @property
    def encoder(self) -> nn.Module:
        """An emolightning teacher's encoder."""
        return self.classifier.encoder

    @property
    def head(self) -> nn.Module:
        """An emolightning teacher's linear head."""
        return self.classifier.head

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, hidden: bool = True) -> tuple[Tensor, Tensor | None]:
        if self.model is None:
            states, states_mask = self.classifier.token_states(input_ids, attention_mask)
            return self.classifier.classify(self.classifier.pool_states(states, states_mask)), states
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        return out.logits, (out.hidden_states[-1] if hidden else None)


class TeacherEnsemble(nn.Module):
    """Several frozen teachers as one: (B, T) ids and mask -> (B, L) logits of their averaged probabilities.

    The members' probabilities are averaged, as the ensemble's own predictions are (inference/ensemble.py), and
    turned back into logits (`average_logits`, in log space), so the soft-target loss (which applies
    its temperature to logits) and the logit cache take them as one teacher's. Averaging the logits
    instead would be a geometric mean of the odds, more confident than the ensemble wherever members
    disagree. The members share one tokenisation of the batch; their hidden states are not averaged,
    so the cosine loss is off. `student_layers` copies the first member's layers and head.
    """

    def __init__(self, sources: list[str], multi_label: bool = True):
        super().__init__()
        if not sources:
            raise ConfigError("`model.init_args.teacher` is an empty list. Give one teacher checkpoint, or a list of them to distil from their ensemble.")
        self.members = nn.ModuleList([Teacher(source) for source in sources])
        first = self.members[0]
        for member in self.members[1:]:
            if member.label_names != first.label_names:
                raise ConfigError(
                    f"The teachers '{first.source}' and '{member.source}' (option `model.init_args.teacher`) predict different labels "
                    f"({first.label_names} and {member.label_names}). An ensemble teacher averages each label across its members: give teachers trained on the same labels."
                )
            if not same_tokenizer(first.tokenizer, member.tokenizer):
                raise ConfigError(
                    f"The teachers '{first.source}' and '{member.source}' (option `model.init_args.teacher`) tokenise differently ('{first.tokenizer}', "
                    f"'{member.tokenizer}'), but a batch carries one teacher tokenisation (`data.teacher_tokenizer`). Distil from teachers that share a "
                    "tokenizer, or combine these with `emolightning ensemble`, whose members each tokenise the texts themselves."
                )
        self.source, self.multi_label = list(sources), multi_label
        self.model, self.pooling, self.label_names, self.tokenizer = first.model, first.pooling, first.label_names, first.tokenizer
        self.num_labels = first.num_labels if first.model is not None else len(first.label_names)
        self.requires_grad_(False)
        self.eval()

    @property
    def base(self) -> nn.Module:
        return self.members[0].base

    @property
    def head(self) -> nn.Module:
        return self.members[0].head

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False) -> tuple[Tensor, None]:
        logits = [member(input_ids, attention_mask, hidden=False)[0] for member in self.members]
        return average_logits(logits, multi_label=self.multi_label), None


def teacher_files(frozen: Teacher | TeacherEnsemble) -> str:
    """` (best checkpoint: ...)` where a teacher was given as a run folder: the file it stands for, in the log."""
    members = frozen.members if isinstance(frozen, TeacherEnsemble) else [frozen]
    files = [m.checkpoint for m in members if m.checkpoint != m.source]
    return f" (best checkpoint{'s' if len(files) > 1 else ''}: {', '.join(files)})" if files else ""


def copy_teacher_layers(teacher: Teacher, layers: list[int]) -> nn.Module:
    """A copy of the teacher's transformer (embeddings included) that keeps only `layers`, in that order: a DistilBERT-style student."""
    copied = copy.deepcopy(teacher.base)
    try:
        keep_layers(copied, layers)
    except ConfigError:
        raise ConfigError(f"`model.init_args.student_layers` {layers} must name layers 0..{len(layer_list(teacher.base)) - 1} of the teacher.") from None
    return copied


def load_copied_student(student: EmotionClassifier, copied: nn.Module, teacher: Teacher) -> None:
    """Put the copied layers' weights into `student`'s encoder and, for an emolightning teacher, the teacher's head into its head."""
    missing, unexpected = student.encoder.load_state_dict(copied.state_dict(), strict=False)
    # the only difference allowed: BERT/RoBERTa poolers, which the student never uses
    if [k for k in missing + unexpected if not k.startswith("pooler.")]:
        raise ConfigError(f"Cannot copy the teacher's layers into the student: missing {missing}, unexpected {unexpected}.")
    student.encoder.train()
    student.hparams.encoder_config = student.encoder.config.to_dict()
    if teacher.model is None:
        student.head.load_state_dict(teacher.head.state_dict())
        pooling = student.pooling_name
        if teacher.pooling != pooling:
            rank_zero_warn(f"The student copies the teacher's head, but pools with `{pooling}` where the teacher used `{teacher.pooling}`.")


class EmotionDistiller(EmotionClassifier):
    def __init__(
        self,
        encoder: str,
        label_names: list[str],
        lr: float,
        teacher: str | list[str],
        student_layers: list[int] | None = None,
        temperature: float = 2.0,
        soft_weight: float = 0.5,
        hard_weight: float = 0.5,
        cosine_weight: float = 0.0,
        cosine_projection: bool = False,
        soft_loss: Literal["sigmoid", "softmax"] = "sigmoid",
        cache_teacher_logits: bool = False,
        **kwargs,
    ):
        """A student EmotionClassifier trained against a frozen teacher (DistilBERT-style).

        Its checkpoints are the student's EmotionClassifier checkpoints, without the teacher: test or
        predict with a config naming `class_path: emolightning.EmotionClassifier` (or
        `EmotionClassifier.load_from_checkpoint`), no teacher needed. Every other argument
        (`head_lr`, `head`, `loss`, `thresholds`, `encoder_layers`, ...) is EmotionClassifier's, for the
        student; the CLI shows each as a typed key (`--model.init_args.<name>`).

        Args:
            encoder: The student's encoder (Hub name or directory), loaded from pretrained; with
                `student_layers` only its tokenizer is used (it must tokenise like the teacher).
            label_names: Emotion names, in the data's column order (linked from the data by the CLI).
            lr: Peak learning rate of the student's encoder (AdamW).
            teacher: The fine-tuned teacher: the folder of its `emolightning fit` run (its best
                checkpoint is used), an emolightning checkpoint (.ckpt), or a Hugging Face
                directory/name of a fine-tuned multi-label AutoModelForSequenceClassification.
                If it tokenises unlike the student, the data must also tokenise for it
                (`data.teacher_tokenizer`): the CLI sets that from the teacher itself.
                A list of them (`[run1, run2]`, sharing one tokenizer) is an ensemble teacher:
                the soft targets are the logits of the teachers' averaged probabilities (TeacherEnsemble).
            student_layers: Build the student from the teacher as in DistilBERT: its embeddings, these
                of its layers (e.g. [0, 2, 4] of 6) and, for an emolightning teacher, its head.
                Unset: the student is `encoder` from pretrained.
            temperature: Softmax/sigmoid temperature T of the soft targets (the loss is scaled by T²).
            soft_weight: Weight of the soft-target loss (`train/loss_soft`).
            hard_weight: Weight of the gold-label loss (`train/loss_hard`: the student's `loss`, with `pos_weight`).
            cosine_weight: Weight of the hidden-state cosine loss (`train/loss_cos`); it needs the
                same tokenizer for both, and equal hidden sizes or `cosine_projection`.
            cosine_projection: If the hidden sizes differ, learn a linear map student -> teacher for
                the cosine loss (true) or switch the cosine loss off (false).
            soft_loss: `sigmoid`: per-label binary KL (multi-label data); `softmax`: the DistilBERT
                paper's KL over the labels (single-label data).
            cache_teacher_logits: Run the teacher once over the training split when training starts
                (each DDP rank a 1/N share, then gathered to all) and read its logits from memory at
                every step after that (valid because the teacher is in eval mode and the data is
                fixed). Every step then hits the cache, on any number of ranks, with no host sync
                (logged per epoch as `train/teacher_cache_hit_rate`).
                No effect while the cosine loss is on: it needs the teacher's hidden states every step.
        """
        if student_layers is not None and kwargs.get("encoder_layers") is not None:
            raise ConfigError(
                "Set `model.init_args.student_layers` (copy layers of the teacher) or `encoder_layers` (keep layers of the pretrained student), not both."
            )
        frozen = Teacher(teacher) if isinstance(teacher, str) else TeacherEnsemble(list(teacher), multi_label=soft_loss == "sigmoid")
        if frozen.label_names is not None and list(frozen.label_names) != list(label_names):
            raise ConfigError(
                f"The teacher '{teacher}' predicts the labels {list(frozen.label_names)}, but the data has {list(label_names)}. "
                "Distil on the data the teacher was trained on, or set `data.label_columns` to the teacher's labels."
            )
        if frozen.model is not None and frozen.num_labels != len(label_names):
            raise ConfigError(f"The teacher '{teacher}' has {frozen.num_labels} outputs, but the data has {len(label_names)} labels {list(label_names)}.")
        from_checkpoint = kwargs.get("encoder_config") is not None  # the student's weights come from a checkpoint's state dict
        copied = copy_teacher_layers(frozen, student_layers) if student_layers is not None and not from_checkpoint else None
        if copied is not None:  # the student is built with the copy's shape; its weights are loaded below
            kwargs["encoder_config"] = copied.config.to_dict()
        super().__init__(encoder, label_names, lr, **kwargs)
        # from here on `hparams` are the student's alone: what every checkpoint holds at its top level (module docstring)
        self.distillation = {name: self.hparams.pop(name) for name in DISTILLATION_ARGUMENTS}
        for name in CLI_RECORDS:
            self.hparams.pop(name, None)
        if isinstance(self.criterion, RDrop):
            raise ConfigError(
                "`model.init_args.loss` RDrop acts in EmotionClassifier's training step; a distillation's student trains on the "
                "teacher's soft targets instead, so R-Drop has no effect there. Give EmotionDistiller its inner loss (e.g. BCE) instead."
            )
        self.same_tokenizer = same_tokenizer(encoder, frozen.tokenizer)
        if copied is not None:
            if not self.same_tokenizer:
                raise ConfigError(
                    f"With `student_layers` the student inherits the teacher's embeddings, so `model.init_args.encoder` must name the "
                    f"teacher's tokenizer: set it to '{frozen.tokenizer}' (it is '{encoder}')."
                )
            load_copied_student(self, copied, frozen)
        self.teacher = frozen

        teacher_hidden, student_hidden = frozen.base.config.hidden_size, self.encoder.config.hidden_size
        self.projection = None
        self.use_cosine = cosine_weight > 0
        if self.use_cosine and isinstance(frozen, TeacherEnsemble):
            self.use_cosine = False
            rank_zero_info("distillation: the cosine loss is off: an ensemble teacher has no single hidden state to align with. Only the logit losses apply.")
        elif self.use_cosine and not self.same_tokenizer:
            self.use_cosine = False
            rank_zero_info(
                "distillation: the cosine loss is off: teacher and student tokenise differently, so their tokens do not align. Only the logit losses apply."
            )
        elif self.use_cosine and student_hidden != teacher_hidden:
            if cosine_projection:
                self.projection = nn.Linear(student_hidden, teacher_hidden)
            else:
                self.use_cosine = False
                rank_zero_info(
                    f"distillation: the cosine loss is off: hidden sizes differ (student {student_hidden}, teacher {teacher_hidden}); set `cosine_projection: true` to learn a projection."
                )
        self.cache_logits = cache_teacher_logits and not self.use_cosine
        if cache_teacher_logits and self.use_cosine:
            rank_zero_warn("`cache_teacher_logits` has no effect while the cosine loss is on: it needs the teacher's hidden states at every step.")
        self._teacher_logits: Tensor | None = None  # (N, L) teacher logits of training example i (on_train_start)
        rank_zero_info(
            f"distillation: teacher {teacher}{teacher_files(frozen)} ({len(layer_list(frozen.base))} layers, hidden {teacher_hidden}) -> student "
            f"({len(layer_list(self.encoder))} layers, hidden {student_hidden}, {'copied from the teacher' if copied is not None else 'from its checkpoint' if from_checkpoint else encoder}); "
            f"loss = {soft_weight} x soft (T={temperature}, {soft_loss}) + {hard_weight} x hard"
            + (f" + {cosine_weight} x cosine" if self.use_cosine else "")
            + f". The teacher's {len(list(frozen.modules()))} modules stay in eval mode on purpose (Lightning warns about them at the start of fit)."
        )

    # ---- the teacher ---------------------------------------------------------------------
    def teacher_inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The batch's token ids and mask in the teacher's tokenisation."""
        if self.same_tokenizer:
            return batch["input_ids"], batch["attention_mask"]
        if "teacher_input_ids" in batch:
            return batch["teacher_input_ids"], batch["teacher_attention_mask"]
        raise ConfigError(self.missing_teacher_ids())

    def missing_teacher_ids(self) -> str:
        return (
            f"The teacher {self.distillation['teacher']} reads the tokenizer '{self.teacher.tokenizer}', which tokenises differently from the "
            f"student's '{self.hparams.encoder}', but the training batches carry no ids in the teacher's tokenisation, so it would read the "
            f"student's. Give the data module the teacher's tokenizer: `EmotionDataModule(teacher_tokenizer='{self.teacher.tokenizer}')` "
            "(the `emolightning` command sets `data.teacher_tokenizer` from the teacher itself)."
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # refused before any step: a data module that tokenises for no teacher, or for another one than this
        data = self.trainer.datamodule if stage == "fit" and not self.same_tokenizer else None
        given = data.hparams.get("teacher_tokenizer") if data is not None else None
        if data is not None and given is None:
            raise ConfigError(self.missing_teacher_ids())
        if given is not None:
            data_teacher_tokenizer(self.hparams.encoder, self.distillation["teacher"], given)

    @torch.no_grad()
    def teacher_outputs(self, batch: dict) -> tuple[Tensor, Tensor | None]:
        """(B, L) teacher logits and, if the cosine loss needs them, (B, T, H) last hidden states."""
        if self._teacher_logits is not None:  # an index on the device: no host sync
            return self._teacher_logits[batch["index"]], None
        return self.teacher(*self.teacher_inputs(batch), hidden=self.use_cosine)

    @torch.no_grad()
    def fill_teacher_cache(self, dataset, collate, batch_size: int = 64) -> None:
        """The teacher's logits for every row of `dataset`: this rank computes rows rank, rank + N, ..., and all ranks gather them."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = list(range(rank, len(dataset), world))
        share = torch.zeros(-(-len(dataset) // world), len(self.label_names), device=self.device)  # ranks' shares padded to one size
        with self.trainer.precision_plugin.forward_context():
            for positions in sorted_batches([len(dataset[i]["input_ids"]) for i in mine], batch_size):  # similar lengths share a batch
                batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in collate([dataset[mine[k]] for k in positions]).items()}
                share[positions] = self.teacher(*self.teacher_inputs(batch), hidden=False)[0].float()
        shares = self.all_gather(share) if world > 1 else share[None]  # (world, share, L)
        cache = torch.empty(len(dataset), len(self.label_names), device=self.device)
        for r in range(world):
            cache[r::world] = shares[r, : len(range(r, len(dataset), world))]
        self._teacher_logits = cache

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.cache_logits:
            loader = self.trainer.train_dataloader
            self.fill_teacher_cache(loader.dataset, loader.collate_fn)

    # ---- training ------------------------------------------------------------------------
    def distillation_losses(self, batch: dict) -> dict[str, Tensor]:
        """`loss` (the weighted sum) and its parts `loss_soft`, `loss_hard` and, when on, `loss_cos`."""
        hp, mask = self.distillation, batch["attention_mask"]
        hidden, states_mask = self.token_states(batch["input_ids"], mask)
        logits = self.classify(self.pool_states(hidden, states_mask))
        teacher_logits, teacher_hidden = self.teacher_outputs(batch)
        losses = {
            "loss_soft": soft_target_loss(logits, teacher_logits, hp["temperature"], multi_label=hp["soft_loss"] == "sigmoid"),
            "loss_hard": self.loss(logits, batch["labels"]),
        }
        total = hp["soft_weight"] * losses["loss_soft"] + hp["hard_weight"] * losses["loss_hard"]
        if self.use_cosine:
            student = hidden if self.projection is None else self.projection(hidden)
            losses["loss_cos"] = hidden_cosine_loss(student, teacher_hidden, mask)
            total = total + hp["cosine_weight"] * losses["loss_cos"]
        return {"loss": total, **losses}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        from_cache = self._teacher_logits is not None  # what teacher_outputs will read: the cache, or the teacher's forward
        losses = self.distillation_losses(batch)
        size = len(batch["labels"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        if self.cache_logits:  # the share of rows whose teacher logits came from the cache, over the epoch and all ranks
            self.log("train/teacher_cache_hit_rate", float(from_cache), on_step=False, on_epoch=True, sync_dist=True, batch_size=size)
        return losses["loss"]

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if self.projection is not None:  # trained like the head
            groups.append({"params": list(self.projection.parameters()), "weight_decay": 0.0, "lr": self.hparams.head_lr or self.hparams.lr})
        return groups

    # ---- checkpoints: the student's, plus the distiller's own part ------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("teacher.")]:  # rebuilt from `teacher`, never saved
            del state[key]
        # out of the state dict, so that it is the student's own (strict EmotionClassifier loading)
        projection = {k: state.pop(k) for k in [k for k in state if k.startswith("projection.")]}
        # the class that resumes it: the package's name for this one, a subclass's own import path
        class_path = "emolightning.EmotionDistiller" if type(self) is EmotionDistiller else f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["distillation"] = {"class_path": class_path, "hyper_parameters": dict(self.distillation), "projection": projection}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        # the teacher was not saved: it comes from `teacher` (strict loading wants its keys)
        for key, value in self.teacher.state_dict(prefix="teacher.").items():
            state.setdefault(key, value)
        if self.projection is not None:
            saved = checkpoint.get("distillation", {}).get("projection", {})
            for key, value in self.projection.state_dict(prefix="projection.").items():
                state.setdefault(key, saved.get(key, value))
