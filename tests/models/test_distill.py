"""EmotionDistiller on tiny random models: frozen teacher, exact layer copy, teacher-free student
checkpoints, the logit cache, other tokenizers and hidden sizes, and one distillation through the CLI."""

from __future__ import annotations

import csv
import glob
import inspect
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from emolightning import EmotionClassifier, EmotionDataModule, EmotionDistiller
from emolightning.errors import ConfigError
from emolightning.models.heads import MeanPooling
from emolightning.models.objectives import RDrop

from conftest import LABELS
from helpers import DDP, REPO, callback_option, emolightning, env_with_tests_on_path, tiny_args


def save_teacher(model: EmotionClassifier, path: Path) -> str:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": L.__version__}, path)
    return str(path)


@pytest.fixture(scope="module")
def teacher_ckpt(tiny_encoder, tmp_path_factory) -> str:
    """A random 2-layer EmotionClassifier (mean pooling) saved as an emolightning checkpoint."""
    torch.manual_seed(0)
    return save_teacher(EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, head=MeanPooling()), tmp_path_factory.mktemp("teacher") / "teacher.ckpt")


def distill_args(tiny_encoder: str, teacher: str) -> list[str]:
    """configs/distill/minilm-l6-to-l3.yaml with the tiny tokenizer and a student copied from layer 1 of `teacher`."""
    return [
        "--config",
        "configs/distill/minilm-l6-to-l3.yaml",
        "--model.init_args.encoder",
        tiny_encoder,
        "--model.init_args.teacher",
        teacher,
        "--model.init_args.student_layers",
        "[1]",
    ]


def make_batch(n_vocab: int = 40) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, n_vocab, (3, 7), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    ids = ids * mask  # [PAD] = 0
    labels = torch.randint(0, 2, (3, 11), generator=g).float()
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.tensor([3, 0, 5])}


def distiller(tiny_encoder, teacher, **kwargs) -> EmotionDistiller:
    return EmotionDistiller(tiny_encoder, LABELS, lr=1e-3, teacher=teacher, **{"head": MeanPooling(), **kwargs})


def test_cli_help_shows_every_emotion_classifier_argument_of_the_distiller(capsys):
    # the distiller passes the student's arguments on as **kwargs: `--help` must still show each one as
    # a typed key, with EmotionClassifier's type and default (a new EmotionClassifier option included)
    from emolightning.cli.main import run_cli

    def options(class_path: str) -> dict[str, str]:
        with pytest.raises(SystemExit):
            run_cli(["fit", "--model.help", class_path])
        # an option's entry: its line `  --model.<name> ...` and the indented lines after it, ending in `(type: ..., default: ...)`
        entries = re.findall(r"^  --model\.(\w+)(.*?)(?=^  -|\Z)", capsys.readouterr().out, flags=re.M | re.S)
        # a component's `--model.<name>.help CLASS` entry has no type of its own
        return {name: re.search(r"\(((?:required, )?type: .*)\)$", " ".join(body.split())).group(1) for name, body in entries if not body.startswith(".help")}

    parent, child = options("emolightning.EmotionClassifier"), options("emolightning.EmotionDistiller")
    assert sorted(parent) == sorted(n for n in inspect.signature(EmotionClassifier.__init__).parameters if n != "self")
    for name, typed in parent.items():
        assert child.get(name) == typed, name


