"""Faults in the files emolightning reads and writes: a damaged or foreign checkpoint, a full disk, a read-only folder.

Each stops with one paragraph naming the file (exit code 2, no traceback), leaves no half-written
file under the final name, and leaves the previous good file loadable. Disk faults are injected
(the tests run as root, whom a chmod does not stop, and no real disk needs to fill).
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from emolightning import files
from emolightning.cli.main import main
from emolightning.errors import ConfigError, StorageError
from emolightning.files import check_model_folder, write_atomically
from emolightning.models.checkpoints import check_checkpoint
from emolightning.training.resume import AtomicCheckpointIO, find_last_checkpoint

from helpers import DDP, REPO, callback_option, emolightning, env_with_tests_on_path, predict_args, tiny_args


def run_main(args: list[str], capsys) -> tuple[int, str]:
    """`emolightning ARGS` in-process: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    return done.value.code, capsys.readouterr().err


def one_paragraph(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("emolightning: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def failing(real, errnum: int, when):
    """`real`, except that a call for which `when(*args)` holds raises OSError(errnum)."""

    def call(*args, **kwargs):
        if when(*args):
            raise OSError(errnum, os.strerror(errnum))
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize("errnum, reason", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "no permission")])
def test_a_failed_write_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, errnum, reason):
    target = tmp_path / "report.json"
    target.write_text("old")
    monkeypatch.setattr(files.os, "replace", failing(os.replace, errnum, lambda src, dst: str(dst) == str(target)))
    with pytest.raises(StorageError) as caught:
        write_atomically(str(target), lambda f: f.write("new"), "w", needed=3_000_000)
    message = str(caught.value)
    assert f"'{target}'" in message and reason in message and "3.0 MB" in message
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]  # no temporary file left


def test_an_error_that_is_not_the_disks_keeps_its_traceback(tmp_path):
    def broken(f):
        raise OSError(errno.EBADF, "bad file descriptor")

    with pytest.raises(OSError) as caught:
        write_atomically(str(tmp_path / "x"), broken)
    assert not isinstance(caught.value, StorageError) and os.listdir(tmp_path) == []


def test_a_folder_built_beside_its_target_is_gone_after_a_failure(tmp_path):
    target = tmp_path / "deep" / "model"
    with pytest.raises(RuntimeError), files.folder_beside(str(target)) as work:
        assert os.path.dirname(work) == str(target.parent) and os.path.basename(work).startswith(".model.partial-")
        (Path(work) / "weights.bin").write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert os.listdir(target.parent) == []


def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "hyper_parameters": {"encoder": "x", "label_names": ["a"]}}, path)

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(StorageError) as caught:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(250_000)}}, path)
    assert f"'{path}'" in str(caught.value) and "1.0 MB" in str(caught.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["state_dict"]["w"].sum() == 1000 and os.listdir(tmp_path) == ["last.ckpt"]


def damaged_checkpoints(good, folder) -> dict:
    """name -> (path, words the message must hold)"""
    data = good.read_bytes()
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "cut.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "notes.ckpt").write_text("these are my notes\n")
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"hidden": 8}}, folder / "other-model.ckpt")
    torch.save([1, 2, 3], folder / "a-list.ckpt")
    return {
        "empty": (folder / "empty.ckpt", "empty (0 bytes)"),
        "truncated": (folder / "cut.ckpt", "not a zip archive"),
        "not_a_checkpoint": (folder / "notes.ckpt", "not a zip archive"),
        "another_model": (folder / "other-model.ckpt", "a checkpoint of another model"),
        "not_lightning": (folder / "a-list.ckpt", "no `state_dict`"),
    }


def test_damaged_checkpoints_are_named_before_anything_reads_them(trained_run, tmp_path):
    check_checkpoint(str(trained_run["ckpt"]))  # the good one passes
    for name, (path, words) in damaged_checkpoints(trained_run["ckpt"], tmp_path).items():
        with pytest.raises(ConfigError) as caught:
            check_checkpoint(str(path))
        assert f"'{path}'" in str(caught.value) and words in str(caught.value), (name, str(caught.value))


