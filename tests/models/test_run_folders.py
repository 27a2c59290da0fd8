"""A run folder stands for its best checkpoint (`best_checkpoint_of_run`): files laid out as `emolightning fit` lays them."""

from __future__ import annotations

import os

import pytest

from emolightning.errors import ConfigError
from emolightning.models.checkpoints import best_checkpoint_of_run, checkpoint_path


def touch(path, mtime: float | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_each_folder_a_user_may_name_leads_to_the_one_best_checkpoint(tmp_path):
    version = tmp_path / "root" / "lightning_logs" / "version_0"
    best = touch(version / "checkpoints" / "best-2-45.ckpt")
    touch(version / "checkpoints" / "last.ckpt")
    for folder in (tmp_path / "root", version, version / "checkpoints"):
        assert best_checkpoint_of_run(folder) == str(best)
    assert checkpoint_path(str(best)) == str(best)  # a file is itself
    assert checkpoint_path(str(version)) == str(best)


def test_an_older_best_left_beside_a_newer_one_gives_the_newer(tmp_path):
    folder = tmp_path / "checkpoints"
    touch(folder / "best-0-15.ckpt", mtime=1_000_000)
    newer = touch(folder / "best-2-45.ckpt", mtime=2_000_000)
    assert best_checkpoint_of_run(tmp_path) == str(newer)


def test_several_runs_under_one_root_are_named_not_guessed(tmp_path):
    for version in ("version_0", "version_1"):
        touch(tmp_path / "lightning_logs" / version / "checkpoints" / "best-1-10.ckpt")
    with pytest.raises(ConfigError, match=r"(?s)2 runs.*version_0.*version_1.*Name one of them"):
        best_checkpoint_of_run(tmp_path, "model.init_args.teacher")


def test_a_folder_without_a_best_checkpoint_says_so_with_the_option(tmp_path):
    touch(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"(?s)'.*' \(option model.init_args.teacher\) holds no best checkpoint"):
        best_checkpoint_of_run(tmp_path, "model.init_args.teacher")