def test_student_layers_copy_the_teacher_exactly(tiny_encoder, teacher_ckpt):
    model = distiller(tiny_encoder, teacher_ckpt, student_layers=[1])
    teacher, student = model.teacher.encoder, model.encoder
    assert len(student.encoder.layer) == 1 and model.hparams.encoder_config["num_hidden_layers"] == 1
    assert len(teacher.encoder.layer) == 2  # the teacher keeps all of its layers
    pairs = [(student.embeddings, teacher.embeddings), (student.encoder.layer[0], teacher.encoder.layer[1]), (model.head, model.teacher.head)]
    for copy, original in pairs:
        for (name, a), (_, b) in zip(copy.named_parameters(), original.named_parameters(), strict=True):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name  # equal values, separate tensors
    assert student.training and not model.teacher.training
    assert all(p.requires_grad for p in model.encoder.parameters()) and not any(p.requires_grad for p in model.teacher.parameters())
    with pytest.raises(ConfigError, match="student_layers"):
        distiller(tiny_encoder, teacher_ckpt, student_layers=[2])
    with pytest.raises(ConfigError, match="not both"):
        distiller(tiny_encoder, teacher_ckpt, student_layers=[1], encoder_layers=[0])
    with pytest.raises(ConfigError, match="RDrop"):  # R-Drop is EmotionClassifier's step; the distiller's would ignore it
        distiller(tiny_encoder, teacher_ckpt, loss=RDrop(weight=1.0))
    with pytest.raises(ConfigError, match="does not exist"):
        distiller(tiny_encoder, str(Path(teacher_ckpt).with_name("missing.ckpt")))


@pytest.mark.parametrize("layout", ["distilbert", "bert"])
def test_hugging_face_teacher_and_its_layer_layout(layout, tiny_encoder, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

    vocab = BertConfig.from_pretrained(tiny_encoder).vocab_size
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}, "problem_type": "multi_label_classification"}
    if layout == "distilbert":
        config = DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **labels)
        hf = DistilBertForSequenceClassification(config)
    else:
        config = BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, **labels
        )
        hf = BertForSequenceClassification(config)
    hf.save_pretrained(tmp_path / "teacher")
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(tmp_path / "teacher")

    model = distiller(tiny_encoder, str(tmp_path / "teacher"), student_layers=[1], cosine_weight=0.1)
    assert model.same_tokenizer and model.use_cosine  # another path, the same vocabulary
    source = model.teacher.base
    layers = (lambda m: m.transformer.layer) if layout == "distilbert" else (lambda m: m.encoder.layer)
    assert len(layers(model.encoder)) == 1 and len(layers(source)) == 2
    for a, b in zip(layers(model.encoder)[0].parameters(), layers(source)[1].parameters(), strict=True):
        assert torch.equal(a, b)
    batch = make_batch(vocab)
    logits, hidden = model.teacher(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (3, 11) and hidden.shape == (3, 7, 32)
    assert set(model.distillation_losses(batch)) == {"loss", "loss_soft", "loss_hard", "loss_cos"}

    hf.config.id2label = {i: n for i, n in enumerate(reversed(LABELS))}
    hf.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ConfigError, match="predicts the labels"):
        distiller(tiny_encoder, str(tmp_path / "teacher"))


class TeacherWatch(L.Callback):
    """Checks, at every training step, that the teacher is in eval mode and gets no gradient."""

    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        assert not any(m.training for m in model.teacher.modules())

    def on_after_backward(self, trainer, model):
        assert all(p.grad is None for p in model.teacher.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        self.steps += 1


def test_fit_keeps_the_teacher_frozen_and_saves_a_plain_student(tiny_encoder, ec_dir, teacher_ckpt, tmp_path):
    teacher_copy = shutil.copy(teacher_ckpt, tmp_path / "teacher.ckpt")
    model = distiller(tiny_encoder, str(teacher_copy), student_layers=[1], cosine_weight=0.1, head=MeanPooling(dropout=0.0))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.train()  # what older Lightning versions and user code call: the teacher must stay in eval mode
    assert model.encoder.training and not any(m.training for m in model.teacher.modules())
    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=str(tmp_path / "cache"), batch_size=16)
    watch = TeacherWatch()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, data)
    assert watch.steps == 4  # two epochs, with a validation between them
    assert all(torch.equal(before[k], v) for k, v in model.teacher.state_dict().items())
    for key in ("train/loss", "train/loss_soft", "train/loss_hard", "train/loss_cos"):
        assert key in trainer.callback_metrics

    trainer.save_checkpoint(tmp_path / "student.ckpt")
    os.remove(teacher_copy)  # the student must not need its teacher any more
    checkpoint = torch.load(tmp_path / "student.ckpt", weights_only=True)
    assert not [k for k in checkpoint["state_dict"] if k.startswith(("teacher.", "projection."))]
    assert set(checkpoint["hyper_parameters"]) <= set(inspect.signature(EmotionClassifier.__init__).parameters)
    assert checkpoint["hyper_parameters"]["encoder_config"]["num_hidden_layers"] == 1
    assert checkpoint["distillation"]["hyper_parameters"]["teacher"] == str(teacher_copy)

    student = EmotionClassifier.load_from_checkpoint(tmp_path / "student.ckpt")
    assert type(student) is EmotionClassifier and len(student.encoder.encoder.layer) == 1
    batch = make_batch()
    model.eval(), student.eval()
    with torch.no_grad():
        assert torch.equal(model(batch["input_ids"], batch["attention_mask"]), student(batch["input_ids"], batch["attention_mask"]))
    assert torch.equal(model.thresholds, student.thresholds)


