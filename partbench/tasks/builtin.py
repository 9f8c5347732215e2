"""The built-in tasks (the study's protocol), registered through the same hook as any plugin's."""

from __future__ import annotations

from collections.abc import Callable

from partbench.hookspecs import hookimpl
from partbench.specs import TaskOption, TaskSpec

FEATURES = ("cls", "embedding", "projection")


def _retrieval_options() -> dict[str, TaskOption]:
    return {
        "feature": TaskOption("embedding", "cls, embedding (mean patch token) or projection", FEATURES),
        "include_self": TaskOption(
            True, "keep the query in its own gallery, as the study's code does", (True, False)
        ),
    }


def _probe_options(lr: float, feature: bool, batch_size: int = 1024) -> dict[str, TaskOption]:
    opts = {
        "epochs": TaskOption(90, "SGD training epochs", minimum=1),
        "max_epochs": TaskOption(
            MAX_EPOCHS,
            "SGD epochs at most: a run whose epoch-choosing curve had not levelled off is trained"
            " again from the start with twice the epochs while that stays within this",
            minimum=1,
        ),
        "lr": TaskOption(lr, "SGD base learning rate, scaled by batch_size / 256", positive=True),
        "batch_size": TaskOption(batch_size, "SGD batch size", minimum=1),
        "report": TaskOption(
            "validation",
            "which head is scored: validation (the epoch, or for L-BFGS the ridge, with the best"
            " top-1 on items held out of the train split; the test split is scored once),"
            " best-on-test (the study's choice: selected on the test split itself, optimistic) or"
            " last (the last epoch; for L-BFGS the ridge 1e-4 on every item)",
            ("validation", "best-on-test", "last"),
        ),
        "validation": TaskOption(
            0.2,
            "share of each class's training items held out to choose the epoch (report=validation)",
            positive=True,
            maximum=0.5,
        ),
    }
    if feature:  # the linear probes
        opts = {
            "feature": TaskOption("cls", "cls, embedding or projection", FEATURES),
            "solver": TaskOption(
                "lbfgs",
                "lbfgs (full-batch logistic regression to convergence, its ridge chosen like an"
                " epoch) or sgd (the study's schedule: epochs, lr, batch_size)",
                ("lbfgs", "sgd"),
            ),
            # Not "iterations": that is a segmentation head's budget in all; this one is per ridge.
            "lbfgs_iterations": TaskOption(
                LINEAR_ITERATIONS, "L-BFGS iterations per ridge (solver=lbfgs)", minimum=1
            ),
            **opts,
        }
    return opts


# The study's 90 epochs left the attentive probes of the 600-step mini-dino and mini-ibot on
# SynParts part crops still rising (held-out top-1, fitting.score_levelled); 180 epochs
# levelled off and scored the same on the test split (87.4 and 87.1 against 87.4 and 87.4).
# Two doublings leave a margin: a probe that never levels off costs seven times the first
# schedule (90 + 180 + 360).
MAX_EPOCHS = 360

# The trained tasks' version. 2: the L-BFGS heads step in whitened coordinates (the same
# optimum, reached further: scores moved by up to a point) and the attentive pooler computes
# in another order (the same sums, rounded differently).
FITTED_VERSION = "2"
# The tasks reading part crops, one step further: a crop's corners are rounded as PIL rounds the
# study's boxes (partbench.datasets.views.crop_box), one pixel off the centre-first rule where a
# keypoint ends in .5 and the radius is odd.
RETRIEVAL_CROPS_VERSION = "2"
FITTED_CROPS_VERSION = "3"

# L-BFGS iterations per ridge of a linear probe. In whitened coordinates (fitting.
# WhitenedWeight) the chosen ridge of every mini encoder's SynParts probe stopped on L-BFGS'
# own tolerance within 6-169 iterations, and every ridge of the grid within 7-89 for mini-mae
# and mini-supervised; unwhitened, mini-mae's object-linear 1e-5 ran to this cap.
LINEAR_ITERATIONS = 500

# L-BFGS iterations of a segmentation head. In whitened coordinates the SynParts heads stopped
# on L-BFGS' own tolerance after 31-111 iterations (the unwhitened ones mostly ran to this
# cap and stopped up to 0.5% above the optimum: mini-random object-seg 1.777 against 1.768);
# 300 leaves a margin.
ITERATIONS = 300


