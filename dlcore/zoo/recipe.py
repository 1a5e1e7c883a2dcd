"""The zoo's recipe: what is trained (MODELS), on what schedule (a `Schedule`, an immutable value), and the names
of its files.

A zoo folder carries its schedule: its manifest names it ("full", or "tiny" for the tests' seconds-long one), and
every function that reads a zoo reads the schedule from there (`store.schedule_of`), so nothing is swapped at run
time and a zoo never mixes two schedules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[2]
ZOO_DIR = ROOT / "zoo"
FORMAT = "dlcore-zoo"
WIDTH = 0.125  # every channel count x 1/8 (conv5: 64 channels; LargeFOV's fc6: 128; the 7x7 fc6: 512)
CRF_ITERATIONS = 10
# The models whose fully connected CRF a zoo cross-validates and records: every DeepLab on output stride 8, as v1 Sec. 5
# and v2 Tables 3-4 refine every DeepLab (FCN has no CRF). A schedule may record fewer (`Schedule.crf_models`).
CRF_MODELS = ("deeplab-v1-7x7", "deeplab-v1-4x4", "deeplab-v1-4x4-r8", "deeplab-v1-largefov",
              "deeplab-v1-largefov-msc", "deeplab-v2-vgg-aspp-s", "deeplab-v2-vgg-aspp-l", "deeplab-v2-resnet101-largefov",
              "deeplab-v2-resnet101-largefov-msc", "deeplab-v2-resnet101-aspp-l")


@dataclass(frozen=True)
class Schedule:
    """Everything a zoo's numbers depend on besides the models: the scenes, the optimisation, the CRF search.

    Test scenes are SyntheticScenes("val", seed=test_draw)[0:n_test]. Held-out scenes (every choice: the CRF's
    cross-validation, the storage check) are SyntheticScenes("val", seed=0), after the test scenes when those are
    the same draw (test_draw 0), else from its start: they are never scored. `short` is the shorter schedule some
    entries of the shipped zoo were trained on (steps, n_heldout, n_crf), recorded so that `zoo train` rebuilds them
    as they were. `models`: the MODELS this schedule trains (all when empty).
    """

    name: str
    size: int  # SIZE x SIZE scenes: stride-8 score maps of SIZE / 8
    n_train: int
    n_test: int
    n_heldout: int
    n_crf: int  # test scenes refined by the CRF in the zoo's records: val[0:n_crf]
    seeds: tuple
    steps: int
    batch: int
    lr: float
    crf_grid: tuple  # ((parameter, values), ...): the cross-validation grid
    pretrain_steps: int
    pretrain_images: int
    pretrain_batch: int
    short: tuple = ()  # ((key, value), ...) for `Spec.short` entries
    checkpoint_every: int = 200  # steps between the resumable checkpoints of a model in training
    bf16: bool = False  # bf16 autocast while training (dlcore.train)
    test_draw: int = 0
    models: tuple = ()
    n_check: int = 0  # test scenes a notebook re-scores live against the records (0: all of them)
    crf_expand: bool = False  # widen the CRF grid until its optimum lies inside (`training.crf_search`)
    curve_every: int = 0  # record a learning curve every this many steps (0: none) ...
    n_curve: int = 0  # ... on this many held-out scenes
    crf_confirm: int = 0  # held-out scenes after the searched ones that re-score the search's best (`confirm_crf`)
    crf_models: tuple = CRF_MODELS  # the models whose CRF is cross-validated and recorded
    pretrain_lr: tuple = (("vgg16", 0.02), ("resnet101", 0.02))  # ((arch, lr), ...): each classifier's own rate
    pretrain_check: int = 512  # held-out scenes that score a classifier's label accuracy and its storage check

    @property
    def heldout_offset(self) -> int:
        return self.n_test if self.test_draw == 0 else 0

    def value(self, spec: "Spec", key: str):
        """`key` ("steps", "n_heldout" or "n_crf") for zoo model `spec`: ours, or its short schedule's."""
        if not (spec.short and self.short):
            return getattr(self, key)
        return dict(self.short)[key]


