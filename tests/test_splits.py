"""The validation split (sppdet.training.splits), the rules that follow the data (sppdet.data.fit) and the
settings of sppdet train with their sources (sppdet.training.settings)."""

from __future__ import annotations

import numpy as np
import pytest

from sppdet.data.voc import Annotation, VocDataset, read_split, write_annotation, write_split
from sppdet.data.fit import ObjectSizes, fit_pretrain_epochs, fit_proposals, fit_scales
from sppdet.errors import ConfigError, DatasetError
from sppdet.training.splits import carve_validation, recorded_splits, resolve_training_splits
from sppdet.workdir.store import WorkDir
from sppdet.training.settings import read_config_file, resolve_train_settings


def _dataset(root, counts: dict[str, int], splits: dict[str, list[str]] | None = None) -> list[str]:
    """Annotations only: ``counts[name]`` images with one object of class ``name`` each."""
    ids = []
    for name, count in counts.items():
        for index in range(count):
            image_id = f"{name}{index:03d}"
            write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
                image_id=image_id, width=200, height=100, boxes=np.array([[10, 10, 10 + 20 + index, 40]], np.float32),
                names=(name,), difficult=np.zeros(1, bool)))
            ids.append(image_id)
    for split, members in (splits or {"trainval": ids}).items():
        write_split(root, split, members)
    return ids


def test_carving_is_stratified_repeatable_and_order_free(tmp_path):
    ids = _dataset(tmp_path, {"common": 40, "rare": 5, "single": 1})
    val = carve_validation(tmp_path, ids, 0.2, seed=0)
    assert val == carve_validation(tmp_path, list(reversed(ids)), 0.2, seed=0)[::-1]
    assert sum(i.startswith("common") for i in val) == 8 and sum(i.startswith("rare") for i in val) == 1
    assert not any(i.startswith("single") for i in val)  # a class with one image keeps it for training
    assert carve_validation(tmp_path, ids, 0.2, seed=1) != val


def test_a_dataset_without_val_gets_a_recorded_carved_one(tmp_path):
    data, work = tmp_path / "data", WorkDir(tmp_path / "work")
    ids = _dataset(data, {"a": 10, "b": 10}, {"trainval": [], "test": []})
    write_split(data, "trainval", ids)
    write_split(data, "test", ["a000"])
    splits = resolve_training_splits(work, data)
    assert (splits.train, splits.val, splits.final, splits.carved) == ("train", "val", "trainval", True)
    split_dir = work.split_dir(data)
    train, val = read_split(data, "train", split_dir), read_split(data, "val", split_dir)
    assert len(val) == 4 and sorted(train + val) == sorted(ids) and not set(train) & set(val)
    assert VocDataset(data, "val", check_images=False, split_dir=split_dir).image_ids == val
    assert recorded_splits(work) == splits
    assert work.split_dir(tmp_path / "other") is None  # another dataset does not see these files


def test_a_dataset_val_txt_is_used_as_it_is(tmp_path):
    data, work = tmp_path / "data", WorkDir(tmp_path / "work")
    ids = _dataset(data, {"a": 6})
    write_split(data, "val", ids[:2])
    splits = resolve_training_splits(work, data)
    assert (splits.train, splits.val, splits.final, splits.carved) == ("train", "val", "trainval", False)
    assert read_split(data, "train", work.split_dir(data)) == ids[2:]  # trainval less val, written
    with pytest.raises(DatasetError, match="no trainval.txt or train.txt"):
        resolve_training_splits(work, tmp_path / "empty")


def test_data_rules_follow_object_and_image_sizes():
    def sizes(sides, short=400, long=600):
        sides = np.asarray(sides, float)
        return ObjectSizes(sides=sides, min_sides=sides * 0.8, image_short=np.full(len(sides), short),
                           image_long_per_image=np.array([long]), images=1)

    small, large = fit_scales(sizes(np.full(50, 20.0)), 96), fit_scales(sizes(np.full(50, 300.0)), 96)
    assert len(small) == 1 and small[0] == 1200  # 96 * 400 / 20 = 1920, capped at 3 x 400 = 1200
    assert large == (128,)  # 96 * 400 / 300 = 128
    spread = fit_scales(sizes(np.geomspace(16, 200, 200)), 96)
    assert len(spread) == 5 and all(b / a <= 1.55 for a, b in zip(spread, spread[1:]))
    assert len(fit_scales(sizes(np.geomspace(40, 80, 200)), 96)) == 3  # a 2x span: steps <= sqrt(2)
    max_side, min_size = fit_proposals(sizes(np.geomspace(16, 200, 200)))
    assert 256 <= max_side <= 500 and min_size <= 16
    assert fit_pretrain_epochs(sizes(np.full(100, 50.0))) == 32
    assert fit_pretrain_epochs(sizes(np.full(4000, 50.0))) == 4


def test_settings_sources_and_config_file(tmp_path):
    data, work = tmp_path / "data", WorkDir(tmp_path / "work")
    _dataset(data, {"a": 8, "b": 8})
    splits = resolve_training_splits(work, data)
    train = VocDataset(data, splits.train, check_images=False, split_dir=work.split_dir(data))
    settings = resolve_train_settings(data, train, splits)
    sources = dict((name, source) for name, _, source in settings.rows())
    assert sources["extract.scales"].startswith("data:") and sources["pretrain.epochs"].startswith("data:")
    assert settings.candidates["tta"] == [(), ("hflip",)]  # flip declared by default: hflip tried
    turned = resolve_train_settings(data, train, splits, augment=("rot90",))
    assert turned.candidates["tta"] == [(), ("rot180",)] and turned.candidates["augment_positives"][1] == ("rot90",)
    assert settings.candidates["augment_positives"] == [(), ("flip",)]
    both = resolve_train_settings(data, train, splits, augment=("flip", "rot90", "channels"))
    assert both.candidates["augment_positives"] == [(), ("flip", "rot90")]  # every geometric copy declared

    toml = tmp_path / "train.toml"
    toml.write_text('augment = ["flip", "rot90"]\n[pretrain]\nepochs = 2\n[train-svm]\nC = [0.5]\n'
                    '[extract]\nscales = [100]\n[select]\ntta = ["none"]\n')
    values = read_config_file(toml)
    chosen = resolve_train_settings(data, train, splits, values, str(toml))
    assert chosen.pretrain.epochs == 2 and chosen.candidates["C"] == [0.5] and chosen.extract["scales"] == (100,)
    assert chosen.candidates["tta"] == [()] and chosen.sources["pretrain.epochs"] == f"file {toml}"
    # --print-config's TOML reads back to the same settings
    again = tmp_path / "again.toml"
    again.write_text(chosen.to_toml())
    values_of = [(name, value) for name, value, _ in chosen.rows()]
    assert [(name, value) for name, value, _ in
            resolve_train_settings(data, train, splits, read_config_file(again), "x").rows()] == values_of
    for bad, message in (("[pretrain]\nepoch = 3\n", "unknown key 'epoch' in \\[pretrain\\]"),
                         ("colour = 1\n", "unknown key 'colour'"), ("[pretrain\n", "not valid TOML"),
                         ("[pretrain]\nepochs = 'x'\n", "epochs must be a number")):
        toml.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            resolve_train_settings(data, train, splits, read_config_file(toml), str(toml))