def test_cached_teacher_logits_give_the_same_losses(tiny_encoder, ec_dir, teacher_ckpt, tmp_path):
    """The teacher runs once over the training split when training starts; every step reads its logits from the cache."""

    class Losses(L.Callback):
        def __init__(self, model):
            self.losses, self.teacher_rows = [], []
            model.teacher.register_forward_hook(lambda module, args, out: self.teacher_rows.append((len(self.losses), len(args[0]))))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    def fit(cache: bool) -> tuple[Losses, EmotionDistiller]:
        L.seed_everything(0)
        model = distiller(tiny_encoder, teacher_ckpt, student_layers=[1], cache_teacher_logits=cache)
        data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=str(tmp_path / "cache"), batch_size=16)
        record = Losses(model)
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[record]
        )
        trainer.fit(model, data)
        return record, model

    (plain, _), (cached, model) = fit(False), fit(True)
    assert len(plain.losses) == len(cached.losses) == 12  # 96 rows / 16, 2 epochs
    assert sum(n for _, n in plain.teacher_rows) == 2 * 96  # without the cache: every row, every epoch
    assert {step for step, _ in cached.teacher_rows} == {0} and sum(n for _, n in cached.teacher_rows) == 96  # once, before the first step
    assert model._teacher_logits.shape == (96, len(LABELS))
    # the cache holds the logits of rows padded in other batches: float32 rounding only
    assert max(abs(a - b) for a, b in zip(plain.losses, cached.losses)) < 1e-5
    # with the cosine loss on, the teacher must run every step, so the cache is off
    assert not distiller(tiny_encoder, teacher_ckpt, cosine_weight=0.1, cache_teacher_logits=True).cache_logits


def test_cached_teacher_logits_need_no_host_sync(tiny_encoder, teacher_ckpt):
    """Meta tensors have no values: any .item(), int() or bool() on them raises, as a host sync would stall a GPU."""
    cached = distiller(tiny_encoder, teacher_ckpt, student_layers=[1], cache_teacher_logits=True)
    cached._teacher_logits = torch.zeros(96, len(LABELS), device="meta")
    logits, hidden = cached.teacher_outputs({"input_ids": None, "attention_mask": None, "index": torch.tensor([3, 0, 5], device="meta")})
    assert logits.shape == (3, len(LABELS)) and logits.device.type == "meta" and hidden is None


