"""The one place an encoder meets data: views of a dataset in, features out, timed.

Tasks ask for Views; the runner merges the views of all its tasks into Passes, one per
(inputs, split, transform), so one encoder pass over a split serves every task reading it.
A pass streams: DataLoader workers decode, crop and resize; pinned uint8 batches go to the
device without blocking; the forward runs under autocast; each output is checked and appended
to a file of the feature cache by a writer thread while the next batch runs. Nothing is joined
from pieces: the features come back memory-mapped from the cache.

merge    views -> passes (merge.py)
inputs   a sample's encoder inputs, labels and label maps, in DataLoader workers (inputs.py)
stream   a pass's batches through the encoder, under one process or several (stream.py)
outputs  each forward's outputs checked and brought to one grid (outputs.py)
files    the pass's arrays in the cache, and a view's features read back (files.py)
"""

from partbench.extraction.files import F16_MAX, MAPS, features_from, fit_float16, read_masks, unscaled
from partbench.extraction.inputs import available_cores, default_workers, sample_inputs
from partbench.extraction.merge import Pass, merge_views
from partbench.extraction.outputs import OutputError, encoder_outputs, expected_grid, stage_grid
from partbench.extraction.stream import PassResult, run_pass
from partbench.features import View  # where API 1 plugins import it from (docs/plugins.md)

# Bump when a change in this package changes any feature value: it is part of every cache key.
EXTRACTION_VERSION = "2"

__all__ = [
    "EXTRACTION_VERSION",
    "F16_MAX",
    "MAPS",
    "OutputError",
    "Pass",
    "PassResult",
    "View",
    "available_cores",
    "default_workers",
    "encoder_outputs",
    "expected_grid",
    "features_from",
    "fit_float16",
    "merge_views",
    "read_masks",
    "run_pass",
    "sample_inputs",
    "stage_grid",
    "unscaled",
]
