"""A real dataset's published on-disk layout: what must exist, and where it comes from.

Each dataset module declares its own layouts (see declaration.py); this module holds how a
layout is checked and found. Pure pathlib, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from partbench.errors import DataError


@dataclass(frozen=True)
class Layout:
    dataset: str
    source: str  # where the data is published
    describe: str  # the expected layout, for error messages
    # Paths relative to the dataset folder; "a|b" accepts either spelling.
    required: tuple[str, ...]
    # Sub-folders the dataset folder may sit in under the root a user names, because the
    # published archives unpack into one (CUB_200_2011/, cifar-10-batches-py/, ...).
    nests: tuple[str, ...] = ("",)

    def find(self, base: Path, entry: str) -> Path | None:
        for alternative in entry.split("|"):
            if (base / alternative).exists():
                return base / alternative
        return None

    def missing(self, base: Path) -> list[str]:
        return [entry for entry in self.required if self.find(base, entry) is None]

    def candidates(self, root: Path) -> list[Path]:
        return [root / nest if nest else root for nest in self.nests]

    def present(self, root: Path | None) -> bool:
        if root is None:
            return False
        return any(not self.missing(base) for base in self.candidates(Path(root)))

    def resolve(self, root: Path) -> Path:
        """The folder holding the dataset under ``root``, or a DataError naming what is missing."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"{self.dataset}: folder {root} does not exist. Expected layout: {self.describe}. "
                f"Published at {self.source}"
            )
        best: tuple[int, Path, list[str]] | None = None
        for base in self.candidates(root):
            missing = self.missing(base)
            if not missing:
                return base
            found = len(self.required) - len(missing)
            if best is None or found > best[0]:
                best = (found, base, missing)
        assert best is not None
        _, base, missing = best
        names = ", ".join(str(base / m.split("|")[0]) for m in missing)
        raise DataError(
            f"{self.dataset}: incomplete folder {root}: missing {names}. "
            f"Expected layout: {self.describe}. Published at {self.source}"
        )


def present(layouts: tuple[Layout, ...], root: Path | None) -> bool:
    """Whether one of ``layouts`` is complete under ``root`` (default: the dataset's data folder)."""
    if root is None:
        from partbench.paths import data_root

        root = data_root(layouts[0].dataset)
    return any(layout.present(root) for layout in layouts)


def resolve_any(layouts: tuple[Layout, ...], root: Path) -> tuple[Layout, Path]:
    """The first of several accepted layouts found complete; else the first one's error."""
    for layout in layouts:
        if layout.present(root):
            return layout, layout.resolve(root)
    layouts[0].resolve(root)  # raises, naming what is missing
    raise AssertionError("unreachable")


def default_root(name: str, root: Path | str | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    from partbench.paths import data_root

    return data_root(name)
