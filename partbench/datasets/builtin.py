"""The built-in datasets, registered through the same hook as any plugin's.

They are not listed here: :func:`declared` collects the declarations of the dataset modules
of this package (see the package docstring), so adding a dataset edits no table.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from functools import cache
from importlib import import_module

from partbench.datasets.declaration import Declaration
from partbench.hookspecs import hookimpl
from partbench.specs import DatasetSpec

PACKAGE = "partbench.datasets"
# The modules of the package that hold no dataset. Every other module is a dataset module and
# must declare DATASETS: a module forgotten here fails registration by name, rather than
# slowing every command down with what it imports (views.py imports numpy and PIL).
MACHINERY = frozenset(
    {
        "base",
        "builtin",
        "declaration",
        "fetch",
        "fingerprints",
        "image_files",
        "layouts",
        "pairs",
        "text_tables",
        "views",
    }
)


@cache
def _declarations() -> tuple[Declaration, ...]:
    found: dict[str, tuple[str, Declaration]] = {}
    for info in pkgutil.iter_modules(import_module(PACKAGE).__path__):
        if info.name in MACHINERY:
            continue
        module = f"{PACKAGE}.{info.name}"
        declarations = getattr(import_module(module), "DATASETS", None)
        if not declarations:
            raise TypeError(
                f"{module} declares no DATASETS; a module of {PACKAGE} that holds no dataset "
                f"belongs in {__name__}.MACHINERY"
            )
        for declaration in declarations:
            if not isinstance(declaration, Declaration):
                raise TypeError(f"{module}.DATASETS holds {declaration!r}, not a Declaration")
            if declaration.name in found:
                raise ValueError(
                    f"dataset '{declaration.name}' is declared by both {found[declaration.name][0]} "
                    f"and {module}"
                )
            found[declaration.name] = (module, declaration)
    return tuple(sorted((d for _, d in found.values()), key=lambda d: (d.order, d.name)))


def declared() -> dict[str, Declaration]:
    """Every built-in dataset's declaration, by name, in listing order."""
    return {d.name: d for d in _declarations()}


@hookimpl
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    for declaration in _declarations():
        register(declaration.spec)