@pytest.mark.slow  # several processes or a full fit: CI runs the slow set too
def test_teacher_logit_cache_hits_on_two_processes(tiny_encoder, ec_dir, teacher_ckpt, tmp_path):
    """Real DDP (2 gloo processes, 2 epochs): each rank runs the teacher on its half of the training split before the
    first step, the halves are gathered, and no step runs the teacher again, although the sampler deals each rank rows
    that the other rank computed. The cache holds the teacher's own logits of every row."""
    from emolightning.models.distill import Teacher

    record = str(tmp_path / "teacher-{rank}.pt")
    fit = emolightning(
        "fit",
        *distill_args(tiny_encoder, teacher_ckpt),
        "--model.init_args.cosine_weight",
        "0",
        "--model.init_args.cache_teacher_logits",
        "true",
        "--data.data_dir",
        ec_dir,
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "6",
        "--trainer.precision",
        "32-true",  # the cache is compared with the teacher's fp32 logits; `auto` is bf16 on CPUs with native bf16
        *DDP,
        callback_option("RecordTeacher", path=record),
        env=env_with_tests_on_path(),
    )
    assert "Starting with 2 processes" in fit.stdout + fit.stderr
    (run,) = (tmp_path / "run" / "lightning_logs").glob("version_*")
    with open(run / "metrics.csv") as f:
        rates = {int(row["epoch"]): float(row["train/teacher_cache_hit_rate"]) for row in csv.DictReader(f) if row.get("train/teacher_cache_hit_rate")}
    assert rates == {0: 1.0, 1: 1.0}

    ranks = [torch.load(record.format(rank=r), weights_only=False) for r in (0, 1)]
    for rank, saved in enumerate(ranks):
        # 96 rows: 48 each before the first step (rows rank, rank + 2, ...), none in the 2 x 6 steps of 4 rows
        assert saved["rows"] == {"start": 48, "steps": 0}, rank
        assert sorted(saved["seen"]) == [0, 1] and all(len(rows) == 24 for rows in saved["seen"].values())
        # the steps read rows the other rank computed: only the gathered cache holds their logits
        assert any(i % 2 != rank for rows in saved["seen"].values() for i in rows), rank
    cache = ranks[0]["cache"]
    assert cache.shape == (96, len(LABELS)) and torch.equal(ranks[1]["cache"], cache)

    # by hand: the teacher alone, one unpadded row at a time, on the token ids the run trained on
    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=str(tmp_path / "cache"), max_length=128)
    data.setup("fit")
    train = data.splits["train"]
    teacher = Teacher(teacher_ckpt)
    with torch.no_grad():
        expected = torch.cat(
            [teacher(train[i]["input_ids"][None], torch.ones(1, len(train[i]["input_ids"]), dtype=torch.long), hidden=False)[0] for i in range(96)]
        )
    assert expected.std() > 0.01  # rows differ: a mix-up of rows would show
    assert (cache - expected).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def mpnet_teachers(tiny_mpnet, tmp_path_factory) -> list[str]:
    """Two random tiny MPNet classifiers (tiny_mpnet: other specials, ids, pad id and segmentation than tiny_encoder) saved as checkpoints."""
    root = tmp_path_factory.mktemp("mpnet-teachers")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_teacher(EmotionClassifier(tiny_mpnet, LABELS, lr=1e-3, head=MeanPooling()), root / f"mpnet-{seed}.ckpt"))
    return paths


