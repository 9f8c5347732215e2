"""Reading images and index-map PNGs from a dataset folder, failing with the file's name.

numpy and PIL are imported by the functions that use them, so that importing a dataset module
(as registering the datasets does) stays light.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from partbench.datasets.base import IGNORE
from partbench.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


def _open(path: Path, context: str) -> Image.Image:
    from PIL import Image

    where = f" ({context})" if context else ""
    if not path.is_file():
        raise DataError(f"{path}: image file is missing{where}")
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning should not pass silently into a run's log.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()  # decode now: a truncated file fails here, not later in a view
        return image
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... on bad data
        raise DataError(f"{path}: unreadable image{where}: {exc}") from None


def load_rgb(path: Path, context: str = "") -> np.ndarray:
    """H x W x 3 uint8. ``context`` says where the file was listed, for the error message."""
    import numpy as np

    image = _open(path, context)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def load_index_map(path: Path, context: str = "") -> np.ndarray:
    """A single-channel label PNG as integers; palette images give their indices."""
    import numpy as np

    image = _open(path, context)
    if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(f"{path}: expected a single-channel index map, found image mode {image.mode}")
    return np.asarray(image).astype(np.int64)


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """The mmseg convention the study used: 0 (background) -> ignore, k -> k - 1, 255 stays."""
    out = labels - 1
    out[labels == 0] = IGNORE
    out[labels == IGNORE] = IGNORE
    return out


def checked_mask(labels: np.ndarray, classes: int, path: Path, shape: tuple[int, int]) -> np.ndarray:
    """uint8 map after the class-range and size checks, which name ``path``."""
    import numpy as np

    if labels.shape != shape:
        raise DataError(
            f"{path}: label map is {labels.shape[1]}x{labels.shape[0]} but its image is {shape[1]}x{shape[0]}"
        )
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= classes))
    if bad.any():
        values = sorted({int(v) for v in np.unique(labels[bad])})[:5]
        raise DataError(
            f"{path}: label values {values} are out of range for {classes} classes "
            f"(after the dataset's label mapping; {IGNORE} is ignore)"
        )
    return labels.astype(np.uint8)