def test_predict_with_a_damaged_checkpoint_stops_in_one_paragraph(trained_run, tmp_path, capsys):
    before = trained_run["ckpt"].read_bytes()
    cases = damaged_checkpoints(trained_run["ckpt"], tmp_path)
    for name in ("truncated", "another_model"):
        path, words = cases[name]
        args = predict_args(trained_run, tmp_path, "--output", str(tmp_path / "out.txt"))
        args[args.index("--ckpt_path") + 1] = str(path)
        code, err = run_main(args, capsys)
        assert code == 2, (name, err[-2000:])
        line = one_paragraph(err)
        assert str(path) in line and words in line and "--ckpt_path" in line, line
    assert trained_run["ckpt"].read_bytes() == before  # the good checkpoint is untouched, and still loads
    check_checkpoint(str(trained_run["ckpt"]))


def test_predict_into_a_read_only_folder_keeps_the_previous_file(trained_run, tmp_path, capsys, monkeypatch):
    output = tmp_path / "out" / "pred.txt"
    output.parent.mkdir()
    output.write_text("previous predictions\n")
    monkeypatch.setattr(files.os, "replace", failing(os.replace, errno.EROFS, lambda src, dst: str(dst) == str(output)))
    code, err = run_main(predict_args(trained_run, tmp_path, "--output", str(output)), capsys)
    assert code == 2
    line = one_paragraph(err)
    assert str(output) in line and "read-only" in line and "MB" in line
    assert output.read_text() == "previous predictions\n" and os.listdir(output.parent) == ["pred.txt"]


def full_disk_for(final: str, real=os.fsync):
    """os.fsync, except that the fsync of the temporary file of `final` (files.temporary_name) meets a full disk."""
    temporary = os.path.basename(files.temporary_name(final))

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == temporary:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    return fsync


@pytest.mark.parametrize("suffix", ["", ".counts"])
def test_a_prediction_part_on_a_full_disk_is_not_left_half_written(trained_run, tmp_path, capsys, monkeypatch, suffix):
    """Rank 0's part file of the predictions (its rows; `.counts`: how many), which the merge reads, meets a full disk."""
    output = tmp_path / "out" / "pred.txt"
    output.parent.mkdir()
    output.write_text("previous predictions\n")
    part = str(output.parent / ".pred.txt.part0.tmp") + suffix
    monkeypatch.setattr(files.os, "fsync", full_disk_for(part))
    code, err = run_main(predict_args(trained_run, tmp_path, "--output", str(output)), capsys)
    assert code == 2, err[-2000:]
    line = one_paragraph(err)
    assert f"'{part}'" in line and "the disk is full" in line
    assert output.read_text() == "previous predictions\n" and os.listdir(output.parent) == ["pred.txt"]  # no part, half or whole


def test_fit_on_a_full_disk_stops_and_keeps_the_epoch_before(tiny_encoder, ec_dir, tmp_path, capsys, monkeypatch):
    saves = []
    real = files.os.fsync

    def fsync(fd):  # the second epoch's checkpoints (after best and last of the first) meet a full disk
        if ".ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
            saves.append(fd)
            if len(saves) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    args = tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2")
    code, err = run_main(["fit", *args], capsys)
    assert code == 2, err[-2000:]
    line = one_paragraph(err)
    assert "the disk is full" in line and ".ckpt'" in line and "MB free" in line
    monkeypatch.undo()
    left = glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True)
    assert left and not glob.glob(str(tmp_path / "**" / ".*.tmp"), recursive=True)
    for path in left:  # the first epoch's checkpoints, whole
        check_checkpoint(path)
        assert torch.load(path, weights_only=True, map_location="cpu")["epoch"] == 0