FULL = Schedule("full", size=256, n_train=1000, n_test=96, n_heldout=8, n_crf=32, seeds=(0, 1, 2), steps=250,
                batch=8, lr=0.03,
                crf_grid=(("w1", (3.0, 5.0)), ("sigma_alpha", (20.0, 40.0, 80.0)), ("sigma_beta", (4.0,))),
                pretrain_steps=1200, pretrain_images=8192, pretrain_batch=16,
                # The VGG-16 DeepLab heads were trained on a shorter schedule when the first zoo's CPU time ran short:
                # 150 steps, the CRF cross-validated on 4 held-out scenes and recorded on 16.
                short=(("steps", 150), ("n_heldout", 4), ("n_crf", 16)),
                # the first zoo refined ResNet-101 with the CRF in its ASPP-L only
                crf_models=tuple(m for m in CRF_MODELS if "resnet101-largefov" not in m))
# Every code path in seconds (the tests, `zoo train --schedule tiny`, the notebooks' smoke runs); never the shipped zoo.
TINY = Schedule("tiny", size=64, n_train=8, n_test=4, n_heldout=2, n_crf=2, seeds=(0, 1), steps=2, batch=2, lr=0.03,
                crf_grid=(("w1", (4.0,)), ("sigma_alpha", (10.0, 20.0)), ("sigma_beta", (5.0,))),
                pretrain_steps=2, pretrain_images=8, pretrain_batch=2, checkpoint_every=1, crf_expand=True,
                curve_every=1, n_curve=2, pretrain_check=8)
# The converged zoo (being trained into zoo-next/, issue 21): every model on one schedule, 24,000 steps, the
# length LargeFOV's doubling test chose (benchmarks/RESULTS.md: 6,000 -> 12,000 steps adds 5.2 points, 12,000 ->
# 24,000 adds 2.0), bf16 autocast, 4,000 distinct training scenes, 500 test scenes of a draw no choice looked at,
# and the CRF cross-validated on 32 held-out scenes over a grid its optimum must lie inside, its 8 best settings
# scored again on 160 (32 held-out scenes chose ResNet-101's 1.2 points behind the best on 128 more). Both classifiers are
# pre-trained for 7,200 steps, each at the better of two rates by the linear probe on the selection scenes (VGG-16
# 0.1, ResNet-101 0.02): not their plateau (VGG-16's last doubling added 5 probe points; benchmarks/RESULTS.md).
CONVERGED = Schedule("converged", size=256, n_train=4000, n_test=500, n_heldout=32, n_crf=500, seeds=(0, 1, 2),
                     steps=24000, batch=8, lr=0.1, bf16=True, test_draw=100, n_check=32, crf_expand=True,
                     curve_every=500, n_curve=64, crf_confirm=128,
                     crf_grid=(("w1", (3.0, 4.0, 5.0, 6.0)), ("sigma_alpha", (10.0, 20.0, 40.0, 80.0, 160.0)),
                               ("sigma_beta", (2.0, 4.0, 8.0))),
                     pretrain_steps=7200, pretrain_images=8192, pretrain_batch=16,
                     pretrain_lr=(("vgg16", 0.1), ("resnet101", 0.02)),
                     models=("fcn32s", "fcn16s", "fcn8s", "deeplab-v1-7x7", "deeplab-v1-4x4", "deeplab-v1-4x4-r8",
                             "deeplab-v1-largefov", "deeplab-v1-largefov-msc", "deeplab-v2-vgg-aspp-s",
                             "deeplab-v2-vgg-aspp-l", "deeplab-v2-resnet101-largefov",
                             "deeplab-v2-resnet101-largefov-msc", "deeplab-v2-resnet101-aspp-l"))
SCHEDULES = {s.name: s for s in (FULL, TINY, CONVERGED)}

PRETRAIN = {  # arch -> dlcore.pretrain.pretrain's arguments besides the schedule's steps, images, batch and rate
    "vgg16": dict(width=WIDTH, seed=0),
    "resnet101": dict(width=WIDTH, seed=0),
}