class TeacherIds(L.Callback):
    """The token ids each teacher's embedding layer received at each training step, with the step's rows (`index`)."""

    def __init__(self, teachers):
        self.rows, self.ids = [], {i: [] for i in range(len(teachers))}
        for i, teacher in enumerate(teachers):
            hook = lambda module, args, kwargs, i=i: self.ids[i].append((kwargs.get("input_ids", args[0] if args else None)).clone())  # noqa: E731
            teacher.classifier.encoder.embeddings.register_forward_pre_hook(hook, with_kwargs=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append(batch["index"].tolist())


@pytest.mark.parametrize("ensemble", [False, True], ids=["one-teacher", "ensemble"])
def test_a_teacher_of_another_tokenizer_is_fed_its_own_tokenisation_of_each_row(ensemble, tiny_encoder, tiny_mpnet, ec_dir, mpnet_teachers, tmp_path):
    """An MPNet teacher (`<s>` 0, pad 1, `</s>` 2, its own vocabulary and word pieces) and a BERT student: at every step each teacher's
    embeddings get exactly the MPNet tokenizer's encoding of the step's texts, not the student's ids."""
    from transformers import AutoTokenizer

    from conftest import make_rows

    teacher = mpnet_teachers if ensemble else mpnet_teachers[0]
    model = distiller(tiny_encoder, teacher, cosine_weight=0.1)
    members = list(model.teacher.members) if ensemble else [model.teacher]
    assert not model.same_tokenizer and not model.use_cosine  # tokens do not align: logit losses only
    assert all(m.tokenizer == tiny_mpnet and m.classifier.hparams.encoder == tiny_mpnet for m in members)
    if not ensemble:
        with pytest.raises(ConfigError, match="must name the teacher's tokenizer"):
            distiller(tiny_encoder, teacher, student_layers=[1])

    def trainer(*callbacks) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
        )  # fmt: skip

    # a data module that tokenises for no teacher is refused before the first step, naming the option
    plain = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=str(tmp_path / "cache"), batch_size=8)
    with pytest.raises(ConfigError, match=f"teacher_tokenizer='{re.escape(tiny_mpnet)}'"):
        trainer().fit(model, plain)
    # and so is one that tokenises for another teacher than this one
    wrong = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, teacher_tokenizer=tiny_encoder, cache_dir=str(tmp_path / "cache"), batch_size=8)
    with pytest.raises(ConfigError, match="tokenises differently"):
        trainer().fit(model, wrong)

    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, teacher_tokenizer=tiny_mpnet, cache_dir=str(tmp_path / "cache"), batch_size=8)
    watch = TeacherIds(members)
    trainer(watch).fit(model, data)
    texts = [text for _, text, _ in make_rows(96, 0, "train")]  # conftest's ec_dir train split, in file order
    mpnet, bert = AutoTokenizer.from_pretrained(tiny_mpnet), AutoTokenizer.from_pretrained(tiny_encoder)
    assert len(watch.rows) == 3
    for ids in watch.ids.values():
        assert len(ids) == 3
        for step, rows in enumerate(watch.rows):
            for row, index in enumerate(rows):
                received = ids[step][row].tolist()
                expected = mpnet(texts[index])["input_ids"]
                assert received[: len(expected)] == expected and set(received[len(expected) :]) <= {1}, (step, index)  # padded with <pad> 1
                assert expected != bert(texts[index])["input_ids"]

    batch = next(iter(data.train_dataloader()))
    # the teacher's mask counts its own tokens (long words are two pieces there): not the student's
    lengths = [len(mpnet(texts[i])["input_ids"]) for i in batch["index"].tolist()]
    assert batch["teacher_attention_mask"].sum(1).tolist() == lengths != batch["attention_mask"].sum(1).tolist()
    assert (batch["teacher_input_ids"][batch["teacher_attention_mask"] == 0] == 1).all() and (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    logits, _ = model.teacher_outputs(batch)
    assert torch.equal(logits, model.teacher(batch["teacher_input_ids"], batch["teacher_attention_mask"])[0])
    assert set(model.distillation_losses(batch)) == {"loss", "loss_soft", "loss_hard"}
    assert "teacher_input_ids" not in next(iter(data.val_dataloader()))  # only training runs the teacher


def test_a_teacher_given_as_a_run_folder_is_its_best_checkpoint(tiny_encoder, mpnet_teachers, teacher_ckpt, tmp_path):
    runs = []
    for seed, source in enumerate(mpnet_teachers):
        folder = tmp_path / f"seed{seed}" / "lightning_logs" / "version_0" / "checkpoints"
        folder.mkdir(parents=True)
        runs.append(str(tmp_path / f"seed{seed}"))
        shutil.copy(source, folder / "best-0-6.ckpt")
    model = distiller(tiny_encoder, runs[0])
    assert model.teacher.checkpoint == str(Path(runs[0], "lightning_logs", "version_0", "checkpoints", "best-0-6.ckpt"))
    assert model.teacher.tokenizer == model.teacher.classifier.hparams.encoder != tiny_encoder
    ensemble = distiller(tiny_encoder, runs)  # a list of run folders: an ensemble of their best checkpoints
    assert [m.checkpoint for m in ensemble.teacher.members] == [str(next(Path(r).rglob("best-*.ckpt"))) for r in runs]

    empty = tmp_path / "unfinished" / "lightning_logs" / "version_0" / "checkpoints"
    empty.mkdir(parents=True)
    (empty / "last.ckpt").write_bytes(b"")  # a run cut before its first validation: no best checkpoint
    with pytest.raises(ConfigError, match="holds no best checkpoint") as refused:
        distiller(tiny_encoder, str(tmp_path / "unfinished"))
    assert "model.init_args.teacher" in str(refused.value) and "\n" not in str(refused.value)
    # teachers that tokenise differently cannot share the one teacher tokenisation a batch carries
    with pytest.raises(ConfigError, match="tokenise differently"):
        distiller(tiny_encoder, [runs[0], teacher_ckpt])


def test_the_cli_gives_the_data_the_teachers_tokenizer_and_the_teacher_its_own_identity(tiny_encoder, tiny_mpnet, ec_dir, mpnet_teachers, tmp_path):
    """Built by LightningCLI, the teacher is what its checkpoint says (Lightning hands the distiller's hyperparameters to every
    model built inside the distiller's __init__), and the data module tokenises for it without `data.teacher_tokenizer` being set."""
    from emolightning.cli.main import run_cli

    options = [
        "--config", str(REPO / "configs" / "distill" / "mpnet-to-minilm-l6.yaml"), "--model.init_args.encoder", tiny_encoder,
        "--model.init_args.teacher", mpnet_teachers[0], "--data.data_dir", ec_dir, "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    cli = run_cli(["fit", *options])
    teacher = cli.model.teacher
    assert dict(teacher.classifier.hparams)["encoder"] == teacher.tokenizer == tiny_mpnet and "teacher" not in teacher.classifier.hparams
    assert not cli.model.same_tokenizer and cli.datamodule.hparams.teacher_tokenizer == tiny_mpnet
    with pytest.raises(ConfigError, match="tokenises differently"):  # a teacher tokenizer the user set, unlike the teacher's own
        run_cli(["fit", *options, "--data.teacher_tokenizer", tiny_encoder])


def test_cosine_projection_when_hidden_sizes_differ(tiny_encoder, teacher_ckpt, tmp_path):
    from transformers import BertConfig, BertModel

    narrow = tmp_path / "narrow"
    shutil.copytree(tiny_encoder, narrow)
    config = BertConfig.from_pretrained(tiny_encoder, hidden_size=16, intermediate_size=32)
    BertModel(config).save_pretrained(narrow)

    assert not distiller(str(narrow), teacher_ckpt, cosine_weight=0.1).use_cosine
    model = distiller(str(narrow), teacher_ckpt, cosine_weight=0.1, cosine_projection=True)
    assert model.use_cosine and tuple(model.projection.weight.shape) == (32, 16)
    losses = model.distillation_losses(make_batch())
    losses["loss"].backward()
    assert model.projection.weight.grad.abs().sum() > 0

    model._trainer = SimpleNamespace(estimated_stepping_batches=10, precision="32-true", gradient_clip_val=None)
    config = model.configure_optimizers()
    optimized = {id(p) for group in config["optimizer"].param_groups for p in group["params"]}
    assert id(model.projection.weight) in optimized and not optimized & {id(p) for p in model.teacher.parameters()}
    assert len(config["lr_scheduler"]["scheduler"].lr_lambdas) == len(config["optimizer"].param_groups)

    # the projection is kept aside in the checkpoint, so a resumed distillation gets it back
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    assert set(checkpoint["distillation"]["projection"]) == {"projection.weight", "projection.bias"}
    resumed = distiller(str(narrow), teacher_ckpt, cosine_weight=0.1, cosine_projection=True, encoder_config=checkpoint["hyper_parameters"]["encoder_config"])
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])  # strict: the teacher's keys are filled in
    assert torch.equal(resumed.projection.weight, model.projection.weight)