def _seg_options() -> dict[str, TaskOption]:
    return {
        "solver": TaskOption(
            "lbfgs",
            "lbfgs (full-batch, to convergence on the cached features) or adamw (the study's kind"
            " of schedule, which underfits in a short budget)",
            ("lbfgs", "adamw"),
        ),
        "iterations": TaskOption(
            ITERATIONS, "L-BFGS iterations, or AdamW iterations (the study: 160k)", minimum=1
        ),
        "lr": TaskOption(4e-4, "AdamW learning rate (solver=adamw)", positive=True),
        "batch_size": TaskOption(16, "images per AdamW iteration (solver=adamw)", minimum=1),
        # The resolution options: at their defaults they leave the configuration hash as it was.
        "protocol": TaskOption(
            "default",
            "default (whole image resized to the encoder's input size) or study (the study's"
            " mmseg setting: short side 512, training on the centre 512 x 512 window, test by"
            " sliding 512 x 512 windows at stride 341 with overlapping logits averaged); input_size,"
            " window and stride override its figures",
            ("default", "study"),
            hashed_at_default=False,
        ),
        "input_size": TaskOption(
            0,
            "pixels: the square input side (window=0) or the short side images are resized to"
            " (window>0); 0: the encoder's own input size, or the window",
            minimum=0,
            hashed_at_default=False,
        ),
        "window": TaskOption(
            0,
            "sliding-window side in pixels (the encoder runs at it, position embeddings"
            " resampled); 0: no windows (protocol=study: 512)",
            minimum=0,
            hashed_at_default=False,
        ),
        "stride": TaskOption(
            0,
            "sliding-window stride in pixels; 0: two thirds of the window",
            minimum=0,
            hashed_at_default=False,
        ),
    }


def _retrieval(source: str):
    def create(options):
        from partbench.tasks.retrieval import Retrieval

        return Retrieval(source, options)

    return create


def _probe(source: str, kind: str):
    def create(options):
        from partbench.tasks.probes import Probe

        return Probe(source, kind, options)

    return create


def _seg(source: str):
    def create(options):
        from partbench.tasks.segmentation import Segmentation

        return Segmentation(source, options)

    return create


def _stage_option() -> TaskOption:
    return TaskOption(
        -1,
        "stage whose dense map is read (-1: the final map); all, or a list such as 2,4,6: one run per"
        " stage, drawn as a layer curve",
        minimum=-1,
    )


# Points per cell side of the upsampled target map (partbench.tasks.correspondence): a 16-pixel
# ViT cell read every 2 pixels, SynParts' 12-pixel cells every 1.5.
UPSAMPLE = 8
# part-correspondence's version. 2: the argmax runs over the target map upsampled between its
# cell centres, where it ran over the centres alone.
CORRESPONDENCE_VERSION = "2"


def _correspondence_options() -> dict[str, TaskOption]:
    return {
        "stage": _stage_option(),
        "reference": TaskOption(
            "bbox",
            "alpha multiplies the larger side of the target's object box (SPair-71k's convention) or"
            " of the target image",
            ("bbox", "image"),
        ),
        "predict": TaskOption(
            "argmax",
            "the best-matching point of the target map upsampled between its cell centres, or the"
            " softmax-weighted mean of the cell centres in a window around the best cell",
            ("argmax", "soft-argmax"),
        ),
        "upsample": TaskOption(
            UPSAMPLE, "points per cell side of the upsampled target map (1: the cell centres)", minimum=1
        ),
        "window": TaskOption(5, "soft-argmax window side, in cells (odd)", minimum=1),
        "temperature": TaskOption(0.04, "soft-argmax temperature on cosine similarity", positive=True),
    }


def _correspondence(options):
    from partbench.tasks.correspondence import Correspondence

    return Correspondence(options)


# The in-context segmentation defaults of the Hummingbird evaluation (Balazevic et al., NeurIPS
# 2023) as its open reproduction (open-hummingbird-eval) runs it: 30 neighbours, softmax
# temperature 0.02 on cosine similarity, memories of 1024 x 10^2 to 1024 x 10^4 patches (the
# smallest here, which a CPU run can hold).
NEIGHBOURS = 30
TEMPERATURE = 0.02
BANK_SIZE = 102_400


