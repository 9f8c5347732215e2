"""Datasets: one interface for the built-in SynParts and every real dataset (see base.py).

A dataset is one module. A dataset module of this package ends with ``DATASETS``, a tuple of
:class:`partbench.datasets.declaration.Declaration`: the dataset's ``DatasetSpec`` (name,
``load``, capabilities, description), its accepted on-disk layouts (layouts.py's ``Layout``),
its public archive if it has one (what ``partbench data fetch`` downloads) and the built-in
suites it belongs to. ``real_dataset`` builds the declaration of a dataset read from a folder;
cub.py is the example to copy. Most modules declare one dataset; segsets.py, one reader for
five folders of label maps, declares five.

Nothing else lists the datasets: builtin.py registers every declared one (through the same
``register_datasets`` hook a plugin uses), fetch.py finds archives and layouts there, and
partbench/suites.py builds the built-in suites' pairs from them. Every module of this package
is a dataset module except the machinery named in ``builtin.MACHINERY`` (base, views,
layouts, ...). Adding a dataset is a new module here plus a tree in its official format in
tests/dataset_trees.py for its reader's tests.

Registering the datasets imports every dataset module, and ``partbench list`` should not wait
for numpy: a dataset module imports numpy and PIL inside the functions that use them
(``if TYPE_CHECKING:`` for annotations), never at its top.

Import from the submodules: this file stays empty so that plugins load without torch.
"""