def test_distillation_through_the_cli(tiny_encoder, ec_dir, tmp_path, capsys):
    from emolightning.cli.main import run_cli

    common = ["--data.data_dir", ec_dir, "--data.cache_dir", str(tmp_path / "cache"), "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1"]
    # a tiny teacher, fine-tuned briefly with the plain module (in-process: no second import)
    run_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs/quickstart.yaml"),
            "--model.init_args.encoder",
            tiny_encoder,
            "--model.init_args.lr",
            "1e-3",
            "--trainer.default_root_dir",
            str(tmp_path / "teacher"),
            *common,
        ]
    )
    teacher = glob.glob(str(tmp_path / "teacher" / "lightning_logs" / "version_*" / "checkpoints" / "best-*.ckpt"))[0]

    fit = emolightning(
        "fit", *distill_args(tiny_encoder, teacher), "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "student"), *common
    )
    printed = fit.stdout + fit.stderr
    assert "distillation: teacher" in printed and "+ 0.1 x cosine" in printed and "[val epoch 0]" in printed
    run = Path(glob.glob(str(tmp_path / "student" / "lightning_logs" / "version_*"))[0])
    assert "class_path: emolightning.EmotionDistiller" in (run / "config.yaml").read_text()
    best = glob.glob(str(run / "checkpoints" / "best-*.ckpt"))[0]
    assert not [k for k in torch.load(best, weights_only=True)["state_dict"] if k.startswith("teacher.")]

    # the student tests as a plain EmotionClassifier, with the plain 3-layer config and no teacher
    os.remove(teacher)
    cli = run_cli(
        [
            "test",
            "--config",
            str(REPO / "configs/semeval/minilm-l3.yaml"),
            "--model.init_args.encoder",
            tiny_encoder,
            "--trainer.default_root_dir",
            str(tmp_path / "test"),
            "--ckpt_path",
            best,
            *common,
        ]
    )
    assert type(cli.model) is EmotionClassifier and len(cli.model.encoder.encoder.layer) == 1
    # its test scores are the official ones of the probabilities it scored against the gold file, at 0.5 and at its thresholds (ec_reference.py)
    from ec_reference import assert_scores, checkpoint_thresholds, gold_table, stage_scores

    gold = gold_table(Path(ec_dir, "2018-E-c-En-test-gold.txt"), LABELS)[1]
    expected = stage_scores("test", gold, cli.model.epoch_outputs("test").probs.tolist(), LABELS, checkpoint_thresholds(best))
    assert_scores({k: float(v) for k, v in cli.trainer.callback_metrics.items()}, expected, 1e-6, "the student's test metrics")


