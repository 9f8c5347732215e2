"""SynParts: procedural objects built from a shared vocabulary of parts.

A part type is recognisable by its local shape and texture and occurs in several object
classes; object classes differ in body shape and in which parts they have and where. Each
image has a random position, scale, rotation and palette, background clutter and sometimes
an occluder. Everything is a pure function of (seed, split, index), so item i can be built
on its own and the data never needs a download.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from partbench.datasets.base import IGNORE, Dataset, LazySamples, Sample
from partbench.datasets.declaration import Declaration
from partbench.errors import PartbenchError
from partbench.specs import DatasetSpec

if TYPE_CHECKING:  # the functions import numpy: registering the dataset imports this module
    import numpy as np

    from partbench.datasets.pairs import KeypointPair

VERSION = 1  # bump when rendering changes; it enters the fingerprint

PART_TYPES = ("eye", "wheel", "wing", "leg", "tail", "horn", "fin", "antenna", "shell")


@dataclass(frozen=True)
class Placement:
    part: str
    x: float  # anchor in body units, object frame
    y: float
    angle: float  # degrees, part frame relative to the object
    size: float = 0.42  # part radius in body units


# Body: (shape, half-width, half-height) in body units. Anchors sit on or just off the body.
OBJECT_CLASSES: dict[str, tuple[tuple[str, float, float], tuple[Placement, ...]]] = {
    "bird": (
        ("ellipse", 1.0, 0.6),
        (
            Placement("eye", 0.65, -0.2, 0, 0.3),
            Placement("wing", -0.1, -0.75, -90),
            Placement("leg", 0.35, 0.95, 90),
            Placement("tail", -1.35, 0.0, 180),
        ),
    ),
    "car": (
        ("rect", 1.1, 0.55),
        (
            Placement("wheel", -0.7, 0.75, 0),
            Placement("wheel", 0.7, 0.75, 0),
            Placement("eye", 1.0, -0.1, 0, 0.28),
            Placement("antenna", -0.6, -0.95, -90),
        ),
    ),
    "fish": (
        ("ellipse", 1.0, 0.5),
        (
            Placement("eye", 0.6, -0.1, 0, 0.28),
            Placement("fin", 0.0, -0.75, 0),
            Placement("tail", -1.35, 0.0, 180),
            Placement("fin", 0.1, 0.75, 180),
        ),
    ),
    "robot": (
        ("rect", 0.7, 0.9),
        (
            Placement("antenna", 0.0, -1.3, -90),
            Placement("shell", 0.0, 0.0, 0, 0.45),
            Placement("wheel", 0.0, 1.3, 0),
            Placement("leg", -1.1, 0.2, 180),
        ),
    ),
    "dragon": (
        ("ellipse", 1.0, 0.55),
        (
            Placement("wing", 0.0, -0.8, -90),
            Placement("horn", 1.2, -0.35, -30),
            Placement("tail", -1.35, 0.1, 180),
            Placement("leg", 0.4, 0.95, 90),
        ),
    ),
    "snail": (
        ("ellipse", 1.1, 0.4),
        (
            Placement("shell", -0.2, -0.8, 0, 0.5),
            Placement("antenna", 1.1, -0.7, -60),
            Placement("eye", 0.85, 0.0, 0, 0.26),
        ),
    ),
    "plane": (
        ("rect", 1.3, 0.3),
        (
            Placement("wing", 0.1, -0.75, -90),
            Placement("wing", 0.1, 0.75, 90),
            Placement("fin", -1.3, -0.5, 0),
            Placement("horn", 1.55, 0.0, 0),
        ),
    ),
    "rhino": (
        ("ellipse", 1.0, 0.65),
        (
            Placement("horn", 1.25, -0.3, -20),
            Placement("leg", -0.5, 1.0, 90),
            Placement("leg", 0.5, 1.0, 90),
            Placement("tail", -1.3, -0.2, 190),
        ),
    ),
}


def _part_shape(part: str, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage mask and texture (0..1) of a part in its own frame (radius about 1)."""
    import numpy as np

    r = np.hypot(u, v)
    a = np.arctan2(v, u)
    if part == "eye":
        return r < 1, np.where(r < 0.45, 0.0, np.where(r < 0.7, 0.55, 1.0))
    if part == "wheel":
        ring = (r < 1) & (r > 0.62)
        spokes = (r <= 0.62) & (np.abs(np.sin(3 * a)) < 0.3)
        hub = r < 0.2
        return ring | spokes | hub, np.where(ring, 0.15, 0.9)
    if part == "wing":  # triangle pointing along +u, with bands across it
        m = (u > -0.9) & (u < 1.0) & (np.abs(v) < 0.75 * (1.0 - u) / 1.9 + 0.05)
        return m, (np.sin(9 * u) > 0).astype(float)
    if part == "leg":
        m = (np.abs(v) < 0.28) & (np.abs(u) < 1.0)
        return m, (np.sin(11 * u) > 0).astype(float) * 0.8 + 0.1
    if part == "tail":  # a wavy band
        m = (np.abs(v - 0.35 * np.sin(3.5 * u)) < 0.22) & (np.abs(u) < 1.0)
        return m, np.clip((u + 1) / 2, 0, 1)
    if part == "horn":  # a cone pointing along +u, ringed
        m = (u > -0.9) & (u < 1.0) & (np.abs(v) < 0.45 * (1.0 - u) / 1.9)
        return m, (np.sin(14 * u) > 0).astype(float) * 0.6 + 0.3
    if part == "fin":  # a half disc with a fan of rays
        m = (r < 1) & (v < 0)
        return m, (np.sin(10 * a) > 0).astype(float) * 0.7 + 0.2
    if part == "antenna":  # a stalk with a ball
        stalk = (np.abs(v) < 0.1) & (u > -1.0) & (u < 0.4)
        ball = np.hypot(u - 0.62, v) < 0.36
        return stalk | ball, np.where(ball, 1.0, 0.3)
    if part == "shell":  # a spiral
        m = r < 1
        return m, (np.sin(2.5 * a + 9 * r) > 0).astype(float) * 0.8 + 0.1
    raise ValueError(part)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import numpy as np

    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _rot(u: np.ndarray, v: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return c * u + s * v, -s * u + c * v


# Every part's coverage lies within this radius of its frame's origin (the wing's tip reaches
# 1.21); tests/test_synparts.py checks it for every part type.
PART_REACH = 1.25


def _window(x: float, y: float, radius: float, n: int, ss: int) -> tuple[slice, slice]:
    """The rows and columns of the supersampled grid whose pixel centres lie within
    ``radius`` image pixels of (x, y) along each axis, with a sample to spare. Shapes are
    drawn on their window only: the same per-pixel arithmetic as on the whole grid, so the
    same image, at a fraction of the cost (a part covers about 2% of the frame)."""
    import numpy as np

    def span(c: float) -> slice:
        lo = int(np.floor((c - radius) * ss)) - 1
        hi = int(np.ceil((c + radius) * ss)) + 2
        return slice(max(lo, 0), max(min(hi, n), 0))

    return span(y), span(x)


def _key(split: str, index: int) -> str:
    return f"synparts/{split}/{index}"


def render(seed: int, split: str, index: int, size: int = 96) -> Sample:
    """Build one SynParts sample. Pure: the same arguments always give the same sample."""
    import numpy as np

    split_id = {"train": 0, "test": 1}.get(split, 2)
    rng = np.random.default_rng([seed, split_id, index])
    names = list(OBJECT_CLASSES)
    label = int(rng.integers(len(names)))
    (body, bw, bh), placements = OBJECT_CLASSES[names[label]]

    ss = 2  # render at twice the size and average down for smooth edges
    n = size * ss
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) / ss + 0.5 / ss

    # Background: a smooth gradient plus clutter that shares no shape with any part.
    c0, c1 = (
        _hsv(rng.random(), 0.3 * rng.random(), 0.3 + 0.5 * rng.random()),
        _hsv(rng.random(), 0.3 * rng.random(), 0.3 + 0.5 * rng.random()),
    )
    g = (xx * np.cos(rng.random() * 6.3) + yy * np.sin(rng.random() * 6.3)) / size
    f = g[..., None] % 1
    img = c0 * (1 - f) + c1 * f
    for _ in range(int(rng.integers(3, 8))):
        col = _hsv(rng.random(), 0.5 * rng.random(), rng.random())
        cx, cy = rng.random(2) * size
        if rng.random() < 0.5:  # a blurry blob
            rad = size * (0.03 + 0.08 * rng.random())
            win = _window(cx, cy, rad, n, ss)
            m = np.hypot(xx[win] - cx, yy[win] - cy) < rad
        else:  # a thin line segment
            ang = rng.random() * np.pi
            win = _window(cx, cy, size * 0.2, n, ss)
            dx, dy = xx[win] - cx, yy[win] - cy
            d = np.abs(dx * np.sin(ang) - dy * np.cos(ang))
            along = np.abs(dx * np.cos(ang) + dy * np.sin(ang))
            m = (d < size * 0.012) & (along < size * 0.2)
        img[win][m] = col
    part_map = np.zeros((n, n), np.int64)  # 0 background, 1 body, 2.. parts
    obj = np.zeros((n, n), bool)

    # Object frame: centre, scale (pixels per body unit), rotation, mirror.
    scale = size * (0.2 + 0.06 * rng.random())
    ext = 1.75 * scale
    cx = rng.uniform(ext * 0.8, size - ext * 0.8)
    cy = rng.uniform(ext * 0.8, size - ext * 0.8)
    theta = rng.uniform(-35, 35) + (180 if rng.random() < 0.5 else 0)
    ou, ov = _rot((xx - cx) / scale, (yy - cy) / scale, theta)

    body_col = _hsv(rng.random(), 0.3 + 0.5 * rng.random(), 0.4 + 0.5 * rng.random())
    bm = (
        ((ou / bw) ** 2 + (ov / bh) ** 2 < 1)
        if body == "ellipse"
        else ((np.abs(ou) < bw) & (np.abs(ov) < bh))
    )
    img[bm] = body_col * (0.85 + 0.15 * np.clip(ov[bm] / bh, -1, 1))[:, None]
    part_map[bm], obj[bm] = 1, True

    keypoints = []
    c, s = np.cos(np.radians(theta)), np.sin(np.radians(theta))
    for pl in placements:
        size_jit = pl.size * (0.9 + 0.2 * rng.random())
        # The anchor, mapped back from the object frame to pixels.
        kx = cx + scale * (c * pl.x - s * pl.y)
        ky = cy + scale * (s * pl.x + c * pl.y)
        win = _window(kx, ky, PART_REACH * size_jit * scale, n, ss)
        angle = pl.angle + rng.uniform(-12, 12)
        pu, pv = _rot((ou[win] - pl.x) / size_jit, (ov[win] - pl.y) / size_jit, angle)
        m, tex = _part_shape(pl.part, pu, pv)
        hue = rng.random()
        lo, hi = _hsv(hue, 0.7, 0.25 + 0.2 * rng.random()), _hsv((hue + 0.1) % 1, 0.5, 0.95)
        img[win][m] = lo * (1 - tex[m, None]) + hi * tex[m, None]
        part_map[win][m], obj[win][m] = 2 + PART_TYPES.index(pl.part), True
        keypoints.append([PART_TYPES.index(pl.part), kx, ky, 1.0])

    if rng.random() < 0.35:  # an occluder over part of the object
        ox, oy = cx + rng.uniform(-1, 1) * ext, cy + rng.uniform(-1, 1) * ext
        hw, hh = size * rng.uniform(0.08, 0.18, 2)
        m = (np.abs(xx - ox) < hw) & (np.abs(yy - oy) < hh)
        img[m] = _hsv(rng.random(), 0.2, 0.2 + 0.6 * rng.random())
        part_map[m], obj[m] = 0, False

    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    part_small = part_map[ss // 2 :: ss, ss // 2 :: ss]
    obj_small = obj[ss // 2 :: ss, ss // 2 :: ss]
    kps = np.array(keypoints, dtype=np.float64)
    for k in kps:  # visible when inside the image and showing the part it marks
        xi, yi = int(k[1]), int(k[2])
        inside = 0 <= xi < size and 0 <= yi < size
        k[3] = float(inside and part_small[yi, xi] == 2 + int(k[0]))
    # reduce-zero-label, as for the study's segmentation sets: background is ignored.
    part_mask = np.where(part_small == 0, IGNORE, part_small - 1)
    object_mask = np.where(obj_small, label, IGNORE)
    return Sample(
        image=(img * 255 + 0.5).astype(np.uint8),
        key=_key(split, index),
        label=label,
        keypoints=kps,
        part_mask=part_mask.astype(np.uint8),
        object_mask=object_mask.astype(np.uint8),
    )


@dataclass
class Renders:
    """A run of consecutive samples of one split as arrays: what ``SynParts.prepare`` stores."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    keypoints: np.ndarray  # (N, K, 4) float64, rows past a sample's count are zero
    keypoint_counts: np.ndarray  # (N,) int64
    part_masks: np.ndarray  # (N, S, S) uint8
    object_masks: np.ndarray  # (N, S, S) uint8

    @classmethod
    def of(cls, samples: list[Sample]) -> Renders:
        import numpy as np

        most = max(len(s.keypoints) for s in samples)
        keypoints = np.zeros((len(samples), most, 4))
        for i, s in enumerate(samples):
            keypoints[i, : len(s.keypoints)] = s.keypoints
        return cls(
            np.stack([s.image for s in samples]),
            np.array([s.label for s in samples], dtype=np.int64),
            keypoints,
            np.array([len(s.keypoints) for s in samples], dtype=np.int64),
            np.stack([s.part_mask for s in samples]),
            np.stack([s.object_mask for s in samples]),
        )

    @classmethod
    def join(cls, parts: list[Renders]) -> Renders:
        import numpy as np

        most = max(p.keypoints.shape[1] for p in parts)
        padded = [np.pad(p.keypoints, ((0, 0), (0, most - p.keypoints.shape[1]), (0, 0))) for p in parts]
        fields = [f for f in cls.__dataclass_fields__ if f != "keypoints"]
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
        return cls(keypoints=np.concatenate(padded), **joined)

    def sample(self, split: str, index: int) -> Sample:
        return Sample(
            image=self.images[index],
            key=_key(split, index),
            label=int(self.labels[index]),
            keypoints=self.keypoints[index, : self.keypoint_counts[index]].copy(),
            part_mask=self.part_masks[index],
            object_mask=self.object_masks[index],
        )

    def digest(self) -> str:
        """BLAKE2b over every field's dtype, shape and bytes."""
        import numpy as np

        h = hashlib.blake2b(digest_size=16)
        for k in self.__dataclass_fields__:
            a = np.ascontiguousarray(getattr(self, k))
            h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    def save(self, path: Path, params: Mapping[str, object]) -> None:
        """Keep the renders with the parameters they were drawn with and their digest, which
        ``load`` checks: a file of another seed or size under this one's name is drawn again."""
        import numpy as np

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        record = json.dumps({"params": dict(params), "digest": self.digest()}, sort_keys=True)
        with tmp.open("wb") as f:
            np.savez(f, record=np.array(record), **{k: getattr(self, k) for k in self.__dataclass_fields__})
        tmp.replace(path)  # whole or not at all: a reader never sees half a file

    @classmethod
    def load(
        cls, path: Path, n: int, size: int, params: Mapping[str, object] | None = None
    ) -> Renders | None:
        """The renders at ``path``, or None when there are none, or they are not ``n`` samples
        of ``size`` pixels drawn with ``params``, or do not match their digest (then the samples
        are drawn again, with a warning naming the file)."""
        import numpy as np

        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                found = cls(**{k: z[k] for k in cls.__dataclass_fields__})
                record = json.loads(str(z["record"])) if "record" in z.files else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            warnings.warn(f"{path}: unreadable SynParts renders ({e}); drawing them again", stacklevel=2)
            return None
        if found.images.shape != (n, size, size, 3) or len(found.labels) != n:
            why = f"holds images of shape {found.images.shape}, expected ({n}, {size}, {size}, 3)"
        elif not isinstance(record, dict) or "digest" not in record:
            why = "records no parameters or digest"
        elif params is not None and record.get("params") != json.loads(json.dumps(dict(params))):
            why = f"was drawn with {record.get('params')}, not {dict(params)}"
        elif record["digest"] != found.digest():
            why = "does not match its recorded digest"
        else:
            return found
        warnings.warn(f"{path}: {why}; drawing the samples again", stacklevel=2)
        return None


def _kept_as(path: Path, params: Mapping[str, object]) -> bool:
    """Whether ``path`` records renders drawn with ``params`` (its arrays are not read)."""
    import numpy as np

    try:
        with np.load(path) as z:
            record = json.loads(str(z["record"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
    return isinstance(record, dict) and record.get("params") == json.loads(json.dumps(dict(params)))


def _render_range(seed: int, split: str, lo: int, hi: int, size: int) -> Renders:
    return Renders.of([render(seed, split, i, size) for i in range(lo, hi)])


def render_params(seed: int, split: str, n: int, size: int) -> dict[str, object]:
    """What a file of renders must have been drawn with to stand for these samples."""
    return {"version": VERSION, "seed": seed, "split": split, "n": n, "size": size}


def renders_path(seed: int, split: str, n: int, size: int) -> Path:
    """Where the first ``n`` samples of ``split`` are kept once drawn, in PARTBENCH_HOME/cache."""
    from partbench import paths

    return paths.home() / "cache" / f"synparts-v{VERSION}-{seed}-{split}-{size}px-{n}.npz"


def kept_renders() -> list[Path]:
    """Every SynParts render file in PARTBENCH_HOME/cache, those of other seeds, sizes and
    earlier versions' names included: all of them can be drawn again."""
    from partbench import paths

    folder = paths.home() / "cache"
    return sorted(folder.glob("synparts-*.npz")) if folder.is_dir() else []


SAMPLES_PER_PROCESS = 200  # 40 samples: 0.45 s in one process, 0.50 s in two (2-core CPU)


def draw(seed: int, counts: Mapping[str, int], size: int = 96, workers: int = 1) -> dict[str, Renders]:
    """The first ``counts[split]`` samples of each split, ``workers`` processes drawing spans
    of each (at 13 ms an image, the benchmark's 2,600 take 35 s on one core). The processes
    are spawned, so a script that calls this with ``workers > 1`` needs its
    ``if __name__ == "__main__":`` guard, as for any multiprocessing pool."""
    # A spawned process costs about half a second before it draws (its imports): fewer
    # samples than this a process are drawn sooner by fewer processes.
    workers = min(workers, -(-sum(counts.values()) // SAMPLES_PER_PROCESS))
    if workers <= 1:
        return {split: _render_range(seed, split, 0, n, size) for split, n in counts.items()}
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    jobs = []  # (split, first, stop): each split cut into one span per worker
    for split, n in counts.items():
        per = max(1, -(-n // workers))
        jobs += [(split, lo, min(lo + per, n)) for lo in range(0, n, per)]
    # spawn, not fork: the caller may hold torch's threads, which a forked child inherits
    # in whatever state they were.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_render_range, seed, s, lo, hi, size) for s, lo, hi in jobs]
        parts = [f.result() for f in futures]
    return {
        split: Renders.join([part for (s, _, _), part in zip(jobs, parts, strict=True) if s == split])
        for split in counts
    }


def load_or_draw(
    seed: int, counts: Mapping[str, int], size: int = 96, workers: int = 1
) -> dict[str, Renders]:
    """``draw``'s renders, read from PARTBENCH_HOME/cache where they were kept and drawn (then
    kept) where not: pretraining and every process of a study share one copy."""
    kept: dict[str, Renders] = {}
    missing: dict[str, int] = {}
    for split, n in counts.items():
        renders = Renders.load(
            renders_path(seed, split, n, size), n, size, render_params(seed, split, n, size)
        )
        if renders is None:
            missing[split] = n
        else:
            kept[split] = renders
    if missing:
        for split, renders in draw(seed, missing, size, workers).items():
            n = counts[split]
            renders.save(renders_path(seed, split, n, size), render_params(seed, split, n, size))
            kept[split] = renders
    return {split: kept[split] for split in counts}


class SynParts(Dataset):
    name = "synparts"
    capabilities = frozenset({"images", "keypoints", "part-masks", "object-masks", "keypoint-pairs"})
    object_classes = tuple(OBJECT_CLASSES)
    part_classes = PART_TYPES
    part_seg_classes = ("body", *PART_TYPES)
    object_seg_classes = tuple(OBJECT_CLASSES)
    splits: ClassVar[Mapping[str, str]] = {"retrieval": "test", "train": "train", "test": "test"}

    def __init__(self, seed: int = 0, size: int = 96, train: int = 1000, test: int = 1600):
        self.seed, self.size = seed, size
        self.counts = {"train": train, "test": test}
        # The study's 20 < d < 1000 px bounds are for images about 500 px wide.
        self.crop_bounds = (20.0 * size / 500, 1000.0 * size / 500)
        self._cache: dict[tuple[str, int], Sample] = {}  # several views read each image
        self._renders: dict[str, Renders | None] = {}  # prepare()'s, once looked for

    def _get(self, split: str, index: int) -> Sample:
        key = (split, index)
        if key not in self._cache:
            if split not in self._renders:
                n = self.counts[split]
                params = render_params(self.seed, split, n, self.size)
                self._renders[split] = Renders.load(self.renders_path(split), n, self.size, params)
            renders = self._renders[split]
            if renders is not None:
                self._cache[key] = renders.sample(split, index)
            else:
                self._cache[key] = render(self.seed, split, index, self.size)
        return self._cache[key]

    def renders_path(self, split: str) -> Path:
        return renders_path(self.seed, split, self.counts[split], self.size)

    def prepare(self, workers: int = 1) -> None:
        """Keep both splits' renders in PARTBENCH_HOME/cache, unless they are there: each of a
        study's lanes drew all 2,600 itself before its first encoder could start. A kept file
        that is not these samples (another seed's, or changed) is drawn again and replaced.
        Once they are held, a second call does nothing."""
        if all(self._renders.get(split) is not None for split in self.counts):
            return
        self._renders.update(load_or_draw(self.seed, self.counts, self.size, workers))

    def prepare_bytes(self) -> int:
        """The arrays ``prepare`` would keep for each split not yet kept under these
        parameters (a kept file's record is read, not its arrays), keypoints padded to the most
        parts a class places (four: only a split of snails alone pads to fewer). The file adds
        a few kilobytes of headers."""
        most = max(len(placements) for _, placements in OBJECT_CLASSES.values())
        per_sample = self.size * self.size * (3 + 1 + 1) + 8 + 8 + most * 4 * 8
        return sum(
            n * per_sample
            for split, n in self.counts.items()
            if self._renders.get(split) is None
            and not _kept_as(self.renders_path(split), render_params(self.seed, split, n, self.size))
        )

    def samples(self, split: str) -> LazySamples[Sample]:
        if split not in self.counts:
            raise KeyError(f"synparts has splits {sorted(self.counts)}, not '{split}'")
        return LazySamples(self.counts[split], lambda i: self._get(split, i))

    def keypoint_pairs(self, split: str, within: int | None = None) -> list[KeypointPair]:
        """Same-class pairs (pairs.same_class_pairs); the target box is the object's extent in
        its object mask. Placements a class shares (a car's two wheels) stay apart: keypoints
        correspond by position."""
        from partbench.datasets.pairs import ImageKeypoints, mask_box, same_class_pairs

        images = [
            ImageKeypoints(int(s.label), s.keypoints, (self.size, self.size), mask_box(s.object_mask, IGNORE))
            for s in self.samples(split)[:within]
        ]
        return same_class_pairs(images)

    def fingerprint(self) -> str:
        config = {"version": VERSION, "seed": self.seed, "size": self.size, **self.counts}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def load(root: Path | None = None, **options: object) -> SynParts:
    """``--dataset-option train=N`` (and seed=, size=, test=) arrive as strings."""
    known = ("seed", "size", "train", "test")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PartbenchError(f"synparts: unknown option {', '.join(unknown)}; known: {', '.join(known)}")
    values = {}
    for key, value in options.items():
        try:
            values[key] = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise PartbenchError(f"synparts: option {key}={value!r} is not a whole number") from None
        if values[key] < (0 if key == "seed" else 1):
            raise PartbenchError(f"synparts: option {key}={value} is out of range")
    return SynParts(**values)


DATASETS = (
    Declaration(
        spec=DatasetSpec(
            name="synparts",
            load=load,
            capabilities=frozenset({"images", "keypoints", "part-masks", "object-masks", "keypoint-pairs"}),
            description="procedural objects from 9 shared part types, 8 classes, 96 px",
            source="generated by partbench from a seed",
            builtin_data=True,
        ),
        order=0,
        suites={
            "synparts": (
                "part-retrieval",
                "part-linear",
                "part-attentive",
                "part-seg",
                "object-retrieval",
                "object-linear",
                "object-seg",
                "part-correspondence",
                "part-seg-nn",
                "object-seg-nn",
                "part-discovery",
            )
        },
    ),
)
