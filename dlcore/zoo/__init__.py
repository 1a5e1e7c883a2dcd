"""The teaching zoo: every network the notebooks compare, trained once by one command and shipped with dlcore.

    python -m dlcore zoo train [--only NAME ...] [--device cuda]     (re)build what is missing or altered
    python -m dlcore zoo list                                        each entry: ok, partial (step/steps), missing

Why: a notebook has a few CPU minutes, too few to train the papers' comparisons to the point where they
show (benchmarks/RESULTS.md). The papers separate the two as well: they start from an ImageNet-trained net
and then compare heads, strides and skips. So the zoo does it once:

1. `dlcore.pretrain` trains VGG-16 and ResNet-101 classifiers (width `WIDTH`) on image-level labels: the
   head-neutral stand-in for ImageNet.
2. Every model starts from them as the papers start from ImageNet: FCN convolutionalizes fc6/fc7 (Sec. 3.1),
   DeepLab v1/v2 subsample them (v1 Sec. 3.2) into each fc6/fc7 and every ASPP branch; ResNet heads start fresh.
3. The trunk's lower part stays frozen (the budget of a 2-core CPU; named in every notebook): VGG-16 up to
   pool4, ResNet-101 up to layer3, its output memoised per image (`memo`), so each network runs its own forward
   and its frozen stages run once per image. The last block (conv5 / layer4) and the head train through
   `dlcore.train.train` (checkpoints in zoo/partial/, resumed to the step), with the papers' recipe: SGD,
   momentum 0.9, weight decay 5e-4, poly lr, 10x lr on the class-score layers. FCN keeps fc6 as
   convolutionalized (conv5, fc7 and the score layers learn) and trains in stages, 32s -> 16s -> 8s (Sec. 4.2).
   Each model for the schedule's seeds (the seed picks the fresh layers' init, the sample order and dropout).
4. The CRF's w1, sigma_alpha, sigma_beta are cross-validated per model on held-out scenes (seed 0's model),
   as the papers do (v1 Sec. 5), with w2 = 3, sigma_gamma = 3 fixed.

The package, one part per step: `recipe` (what is trained, on what `Schedule`), `store` (the files, the manifest
and the schedule it names), `trunk` (the pre-trained start, the zoo's scenes), `memo` (the frozen stem remembered
per image), `training` (step 3 and 4, `train_all`),
`evidence` (what the notebooks call: scores checked against the records, means over seeds), `claims` (the papers'
claims as data: `Claim`, `Ledger`);
the command is `dlcore.cli.zoo`.

Files: `zoo/NAME.pt` (fp16 weights of what was trained, torch.save of tensors: loaded with weights_only=True)
and `zoo/manifest.json` (per file: recipe, command, seed, seconds, machine, sha256, CRF settings). `load`
checks the sha256 before reading a file and names the rebuild command when a file is missing or altered.
"""

from dlcore.zoo import recipe
from dlcore.zoo.evidence import (PLATEAU_GAIN, class_iou, class_table, evaluate, fmt, for_notebook, last_quarter_gain,
                                 miou, over_seeds, predictions, present, seeds_of)
from dlcore.zoo.memo import StemMemo
from dlcore.zoo.recipe import (CRF_ITERATIONS, CRF_MODELS, FULL, MODELS, PRETRAIN, SCHEDULES, TINY, WIDTH, ZOO_DIR, Schedule, Spec,
                               ZooError, build, entry_names, rebuild_command)
from dlcore.zoo.store import (claim_schedule, crf_settings, load_entry, pack, partial_step, read_manifest, recorded,
                              schedule_of, unpack)
from dlcore.zoo.training import (crf_refine, crf_search, image_confusions, record_scores, train_all, train_model,
                                 train_pretrained)
from dlcore.zoo.trunk import (branch_labels, frozen_keys, heldout_scenes, labels_of, load, logits, probabilities,
                              scenes, start_from_pretrained, test_scenes)

__all__ = [
    "CRF_ITERATIONS", "CRF_MODELS", "FULL", "MODELS", "PRETRAIN", "SCHEDULES", "Schedule", "Spec", "StemMemo", "TINY", "WIDTH", "ZOO_DIR",
    "PLATEAU_GAIN", "ZooError", "branch_labels", "build", "claim_schedule", "class_iou", "class_table", "crf_refine",
    "crf_search", "crf_settings", "entry_names", "evaluate", "fmt", "for_notebook", "frozen_keys", "heldout_scenes",
    "image_confusions", "labels_of", "last_quarter_gain", "load", "load_entry", "logits", "miou", "over_seeds", "pack", "partial_step",
    "predictions", "present", "probabilities", "read_manifest", "rebuild_command", "record_scores", "recorded",
    "scenes", "schedule_of", "seeds_of", "start_from_pretrained", "test_scenes", "train_all", "train_model",
    "train_pretrained", "unpack",
]