def test_a_damaged_token_cache_is_rebuilt(tiny_encoder, ec_dir, tmp_path):
    from emolightning.data.datamodule import EmotionDataModule

    cache = tmp_path / "cache"
    dm = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=str(cache))
    dm.prepare_data()
    paths = sorted(glob.glob(str(cache / "*")))
    good = {path: open(path, "rb").read() for path in paths}
    for path, data in good.items():  # cut short, as by a node killed while copying it
        open(path, "wb").write(data[: len(data) // 3])
    with pytest.warns(UserWarning, match="damaged"):
        dm.setup("fit")  # what every rank reads
    assert len(dm.splits["train"]) == 96
    dm.prepare_data()
    assert any(open(path, "rb").read() == data for path, data in good.items())  # rewritten whole
    shutil.rmtree(cache)


@pytest.mark.slow  # two processes: ~45 s on 2 shared cores
def test_under_ddp_every_rank_stops_when_rank_zeros_checkpoint_save_fails(tiny_encoder, ec_dir, tmp_path):
    """Rank 0 alone writes checkpoints: when its save of last.ckpt meets a full disk, rank 1 learns of it and stops too."""
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0"]
    args = tiny_args(tiny_encoder, ec_dir, tmp_path, *DDP, *short)
    proc = emolightning("fit", *args, callback_option("FullDiskOnRankZero", file="last.ckpt"), check=False, env=env_with_tests_on_path())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # one paragraph from each rank: rank 1 writes into the same stderr, at the same moment (the lines may interleave)
    messages = proc.stderr.split("emolightning: error: ")[1:]
    assert len(messages) == 2, proc.stderr[-3000:]
    for message in messages:
        assert "last.ckpt'" in message and "the disk is full" in message and "MB free" in message, message
    (best,) = glob.glob(str(tmp_path / "run" / "**" / "best-*.ckpt"), recursive=True)
    check_checkpoint(best)  # the save before the failed one, whole
    assert not glob.glob(str(tmp_path / "run" / "**" / "last.ckpt"), recursive=True)
    assert not glob.glob(str(tmp_path / "run" / "**" / ".*.tmp"), recursive=True)


FOLDER_DAMAGE = {
    "weights cut short": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]), "model.safetensors is cut short"),
    "weights empty": (lambda d: (d / "model.safetensors").write_bytes(b""), "too short for a safetensors file"),
    "weights missing": (lambda d: (d / "model.safetensors").unlink(), "holds no weights"),
    "config missing": (lambda d: (d / "config.json").unlink(), "no config.json"),
    "config cut short": (lambda d: (d / "config.json").write_text('{"model_type": "be'), "config.json is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(FOLDER_DAMAGE))
def test_a_damaged_model_folder_is_named_by_the_encoder_and_the_teacher_loaders(tiny_encoder, tmp_path, case):
    """A model folder (an export, a save_pretrained copy) read as the encoder or a distillation teacher; nothing in it is altered."""
    from emolightning.models.distill import Teacher
    from emolightning.pretrained.encoders import load_encoder

    folder = tmp_path / "model"
    shutil.copytree(tiny_encoder, folder)
    damage, words = FOLDER_DAMAGE[case]
    damage(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for load, option in ((load_encoder, "model.init_args.encoder"), (Teacher, "model.init_args.teacher")):
        with pytest.raises(ConfigError) as caught:
            load(str(folder))
        assert f"'{folder}' (option {option})" in str(caught.value) and words in str(caught.value), str(caught.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_damaged_teacher_checkpoint_is_named(trained_run, tmp_path):
    from emolightning.models.distill import Teacher

    path, words = damaged_checkpoints(trained_run["ckpt"], tmp_path)["truncated"]
    with pytest.raises(ConfigError, match=f"'{path}' \\(option model.init_args.teacher\\).*{words}"):
        Teacher(str(path))


def copied_run(trained_run, tmp_path) -> Path:
    """A copy of conftest's trained run (config, metrics, checkpoints, val_probs.npz), without its report."""
    run = tmp_path / "run"
    shutil.copytree(trained_run["config"].parent, run, ignore=shutil.ignore_patterns("report"))
    return run


RECORD_DAMAGE = {  # file in the run -> (new content, what the message says)
    "metrics.csv": (b"epoch,step\n0,\x00\x00\x00", "not a CSV file of numbers"),
    "config.yaml": (b"model:\n  init_args: {encoder: [\n", "not valid YAML"),
    "hparams.yaml": (b"- just\n- a list\n", "holds a list"),
    "checkpoints/test_scores.json": (b'{"checkpoint": "best-0-2.ckpt", "sco', "not the JSON of test scores"),
    "checkpoints/val_probs.npz": (None, "not a complete .npz archive"),  # None: the file cut in half
}


@pytest.mark.parametrize("record", sorted(RECORD_DAMAGE))
def test_report_of_a_damaged_run_record_names_it_and_alters_nothing(trained_run, tmp_path, capsys, record):
    run = copied_run(trained_run, tmp_path)
    content, words = RECORD_DAMAGE[record]
    path = run / record
    path.write_bytes(content if content is not None else path.read_bytes()[: path.stat().st_size // 2])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = run_main(["report", str(run), "--output", str(tmp_path / "out")], capsys)
    assert code == 2, err[-2000:]
    line = one_paragraph(err)
    assert f"'{path}' cannot be read" in line and words in line, line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("errnum, reason", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_a_report_that_cannot_be_written_keeps_the_previous_one(trained_run, tmp_path, capsys, monkeypatch, errnum, reason):
    run, out = copied_run(trained_run, tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("the previous report\n")
    target = str(out / "report.md")
    monkeypatch.setattr(files.os, "replace", failing(os.replace, errnum, lambda src, dst: str(dst) == target))
    code, err = run_main(["report", str(run), "--output", str(out)], capsys)
    assert code == 2, err[-2000:]
    line = one_paragraph(err)
    assert f"'{target}'" in line and reason in line and "MB" in line, line
    assert (out / "report.md").read_text() == "the previous report\n" and os.listdir(out) == ["report.md"]


def failing_mkdir(errnum: int, prefix: str, real=os.mkdir):
    def mkdir(path, *args, **kwargs):
        if os.path.basename(str(path)).startswith(prefix):
            raise OSError(errnum, os.strerror(errnum))
        return real(path, *args, **kwargs)

    return mkdir


@pytest.mark.parametrize("fault", ["full disk", "read-only"])
def test_an_export_that_cannot_be_written_keeps_the_previous_export(trained_run, tmp_path, capsys, monkeypatch, fault):
    out = tmp_path / "export"
    main(["export", "--ckpt_path", str(trained_run["ckpt"]), "--output", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    if fault == "full disk":  # the weights meet it
        monkeypatch.setattr(files.os, "fsync", failing(os.fsync, errno.ENOSPC, lambda fd: os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors")))
    else:
        monkeypatch.setattr(files.os, "mkdir", failing_mkdir(errno.EROFS, ".export.partial-"))
    code, err = run_main(["export", "--ckpt_path", str(trained_run["ckpt"]), "--output", str(out), "--overwrite"], capsys)
    assert code == 2, err[-2000:]
    line = one_paragraph(err)
    assert f"'{out}'" in line and ("the disk is full" if fault == "full disk" else "read-only") in line and "MB" in line, line
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and sorted(os.listdir(tmp_path)) == ["export"]
    check_model_folder(str(out), "--output")  # still loads


def manifest_writer(trained_run, folder: Path):
    from emolightning.inference import manifest as ens

    labels = torch.load(trained_run["ckpt"], weights_only=True, mmap=True)["hyper_parameters"]["label_names"]
    path = str(folder / "ensemble.json")

    def write(threshold: float) -> None:
        ens.write_manifest(ens.Manifest(path, [ens.Member(str(trained_run["ckpt"]), 1.0, "tiny", 64)], labels, [threshold] * len(labels), "global", 0.5))

    return path, write, lambda: ens.read_manifest(path).thresholds[0]


def val_probs_writer(trained_run, folder: Path):
    from emolightning.training.record import load_val_probs, save_val_probs

    path = str(folder / "val_probs.npz")

    def write(threshold: float) -> None:
        save_val_probs(path, torch.rand(41, 11), torch.zeros(41, 11), torch.full((11,), threshold), [f"l{i}" for i in range(11)], 0, 2)

    return path, write, lambda: float(load_val_probs(path)["thresholds"][0])


WRITERS = {"manifest": manifest_writer, "val_probs": val_probs_writer}
FAULTS = {"full disk": (errno.ENOSPC, "the disk is full"), "read-only": (errno.EROFS, "read-only")}


def inject(monkeypatch, fault: str, final: str) -> None:
    """A full disk when the temporary file of `final` is flushed (fsync), or a read-only folder when it is renamed into place."""
    if fault == "full disk":
        monkeypatch.setattr(files.os, "fsync", full_disk_for(final))
    else:
        monkeypatch.setattr(files.os, "replace", failing(os.replace, errno.EROFS, lambda src, dst: str(dst) == final))


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_file_that_cannot_be_written_leaves_the_previous_one_loadable(trained_run, tmp_path, monkeypatch, writer, fault):
    path, write, read_back = WRITERS[writer](trained_run, tmp_path)
    write(0.25)
    inject(monkeypatch, fault, path)
    with pytest.raises(StorageError) as caught:
        write(0.75)
    message = str(caught.value)
    assert f"'{path}'" in message and FAULTS[fault][1] in message and "MB free" in message and "\n" not in message, message
    monkeypatch.undo()
    assert read_back() == 0.25 and os.listdir(tmp_path) == [os.path.basename(path)]  # the previous file, whole; no temporary file


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_token_cache_that_cannot_be_written_is_absent_not_half(tiny_encoder, ec_dir, tmp_path, monkeypatch, fault):
    from emolightning.data.datamodule import EmotionDataModule

    cache = tmp_path / "cache"
    dm = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=str(cache))
    final = dm._cache_path("train", dm.split_source("train"))
    inject(monkeypatch, fault, final)
    with pytest.raises(StorageError) as caught:
        dm.prepare_data()
    assert f"'{final}'" in str(caught.value) and FAULTS[fault][1] in str(caught.value) and "MB free" in str(caught.value)
    assert os.listdir(cache) == []


@pytest.mark.parametrize("damage", ["empty", "cut short"])
def test_a_damaged_onnx_file_is_named(tmp_path, damage):
    pytest.importorskip("onnxruntime")
    from emolightning.inference.backends import export_onnx, onnx_session

    class Sums(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).float().unsqueeze(-1) * self.scale

    path = export_onnx(Sums(), str(tmp_path / "model.onnx"), "out")
    onnx_session(path)  # the whole file loads
    data = open(path, "rb").read()
    open(path, "wb").write(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(ConfigError, match=f"The ONNX file '{path}' cannot be loaded .*cut short"):
        onnx_session(path)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("name", ["last.ckpt", "best-1-4.ckpt"])
def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_loadable(trained_run, tmp_path, monkeypatch, name, fault):
    """What `fit` saves through AtomicCheckpointIO (last.ckpt rewritten under its name, a best checkpoint beside the earlier one)."""
    previous = tmp_path / "last.ckpt"
    shutil.copy(trained_run["ckpt"], previous)
    checkpoint = torch.load(trained_run["ckpt"], weights_only=True, map_location="cpu")
    path = str(tmp_path / name)
    inject(monkeypatch, fault, path)
    with pytest.raises(StorageError) as caught:
        AtomicCheckpointIO().save_checkpoint({**checkpoint, "epoch": 1}, path)
    message = str(caught.value)
    assert f"'{path}'" in message and FAULTS[fault][1] in message and "MB free" in message, message
    monkeypatch.undo()
    check_checkpoint(str(previous))
    assert previous.read_bytes() == trained_run["ckpt"].read_bytes() and os.listdir(tmp_path) == ["last.ckpt"]


# ---- real faults: a file system that fills, a read-only mount, a process killed inside a save ---------------------------
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs or a read-only bind mount needs root (CI runs the slow set as root)")


@contextmanager
def mounted(target: Path, *mount_args: str):
    """`mount ... target` for the block; unmounted after it, whatever happened (skipped where the machine refuses to mount)."""
    root_only()
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *mount_args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"`mount {' '.join(mount_args)}` failed here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextmanager
def read_only(folder: Path):
    """`folder` itself made read-only for the block (a bind mount of it onto itself, remounted ro), its files kept."""
    with mounted(folder, "--bind", str(folder)):
        done = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"remounting a bind mount read-only failed here: {done.stderr.strip()}")
        yield folder


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # root, and a fit of 2 epochs: ~1 min
def test_fit_onto_a_file_system_that_really_fills_stops_in_one_paragraph_and_keeps_the_epoch_before(tiny_encoder, ec_dir, tmp_path):
    """The run folder is a 16 MB tmpfs; as epoch 1's first checkpoint is saved, a file fills it, leaving 4 KB free.
    torch.save's zip writer then fails with its own RuntimeError ('unexpected pos'), not an OSError."""
    disk = tmp_path / "disk"
    with mounted(disk, "-t", "tmpfs", "-o", "size=16m", "tmpfs"):
        run = disk / "run"
        args = tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2")
        args[args.index("--trainer.default_root_dir") + 1] = str(run)
        proc = emolightning(
            "fit",
            *args,
            callback_option("FillDiskOnSave", epoch=1, folder=str(disk)),
            "--last_checkpoint.keep_after_fit",
            "true",
            check=False,
            env=env_with_tests_on_path(),
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("emolightning: error:")]
        assert "the disk is full" in line and ".ckpt'" in line and str(disk) in line and "MB free there" in line, line
        print(line)  # torch 2.13 on this checkpoint: "(RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...)"
        left = sorted(disk.rglob("*.ckpt"))
        assert left and not list(disk.rglob(".*.tmp")), os.listdir(disk)  # the partial file is gone
        for path in left:  # epoch 0's last.ckpt, and the best checkpoint, whole
            check_checkpoint(str(path))
        (last,) = [p for p in left if p.name == "last.ckpt"]
        assert torch.load(last, weights_only=True)["epoch"] == 0


def test_checkpoint_saves_onto_a_really_full_file_system_are_storage_errors_whatever_torch_raises(trained_run, tmp_path):
    """Saves of a real last.ckpt onto a tmpfs with less free space than it needs, at many fill levels: torch.save fails with an
    OSError (ENOSPC) at some and with its zip writer's RuntimeError ('unexpected pos') at others. Each is one StorageError, the
    partial file is gone, and the previous checkpoint is whole."""
    checkpoint = torch.load(trained_run["last"], weights_only=True, map_location="cpu")
    size = trained_run["last"].stat().st_size
    causes = set()
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", f"size={2 * size + (1 << 20)}", "tmpfs") as disk:
        previous = disk / "last.ckpt"
        shutil.copy(trained_run["last"], previous)
        for leave in range(4096, size - 4096, size // 25):
            free = shutil.disk_usage(disk).free
            (disk / "filler.bin").write_bytes(b"\0" * (free - leave))
            with pytest.raises(StorageError) as caught:
                AtomicCheckpointIO().save_checkpoint({**checkpoint, "epoch": 1}, str(previous))
            message = str(caught.value)
            assert f"'{previous}': the disk is full" in message and "MB free there" in message and "\n" not in message, message
            causes.add(type(caught.value.__cause__).__name__)
            assert sorted(os.listdir(disk)) == ["filler.bin", "last.ckpt"]  # no partial file
            assert previous.read_bytes() == trained_run["last"].read_bytes()
            (disk / "filler.bin").unlink()
    assert "RuntimeError" in causes, causes  # torch.save's own way of meeting a full disk was met (with torch 2.13, at some of the levels)


@pytest.mark.slow  # root, and a fit: ~1 min
def test_fit_with_a_checkpoint_folder_on_a_full_tmpfs_from_the_start_stops_in_one_paragraph(tiny_encoder, ec_dir, tmp_path):
    """A file system too small for even the first checkpoint (a tiny tmpfs of 64 KB), given as checkpoint.dirpath."""
    disk = tmp_path / "disk"
    with mounted(disk, "-t", "tmpfs", "-o", "size=64k", "tmpfs"):
        args = tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")
        proc = emolightning("fit", *args, "--checkpoint.dirpath", str(disk), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("emolightning: error:")]
        assert f"'{disk}/" in line and "the disk is full" in line, line
        left = os.listdir(disk)  # what fitted (val_probs.npz, a few KB, may be written before the checkpoint), whole; nothing half-written
        assert not [n for n in left if n.endswith((".tmp", ".ckpt"))], left


@pytest.mark.slow  # root, and a resumed fit: ~1 min
def test_resuming_into_a_read_only_checkpoint_folder_stops_in_one_paragraph_and_alters_nothing(trained_run, tmp_path):
    """The run's checkpoint folder (best and last.ckpt) became read-only (a read-only bind mount); `fit --ckpt_path RUN` resumes it."""
    run = tmp_path / "copy"
    shutil.copytree(trained_run["config"].parent, run, ignore=shutil.ignore_patterns("report"))
    before = tree(run)
    with read_only(run / "checkpoints"):
        proc = emolightning(
            "fit",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            str(run),
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path / "logs"),
            "--trainer.enable_progress_bar",
            "false",
            check=False,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("emolightning: error:")]
        assert "read-only" in line and f"'{run / 'checkpoints'}/" in line, line
        assert tree(run) == before  # every file as it was, nothing added
    check_checkpoint(str(run / "checkpoints" / "last.ckpt"))


@pytest.mark.slow  # a fit killed inside one of its saves: ~1-2 min
def test_sigkill_inside_a_checkpoint_write_leaves_the_earlier_best_and_last_checkpoints_loadable(tiny_encoder, ec_dir, tmp_path):
    """last.ckpt is saved after every step; once a best checkpoint exists, the fit is killed while the temporary file of a last.ckpt
    save exists: the save had started (the file is there) and not finished (neither renamed nor removed, as it is still there after)."""
    args = tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.max_epochs", "2", "--data.batch_size", "4", "--last_checkpoint.every_n_train_steps", "1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for _ in range(3):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        with open(tmp_path / "stderr", "wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "emolightning", "fit", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            caught = inside_a_save(proc, tmp_path / "run")
        if caught:
            break
    else:
        pytest.fail("in 3 fits, no SIGKILL landed inside a save of last.ckpt")
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()[-3000:]
    folder, partial = caught
    assert partial.exists(), "the temporary file was gone: the kill landed after the save"
    (best,) = folder.glob("best-*.ckpt")
    check_checkpoint(str(best))  # the earlier best, whole
    last = check_checkpoint(str(folder / "last.ckpt"))  # the previous save of last.ckpt, whole
    assert last["global_step"] >= 24 and "optimizer_states" in last
    assert find_last_checkpoint([str(folder)]) == str(folder / "last.ckpt")  # `--ckpt_path last` resumes it, not the part


def inside_a_save(proc: subprocess.Popen, run: Path) -> tuple[Path, Path] | None:
    """SIGKILL `proc` as soon as a temporary file of last.ckpt exists beside a best checkpoint: (checkpoint folder, that file), or
    None if the fit ended first."""
    while proc.poll() is None:
        for folder in run.glob("lightning_logs/version_*/checkpoints"):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            partial = [n for n in names if n.startswith(".last.ckpt.") and n.endswith(".tmp")]
            if partial and any(n.startswith("best-") and n.endswith(".ckpt") for n in names):
                proc.send_signal(signal.SIGKILL)
                return folder, folder / partial[0]
        time.sleep(0.0005)
    return None