def pretrain_recipe(arch: str, schedule: Schedule) -> dict:
    """`dlcore.pretrain.pretrain`'s arguments for `arch` on `schedule` (the stand-in for ImageNet)."""
    return dict(PRETRAIN[arch], lr=dict(schedule.pretrain_lr)[arch], steps=schedule.pretrain_steps,
                batch_size=schedule.pretrain_batch, n_images=schedule.pretrain_images)


@dataclass(frozen=True)
class Spec:
    """One zoo model: the dlcore.models name, its build options, and what it starts from."""

    model: str
    options: dict = field(default_factory=dict)
    init_from: str | None = None  # the zoo model (same seed) whose weights start this one: FCN's stages
    short: bool = False  # trained on the schedule's `short` variant

    @property
    def trunk(self) -> str:
        return "resnet101" if "resnet101" in self.model else "vgg16"


MODELS = {
    "fcn32s": Spec("fcn32s", {"batch_norm": True}),
    "fcn16s": Spec("fcn16s", {"batch_norm": True}, init_from="fcn32s"),
    "fcn8s": Spec("fcn8s", {"batch_norm": True}, init_from="fcn16s"),
    "deeplab-v1-7x7": Spec("deeplab-v1-7x7", {"batch_norm": True}, short=True),
    "deeplab-v1-4x4": Spec("deeplab-v1-4x4", {"batch_norm": True}, short=True),
    "deeplab-v1-4x4-r8": Spec("deeplab-v1-4x4-r8", {"batch_norm": True}, short=True),
    "deeplab-v1-largefov": Spec("deeplab-v1-largefov", {"batch_norm": True}, short=True),
    "deeplab-v1-largefov-msc": Spec("deeplab-v1-largefov-msc", {"batch_norm": True}, short=True),
    "deeplab-v2-vgg-aspp-s": Spec("deeplab-v2-vgg-aspp-s", {"batch_norm": True}, short=True),
    "deeplab-v2-vgg-aspp-l": Spec("deeplab-v2-vgg-aspp-l", {"batch_norm": True}, short=True),
    "deeplab-v2-resnet101-largefov": Spec("deeplab-v2-resnet101-largefov", {"output_stride": 8}),
    "deeplab-v2-resnet101-largefov-msc": Spec("deeplab-v2-resnet101-largefov-msc", {"output_stride": 8}),
    "deeplab-v2-resnet101-aspp-l": Spec("deeplab-v2-resnet101-aspp-l", {"output_stride": 8}),
}


class ZooError(ValueError):
    """A zoo file that is missing, damaged or not what the manifest says; the message names the rebuild command."""


def rebuild_command(name: str, zoo_dir: Path | None = None) -> str:
    """The command that (re)trains entry or model `name` of the zoo in `zoo_dir` (the shipped zoo when None)."""
    where = "" if zoo_dir is None or Path(zoo_dir).resolve() == ZOO_DIR.resolve() else f" --zoo-dir {zoo_dir}"
    return f"python -m dlcore zoo train --only {name}{where}"


def entry_names(schedule: Schedule = FULL) -> list[str]:
    """Every file of a zoo, in training order: the two pre-trained classifiers, then each model x seed."""
    models = schedule.models or tuple(MODELS)
    return [f"pretrain-{a}" for a in PRETRAIN] + [f"{m}-s{s}" for m in models for s in schedule.seeds]


def _split(entry: str) -> tuple[str, int]:
    model, _, seed = entry.rpartition("-s")
    return model, int(seed)


def build(name: str) -> nn.Module:
    """Zoo model `name` (a key of MODELS), untrained, at the zoo's width, 11 SyntheticScenes classes."""
    from dlcore.data import SyntheticScenes
    from dlcore.models import DeepLab, build_model

    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    model = build_model(spec.model, num_classes=SyntheticScenes.num_classes, width=WIDTH, **spec.options)
    model.zoo_name = name
    model.train_at_stride = isinstance(model, DeepLab)  # the ground truth subsampled by 8, as v1 and v2 train
    return model