@pytest.mark.slow  # three fits in subprocesses
def test_a_killed_distillation_resumes_as_the_distiller_and_ends_where_the_uninterrupted_one_ends(tiny_encoder, ec_dir, teacher_ckpt, tmp_path):
    """`fit --config <run>/config.yaml --ckpt_path last` of a distillation resumes the distiller (teacher, loss weights and
    all) from the student's checkpoint: the resumed run ends with the uninterrupted run's weights and optimizer state."""

    def fit(root: Path, *extra: str, check: bool = True):
        # 96 train rows / batch 16 = 6 steps per epoch, 2 epochs; last.ckpt every 4 steps
        return emolightning(
            "fit",
            *distill_args(tiny_encoder, teacher_ckpt),
            "--data.data_dir",
            ec_dir,
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--data.batch_size",
            "16",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.max_epochs",
            "2",
            "--last_checkpoint.every_n_train_steps",
            "4",
            "--last_checkpoint.keep_after_fit",
            "true",
            *extra,
            check=check,
            env=env_with_tests_on_path(),
        )

    fit(tmp_path / "plain")
    killed = fit(tmp_path / "broken", callback_option("KillAtStep", step=6), check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = tmp_path / "broken" / "lightning_logs" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    resumed = emolightning("fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", env=env_with_tests_on_path())
    assert "distillation: teacher" in resumed.stdout + resumed.stderr  # the distiller, not a plain classifier, trained on

    mine = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    theirs = torch.load(tmp_path / "plain" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert mine["global_step"] == theirs["global_step"] == 12
    assert mine["distillation"]["hyper_parameters"] == theirs["distillation"]["hyper_parameters"]
    assert set(mine["state_dict"]) == set(theirs["state_dict"]) and not [k for k in mine["state_dict"] if k.startswith("teacher.")]
    assert max((mine["state_dict"][k].float() - v.float()).abs().max().item() for k, v in theirs["state_dict"].items()) <= 1e-6
    adam_mine, adam_theirs = mine["optimizer_states"][0]["state"], theirs["optimizer_states"][0]["state"]
    assert max((adam_mine[i]["exp_avg"] - adam_theirs[i]["exp_avg"]).abs().max().item() for i in adam_theirs) <= 1e-9


@pytest.mark.slow  # three CLI runs in subprocesses: about 4 minutes on 2 busy cores
def test_the_documented_two_step_recipe_caches_the_teachers_own_predictions(tiny_encoder, tiny_mpnet, ec_dir, tmp_path):
    """docs/distillation.md's two commands, through the real CLI, with tiny models that tokenise differently: fit an MPNet teacher,
    then distil a BERT-tokenised student from the teacher's RUN FOLDER with `cache_teacher_logits: true` (configs/distill/mpnet-to-minilm-l6.yaml).
    The cached teacher logits of the training rows are the teacher's own `emolightning predict --probabilities` of those rows, at fp32."""
    from conftest import make_rows

    fp32, quiet = ["--trainer.precision", "32-true"], ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    emolightning("fit", *tiny_args(tiny_mpnet, ec_dir, tmp_path / "teacher", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", *fp32))
    run_folder = tmp_path / "teacher" / "run"  # the teacher's `trainer.default_root_dir`, as the configs name it
    assert not list(run_folder.rglob("last.ckpt"))  # a completed fit keeps its best checkpoint only: a teacher named as last.ckpt is gone
    (best,) = run_folder.rglob("best-*.ckpt")

    record = str(tmp_path / "record-{rank}.pt")
    emolightning(
        "fit", "--config", "configs/distill/mpnet-to-minilm-l6.yaml", "--model.init_args.encoder", tiny_encoder,
        "--model.init_args.teacher", str(run_folder), "--data.data_dir", ec_dir, "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.default_root_dir", str(tmp_path / "student"), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1", *quiet, *fp32, callback_option("RecordTeacher", path=record),
        env=env_with_tests_on_path(),
    )  # fmt: skip
    (student,) = (tmp_path / "student" / "lightning_logs").glob("version_*")
    assert f"teacher_tokenizer: {tiny_mpnet}" in (student / "config.yaml").read_text()  # set from the teacher, recorded for the run
    cache = torch.load(record.format(rank=0), weights_only=False)["cache"]

    out = tmp_path / "teacher-predictions.txt"
    train = Path(ec_dir) / "2018-E-c-En-train.txt"
    emolightning(
        "predict", "--config", str(best.parents[1] / "config.yaml"), "--ckpt_path", str(best), "--data.predict_file", str(train),
        "--output", str(out), "--probabilities", "true", "--backend", "torch", "--trainer.default_root_dir", str(tmp_path / "predict"), *quiet, *fp32,
    )  # fmt: skip
    with open(out, newline="") as f:
        predicted = {row["ID"]: [float(row[f"p_{name}"]) for name in LABELS] for row in csv.DictReader(f, delimiter="\t")}
    expected = torch.tensor([predicted[row_id] for row_id, _, _ in make_rows(96, 0, "train")])  # the cache's rows: the train file's order
    assert cache.shape == expected.shape == (96, len(LABELS))
    assert expected.std(0).min() > 1e-3  # the rows' probabilities differ: a teacher fed other ids, or rows mixed up, would show
    assert (torch.sigmoid(cache) - expected).abs().max().item() < 1e-5  # 6 decimals in the file; fp32 rounding of other paddings
