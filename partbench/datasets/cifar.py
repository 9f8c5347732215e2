"""CIFAR-10's python release, read through an unpickler that can only build what it holds.

The batches are pickles: unpickling runs whatever callables a file names. These files name
only numpy's array reconstruction (and, when re-pickled by Python 3, ``_codecs.encode`` for
bytes), so every other global is refused before anything is called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partbench.datasets.base import Dataset, LazySamples, Sample
from partbench.datasets.declaration import real_dataset
from partbench.datasets.fingerprints import fingerprint
from partbench.datasets.layouts import Layout, default_root
from partbench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

SIDE = 32

LAYOUT = Layout(
    dataset="cifar10",
    source="https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz)",
    describe="cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta",
    required=(
        *(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
    ),
    nests=("cifar-10-batches-py", ""),
)

SPLIT_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


@cache
def _allowed() -> dict[tuple[str, str], Any]:
    """The only globals a batch may name."""
    import numpy as np

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, whichever module
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise _Refused(f"refused global '{module}.{name}'") from None


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` admitting only builtin containers and numpy arrays."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    try:
        # The release was pickled by Python 2: its str fields arrive as bytes.
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch: {exc}") from None
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dictionary, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class CIFAR10(Dataset):
    name = "cifar10"
    capabilities = frozenset({"images"})
    splits = {"retrieval": "test", "train": "train", "test": "test"}  # noqa: RUF012 (declared so in Dataset)

    def __init__(self, root: Path | str | None = None):
        self.base = LAYOUT.resolve(default_root(self.name, root))
        meta_path = self.base / "batches.meta"
        meta = safe_unpickle(meta_path)
        names = meta.get("label_names")
        if not isinstance(names, list) or not names:
            raise DataError(f"{meta_path}: no 'label_names' list")
        self.object_classes = tuple(_text(n) for n in names)
        self._loaded: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
        self._fingerprint: str | None = None

    def _batches(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """All of a split's images (N x 32 x 32 x 3), labels and file names; read on first use."""
        import numpy as np

        if split in self._loaded:
            return self._loaded[split]
        images, labels, names = [], [], []
        for filename in SPLIT_FILES[split]:
            path = self.base / filename
            batch = safe_unpickle(path)
            data, batch_labels = batch.get("data"), batch.get("labels")
            if (
                not isinstance(data, np.ndarray)
                or data.dtype != np.uint8
                or data.ndim != 2
                or (data.shape[1] != 3 * SIDE * SIDE)
            ):
                found = getattr(data, "shape", type(data).__name__)
                raise DataError(f"{path}: 'data' must be a uint8 array N x 3072, found {found}")
            if not isinstance(batch_labels, list) or len(batch_labels) != len(data):
                raise DataError(f"{path}: 'labels' must list one label per image ({len(data)})")
            for i, label in enumerate(batch_labels):
                if not isinstance(label, int) or not 0 <= label < len(self.object_classes):
                    raise DataError(
                        f"{path}: labels[{i}] = {label!r} is out of range 0..{len(self.object_classes) - 1}"
                    )
            files = batch.get("filenames")
            batch_names = (
                [_text(f) for f in files]
                if isinstance(files, list) and len(files) == len(data)
                else [f"{filename}[{i}]" for i in range(len(data))]
            )
            # Rows are 1024 red, then 1024 green, then 1024 blue values, row-major.
            images.append(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch_labels, dtype=np.int64))
            names.extend(f"{filename}/{n}" for n in batch_names)
        loaded = (np.concatenate(images), np.concatenate(labels), names)
        self._loaded[split] = loaded
        return loaded

    def samples(self, split: str) -> LazySamples[Sample]:
        if split not in SPLIT_FILES:
            raise KeyError(f"cifar10 has splits {sorted(SPLIT_FILES)}, not '{split}'")
        import numpy as np

        images, labels, names = self._batches(split)
        return LazySamples(
            len(labels),
            lambda i: Sample(image=np.ascontiguousarray(images[i]), key=names[i], label=int(labels[i])),
        )

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            files = [self.base / f for fs in SPLIT_FILES.values() for f in fs]
            files.append(self.base / "batches.meta")
            self._fingerprint = fingerprint(self.base, files, (), self.name)
        return self._fingerprint


def load(root: Path | str | None = None, **options: object) -> CIFAR10:
    if options:
        raise DataError(f"cifar10 takes no options, got {sorted(options)}")
    return CIFAR10(root)


DATASETS = (
    real_dataset(
        "cifar10",
        load,
        capabilities={"images"},
        description="CIFAR-10 python release: 10 classes, 32 px",
        layouts=(LAYOUT,),
        order=90,
        suites={"study": ("object-retrieval", "object-linear")},
    ),
)