def _incontext_options() -> dict[str, TaskOption]:
    return {
        "stage": _stage_option(),
        "k": TaskOption(NEIGHBOURS, "neighbours voting for each test patch (Hummingbird: 30)", minimum=1),
        "temperature": TaskOption(
            TEMPERATURE,
            "softmax temperature on the neighbours' cosine similarities (Hummingbird: 0.02)",
            positive=True,
        ),
        "bank": TaskOption(
            BANK_SIZE,
            "training patches kept in the memory bank, drawn uniformly with the run's seed"
            " (Hummingbird's smallest memory: 1024 x 10^2)",
            minimum=1,
        ),
    }


def _incontext(source: str):
    def create(options):
        from partbench.tasks.incontext import InContextSegmentation

        return InContextSegmentation(source, options)

    return create


# part-discovery's version. 2: the chance level is that of random partitions matched as the
# clusters are (tasks.discovery.chance_partition_miou), not the best constant label map.
DISCOVERY_VERSION = "2"


def _discovery(options):
    from partbench.tasks.discovery import PartDiscovery

    return PartDiscovery(options)


@hookimpl
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    register(
        TaskSpec(
            "part-retrieval",
            "part",
            "mAP",
            "keypoints",
            _retrieval("keypoints"),
            "part crops around keypoints retrieve crops of the same part; cosine, no training",
            _retrieval_options(),
            version=RETRIEVAL_CROPS_VERSION,
        )
    )
    register(
        TaskSpec(
            "part-linear",
            "part",
            "top1",
            "keypoints",
            _probe("keypoints", "linear"),
            "linear probe on part crops",
            _probe_options(0.1, feature=True),
            version=FITTED_CROPS_VERSION,
        )
    )
    register(
        TaskSpec(
            "part-attentive",
            "part",
            "top1",
            "keypoints",
            _probe("keypoints", "attentive"),
            "attentive probe (one query over all final tokens) on part crops",
            # Not the study's lr 0.01 with batch 1024 (README, "where partbench departs").
            _probe_options(0.1, feature=False, batch_size=256),
            version=FITTED_CROPS_VERSION,
        )
    )
    register(
        TaskSpec(
            "part-seg",
            "part",
            "mIoU",
            "part-masks",
            _seg("part-masks"),
            "linear per-pixel probe on blocks 4/6/8/12 for part labels",
            _seg_options(),
            version=FITTED_VERSION,
        )
    )
    register(
        TaskSpec(
            "object-retrieval",
            "object",
            "mAP",
            "images",
            _retrieval("images"),
            "whole images retrieve images of the same class; cosine, no training",
            _retrieval_options(),
        )
    )
    register(
        TaskSpec(
            "object-linear",
            "object",
            "top1",
            "images",
            _probe("images", "linear"),
            "linear probe on whole images",
            _probe_options(0.1, feature=True),
            version=FITTED_VERSION,
        )
    )
    register(
        TaskSpec(
            "object-seg",
            "object",
            "mIoU",
            "object-masks",
            _seg("object-masks"),
            "linear per-pixel probe on blocks 4/6/8/12 for object labels",
            _seg_options(),
            version=FITTED_VERSION,
        )
    )
    _register_dense_tasks(register)


def _register_dense_tasks(register: Callable[[TaskSpec], None]) -> None:
    """The field's no-training dense measures: correspondence, in-context segmentation,
    part discovery."""
    register(
        TaskSpec(
            "part-correspondence",
            "part",
            "PCK@0.10",
            "keypoint-pairs",
            _correspondence,
            "keypoints of one image found in another of its class by cosine nearest neighbour over"
            " its dense map; PCK@0.05/0.10/0.15, no training",
            _correspondence_options(),
            version=CORRESPONDENCE_VERSION,
        )
    )
    for level, source in (("part", "part-masks"), ("object", "object-masks")):
        register(
            TaskSpec(
                f"{level}-seg-nn",
                level,
                "mIoU",
                source,
                _incontext(source),
                f"in-context {level} segmentation: each test patch takes the softmax-weighted vote of"
                " its k nearest labelled training patches (Hummingbird); no training",
                _incontext_options(),
            )
        )
    register(
        TaskSpec(
            "part-discovery",
            "part",
            "mIoU",
            "part-masks",
            _discovery,
            "per image, k-means over the object's patch features, clusters matched to part labels by"
            " the Hungarian assignment; mIoU, NMI, ARI; no labels used for fitting",
            {
                "stage": _stage_option(),
                "clusters": TaskOption(
                    0, "k of k-means (0: the number of part classes present in the image)", minimum=0
                ),
            },
            version=DISCOVERY_VERSION,
        )
    )
