"""SynParts: deterministic, a shared part vocabulary, consistent annotations; the crop rule."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from partbench.datasets import synparts
from partbench.datasets.base import IGNORE
from partbench.datasets.synparts import OBJECT_CLASSES, PART_TYPES, SynParts, render
from partbench.datasets.views import crop_rule, crop_square, part_crops, resize_for_encoder


def test_vocabulary_is_shared_across_classes():
    assert len(OBJECT_CLASSES) >= 6 and len(PART_TYPES) >= 8
    used = Counter(
        p.part for _, placements in OBJECT_CLASSES.values() for p in {x.part: x for x in placements}.values()
    )
    assert set(used) == set(PART_TYPES)
    assert all(n >= 2 for n in used.values()), used  # every part type in several classes
    signatures = {(*tuple(sorted(p.part for p in pl)), body[0]) for body, pl in OBJECT_CLASSES.values()}
    assert len(signatures) == len(OBJECT_CLASSES)  # classes differ in their parts or body


def test_samples_are_deterministic_and_differ_by_seed_and_split():
    a, b = render(0, "train", 5), render(0, "train", 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.part_mask, b.part_mask)
    assert not np.array_equal(a.image, render(1, "train", 5).image)
    assert not np.array_equal(a.image, render(0, "test", 5).image)
    assert SynParts(seed=0).fingerprint() != SynParts(seed=1).fingerprint()
    assert SynParts(seed=0).fingerprint() == SynParts(seed=0).fingerprint()


def test_every_part_lies_within_its_reach():
    grid = np.linspace(-3, 3, 1201)
    u, v = np.meshgrid(grid, grid)
    r = np.hypot(u, v)
    for part in PART_TYPES:
        mask, _ = synparts._part_shape(part, u, v)
        assert mask.any() and r[mask].max() < synparts.PART_REACH, part


def test_drawing_shapes_on_their_windows_gives_the_whole_grid_image(monkeypatch):
    # The shipped encoders were pretrained on these renders: drawing each shape on its window
    # must leave every pixel, mask and keypoint as drawing it on the whole grid does.
    windowed = [render(0, split, i) for split in ("train", "test", "pretrain") for i in range(0, 120, 3)]
    monkeypatch.setattr(synparts, "_window", lambda x, y, radius, n, ss: (slice(0, n), slice(0, n)))
    whole = [render(0, split, i) for split in ("train", "test", "pretrain") for i in range(0, 120, 3)]
    for a, b in zip(windowed, whole, strict=True):
        assert a.key == b.key and a.label == b.label
        for field in ("image", "part_mask", "object_mask", "keypoints"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (a.key, field)


def test_annotations_agree_with_each_other():
    ds = SynParts(size=96)
    labels = set()
    for s in ds.samples("train")[:40]:
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert s.part_mask.shape == s.object_mask.shape == (96, 96)
        labels.add(s.label)
        obj = s.object_mask != IGNORE
        assert np.array_equal(obj, s.part_mask != IGNORE)  # parts and body make up the object
        assert set(np.unique(s.object_mask[obj])) <= {s.label}
        assert s.part_mask[obj].max() < len(ds.part_seg_classes)
        for part, x, y, vis in s.keypoints:
            if vis:  # a visible keypoint lies on its own part
                assert s.part_mask[int(y), int(x)] == 1 + int(part)
        expected = Counter(p.part for p in OBJECT_CLASSES[ds.object_classes[s.label]][1])
        assert Counter(PART_TYPES[int(k[0])] for k in s.keypoints) == expected
    assert len(labels) >= 5


def test_clutter_and_occlusion_occur():
    samples = [render(0, "train", i) for i in range(60)]
    hidden = sum(int((s.keypoints[:, 3] == 0).sum()) for s in samples)
    assert hidden > 0  # some keypoints are occluded or leave the image
    backgrounds = [s.image[s.object_mask == IGNORE].std() for s in samples]
    assert min(backgrounds) > 5  # backgrounds are not flat


def test_crop_rule_by_hand():
    kps = np.array(
        [
            [0, 100.0, 100.0, 1],
            [1, 160.0, 100.0, 1],  # 60 px from the first: d = 30, r = 15
            [2, 100.0, 180.0, 1],  # 80 px from the first: d = 40, r = 20
            [3, 500.0, 500.0, 0],  # hidden: ignored
            [4, 100.0, 130.0, 0],  # hidden, though near
        ]
    )
    kept = crop_rule(kps, (20, 1000))
    assert kept == [(0, 100.0, 100.0, 15), (1, 160.0, 100.0, 15), (2, 100.0, 180.0, 20)]
    # d = 15 is outside 20 < d: dropped
    close = np.array([[0, 0.0, 0.0, 1], [1, 30.0, 0.0, 1], [2, 300.0, 0.0, 1]])
    assert [k[0] for k in crop_rule(close, (20, 1000))] == [2]
    assert crop_rule(np.array([[0, 5.0, 5.0, 1]]), (20, 1000)) == []  # nothing to measure against


def test_crops_fill_outside_the_image_with_zeros():
    image = np.full((10, 10, 3), 7, np.uint8)
    crop = crop_square(image, 1, 1, 3)  # spans -2..4
    assert crop.shape == (6, 6, 3)
    assert (crop[:2] == 0).all() and (crop[:, :2] == 0).all() and (crop[2:, 2:] == 7).all()
    assert (crop_square(image, 50, 50, 2) == 0).all()


def test_part_crops_come_from_synparts_and_resize():
    ds = SynParts()
    crops = [c for s in ds.samples("test")[:20] for c in part_crops(s, ds.crop_bounds)]
    assert len(crops) >= 40
    assert {p for _, p in crops} <= set(range(len(PART_TYPES)))
    img = crops[0][0]
    assert resize_for_encoder(img, 64, "test").shape == (64, 64, 3)
    assert resize_for_encoder(np.zeros((30, 50, 3), np.uint8), 64, "train").shape == (64, 64, 3)
    with pytest.raises(ValueError):
        resize_for_encoder(img, 64, "random")


def test_dataset_options_are_parsed_and_checked():
    from partbench.datasets.synparts import load
    from partbench.errors import PartbenchError

    data = load(train="12", test="8", seed="3")
    assert data.counts == {"train": 12, "test": 8} and data.seed == 3
    assert len(data.samples("test")) == 8
    with pytest.raises(PartbenchError, match="train='x'"):
        load(train="x")
    with pytest.raises(PartbenchError, match="unknown option trian"):
        load(trian="3")
    with pytest.raises(PartbenchError, match="test=0"):
        load(test="0")


def _fields_equal(a, b) -> bool:
    same = a.key == b.key and a.label == b.label and type(a.label) is type(b.label)
    for field in ("image", "keypoints", "part_mask", "object_mask"):
        x, y = getattr(a, field), getattr(b, field)
        same = same and x.dtype == y.dtype and np.array_equal(x, y)
    return same


def test_prepared_renders_are_the_samples_and_are_read_instead_of_drawn(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path))
    monkeypatch.setattr(synparts, "SAMPLES_PER_PROCESS", 4)
    ds = SynParts(train=7, test=9)
    ds.prepare(workers=2)  # two processes, each drawing part of each split
    paths = {split: ds.renders_path(split) for split in ("train", "test")}
    assert all(p.is_file() for p in paths.values())
    stamps = {split: p.stat().st_mtime_ns for split, p in paths.items()}
    ds.prepare(workers=2)  # already there: nothing drawn or written again
    assert {split: p.stat().st_mtime_ns for split, p in paths.items()} == stamps

    expected = {split: [render(0, split, i) for i in range(n)] for split, n in (("train", 7), ("test", 9))}

    def no_drawing(*args, **kwargs):
        raise AssertionError("a prepared sample was drawn again")

    monkeypatch.setattr(synparts, "render", no_drawing)
    fresh = SynParts(train=7, test=9)  # another process's view of the same data
    for split, samples in expected.items():
        assert all(_fields_equal(a, b) for a, b in zip(fresh.samples(split), samples, strict=True))


def test_damaged_renders_are_named_and_drawn_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path))
    ds = SynParts(train=3, test=2)
    ds.prepare()
    path = ds.renders_path("test")
    path.write_bytes(path.read_bytes()[:100])  # cut short
    with pytest.warns(UserWarning, match=str(path.name)):
        got = SynParts(train=3, test=2).samples("test")[1]
    assert _fields_equal(got, render(0, "test", 1))
