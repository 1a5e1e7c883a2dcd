"""dlcore.train / dlcore.checkpoint: the papers' SGD recipe, exact resume, DDP sharding, checkpoints.

Most tests use a 2-layer net and a tiny in-memory dataset (16 x 16 px, tests/tinynet.py), so they run in seconds.
"""

import importlib.util
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcore.checkpoint import checkpoint_meta, load_checkpoint, load_model, save_checkpoint
from dlcore.train import StepSampler, param_groups, poly_lr, segmentation_loss, train
from tinynet import TinyNet, TinyScenes, assert_same_weights, fresh_model

torch.set_num_threads(1)
HAVE_MODELS = importlib.util.find_spec("dlcore.models") is not None
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason="dlcore.models is not in the tree yet")


def random_flip(image, mask):
    """A random augmentation drawing from torch's global RNG, as torchvision's transforms do."""
    if torch.rand(()) < 0.5:
        return image.flip(-1), mask.flip(-1)
    return image, mask


def tiny_train(model, tmp_path=None, **kwargs):
    options = dict(steps=6, batch_size=4, lr=0.05, progress=False, transform=random_flip)
    if tmp_path is not None:
        options.update(checkpoint_dir=tmp_path, checkpoint_every=2)
    options.update(kwargs)
    return train(model, TinyScenes(), **options)


# --------------------------------------------------------------------------------------------- recipe pieces

def test_poly_learning_rate():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01 ** 0.9)
    assert poly_lr(0.01, 10, 100, power=1.0) == pytest.approx(0.009)


def test_classifier_gets_ten_times_the_learning_rate():
    model = TinyNet()
    groups = param_groups(model, 0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.classifier.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    plain = nn.Conv2d(3, 2, 1)  # no classifier_parameters(): one group at the base rate
    assert [g["lr"] for g in param_groups(plain, 0.01)] == [0.01]


def test_one_step_is_sgd_with_poly_lr_and_weight_decay():
    """First step: momentum buffer = grad + wd * w, update = lr_0 * lr_mult * that (torch's SGD)."""
    model = fresh_model(dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, masks = TinyScenes()[0]
    reference = fresh_model(dropout=0.0)
    from dlcore.data.transforms import normalize

    loss = segmentation_loss(reference(normalize(images[None])), masks[None])
    loss.backward()
    with pytest.raises(Interrupted):
        train(model, TinyScenes(n=1), steps=3, batch_size=1, lr=0.1, progress=False, on_step=_stop_after(1))
    for name, param in reference.named_parameters():
        mult = 10.0 if name.startswith("classifier") else 1.0
        expected = before[name] - 0.1 * mult * (param.grad + 5e-4 * before[name])
        torch.testing.assert_close(model.state_dict()[name], expected, msg=name)


class Interrupted(Exception):
    pass


def _stop_after(n):
    def on_step(step, loss):
        if step == n:
            raise Interrupted

    return on_step


def test_loss_ignores_void_and_sums_msc_outputs():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[:, 0] = 255
    valid = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    torch.testing.assert_close(segmentation_loss(logits, target), expected)
    other = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(segmentation_loss([logits, other], target),
                               expected + segmentation_loss(other, target))
    void = torch.full((2, 4, 5), 255)
    assert segmentation_loss(logits.requires_grad_(), void).item() == 0.0  # not NaN


def test_strided_scores_are_scored_against_the_labels_at_their_cells_centres():
    from dlcore.train import subsample_labels

    target = torch.arange(16 * 16).reshape(1, 16, 16) % 7
    target[0, 4, 4] = 255
    small = subsample_labels(target, (2, 2))
    assert torch.equal(small, target[:, 4::8, 4::8]) and small[0, 0, 0] == 255  # void stays void
    logits = torch.randn(1, 7, 2, 2)
    torch.testing.assert_close(segmentation_loss(logits, target), segmentation_loss(logits, small))
    assert segmentation_loss(logits, target) != segmentation_loss(
        F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False), target)


def test_msc_list_output_trains():
    class TwoOutputs(TinyNet):
        def forward(self, x):
            y = super().forward(x)
            return [y, 0.5 * y] if self.training else y

    torch.manual_seed(0)
    model = TwoOutputs()
    losses = []
    train(model, TinyScenes(), steps=1, batch_size=2, progress=False,
                 on_step=lambda step, loss: losses.append(loss))
    torch.manual_seed(0)
    single = TinyNet()
    first = train(single, TinyScenes(), steps=1, batch_size=2, progress=False)
    assert losses[0] > first["loss"]  # fused + 0.5-scaled map: two losses summed, more than the one


# --------------------------------------------------------------------------------------------- data order

def test_sampler_epochs_are_permutations_and_seeded():
    s = StepSampler(n=5, batch_size=2, seed=3, start=0, stop=5)
    stream = [i for batch in s for i, _ in batch]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    assert stream == [i for batch in StepSampler(5, 2, 3, 0, 5) for i, _ in batch]
    assert stream != [i for batch in StepSampler(5, 2, 4, 0, 5) for i, _ in batch]
    # starting at step 3 gives what the full stream had from step 3 on (resume sees the same batches)
    assert list(StepSampler(5, 2, 3, 3, 5)) == list(s)[3:]


def test_sampler_ranks_split_each_global_batch():
    full = list(StepSampler(n=7, batch_size=4, seed=0, start=0, stop=6))
    ranks = [list(StepSampler(7, 4, 0, 0, 6, rank=r, world=2)) for r in range(2)]
    for step in range(6):
        parts = ranks[0][step] + ranks[1][step]
        assert sorted(parts) == sorted(full[step])
        assert not set(ranks[0][step]) & set(ranks[1][step])


# --------------------------------------------------------------------------------------------- training + resume

def test_training_lowers_the_loss():
    torch.manual_seed(0)
    result = train(TinyNet(dropout=0.0), TinyScenes(), steps=30, batch_size=4, lr=0.05, progress=False)
    assert result["step"] == 30 and len(result["losses"]) == 30
    assert np.mean(result["losses"][-5:]) < 0.8 * np.mean(result["losses"][:5])
    assert result["lr"] == pytest.approx(poly_lr(0.05, 29, 30))


def test_checkpoint_holds_the_run(tmp_path):
    model = fresh_model()
    result = tiny_train(model, tmp_path, meta={"data": {"data": "tiny"}})
    assert result["checkpoint"] == str(tmp_path / "last.pt")
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 6 and state["format"] == "dlcore-checkpoint"
    assert state["meta"] == {"name": "tiny", "num_classes": 3, "width": 1.0, "options": {"dropout": 0.3},
                             "normalize": "imagenet", "data": {"data": "tiny"}}
    assert state["schedule"]["steps"] == 6 and state["schedule"]["lr"] == 0.05
    assert {"torch", "numpy", "python"} <= set(state["rng"][0])
    assert state["optimizer"]["state"]  # momentum buffers
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, workers):
    torch.manual_seed(123)
    uninterrupted = fresh_model()
    tiny_train(uninterrupted)

    torch.manual_seed(123)
    model = fresh_model()
    with pytest.raises(Interrupted):  # dies after step 3; the last checkpoint is step 2
        tiny_train(model, tmp_path, on_step=_stop_after(3))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2

    torch.manual_seed(999)  # a new process: other RNG state, other init; the checkpoint must restore both
    resumed = fresh_model(seed=7)
    result = tiny_train(resumed, tmp_path, resume=True, num_workers=workers)
    assert result["resumed_from"] == 2 and result["step"] == 6 and len(result["losses"]) == 4
    assert_same_weights(resumed, uninterrupted)


def _frozen_first_layer(seed):
    """A TinyNet whose first conv is the same fixed "pre-trained" layer whatever the seed, and does not learn."""
    model = fresh_model(seed=seed)
    torch.manual_seed(42)
    model.features[0].reset_parameters()
    model.features[0].requires_grad_(False)
    return model


def test_checkpoints_leave_out_the_frozen_weights_and_resume_exactly(tmp_path):
    frozen = {"features.0.weight", "features.0.bias"}
    torch.manual_seed(123)
    uninterrupted = _frozen_first_layer(0)
    tiny_train(uninterrupted, frozen=frozen)

    torch.manual_seed(123)
    model = _frozen_first_layer(0)
    with pytest.raises(Interrupted):
        tiny_train(model, tmp_path, on_step=_stop_after(3), frozen=frozen)
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    assert set(saved) == set(model.state_dict()) - frozen  # a head's checkpoint stays small enough to commit

    torch.manual_seed(999)
    resumed = _frozen_first_layer(7)  # the caller rebuilds the frozen layer; the checkpoint restores the rest
    tiny_train(resumed, tmp_path, resume=True, frozen=frozen)
    assert_same_weights(resumed, uninterrupted)

    # a checkpoint lacking a weight that learns cannot be resumed: that would be a silent restart of that weight
    state = load_checkpoint(tmp_path / "last.pt")
    del state["model"]["classifier.bias"]
    save_checkpoint(tmp_path / "last.pt", **{k: v for k, v in state.items() if k != "format"})
    with pytest.raises(ValueError, match="missing.*classifier.bias"):
        tiny_train(_frozen_first_layer(0), tmp_path, resume=True, frozen=frozen)


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    model = fresh_model()
    first = tiny_train(model, tmp_path)
    again = fresh_model(seed=5)
    result = tiny_train(again, tmp_path, resume=True)
    assert result["losses"] == [] and result["loss"] == pytest.approx(first["loss"])
    assert_same_weights(again, model)


def test_resume_refuses_other_schedule_or_model(tmp_path):
    tiny_train(fresh_model(), tmp_path, steps=4)
    with pytest.raises(ValueError, match="steps: checkpoint 4, now 6"):
        tiny_train(fresh_model(), tmp_path, steps=6, resume=True)
    with pytest.raises(ValueError, match="lr"):
        tiny_train(fresh_model(), tmp_path, steps=4, lr=0.1, resume=True)
    with pytest.raises(ValueError, match="num_classes=3.*num_classes=4"):
        tiny_train(fresh_model(num_classes=4), tmp_path, steps=4, resume=True)
    other = fresh_model()
    other.name = "other"
    with pytest.raises(ValueError, match="name='tiny'"):
        tiny_train(other, tmp_path, steps=4, resume=True)


def test_new_run_does_not_overwrite_and_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        tiny_train(fresh_model(), tmp_path, resume=True)
    tiny_train(fresh_model(), tmp_path, steps=2)
    with pytest.raises(ValueError, match="already exists.*resume"):
        tiny_train(fresh_model(), tmp_path, steps=2)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="steps"):
        train(TinyNet(), TinyScenes(), steps=0, progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(TinyNet(), TinyScenes(), steps=1, resume=True, progress=False)

    class Mixed(TinyScenes):
        def __getitem__(self, i):
            image, mask = super().__getitem__(i)
            return (image, mask) if i % 2 else (image[:, :8], mask[:8])

    with pytest.raises(ValueError, match="mixes image sizes.*crop"):
        train(TinyNet(), Mixed(), steps=1, batch_size=2, progress=False)


# --------------------------------------------------------------------------------------------- checkpoints

def test_save_is_atomic_and_load_names_the_problem(tmp_path):
    path = tmp_path / "sub" / "ck.pt"
    save_checkpoint(path, model={"w": torch.ones(2)}, step=3)
    assert load_checkpoint(path)["step"] == 3
    assert os.listdir(path.parent) == ["ck.pt"]
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated.pt is not a readable dlcore checkpoint.*re-create"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt is not a readable dlcore checkpoint"):
        load_checkpoint(garbage)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="list.pt is not a readable dlcore checkpoint"):
        load_checkpoint(listing)


def test_load_refuses_pickled_code(tmp_path):
    """weights_only=True: a file that would run code on load is refused, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "hook": TinyNet}, path)
    with pytest.raises(ValueError, match="not a readable dlcore checkpoint"):
        load_checkpoint(path)


@needs_models
def test_load_model_rebuilds_from_meta(tmp_path):
    from dlcore.models import build_model

    torch.manual_seed(0)
    model = build_model("fcn32s", num_classes=3, width=0.0625)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model=model.state_dict(), meta=checkpoint_meta(model))
    loaded = load_model(path, name="fcn32s")
    assert not loaded.training and loaded.num_classes == 3
    assert_same_weights(loaded, model)
    with pytest.raises(ValueError, match="checkpoint .*ck.pt is for model fcn32s, not fcn8s"):
        load_model(path, name="fcn8s")


# --------------------------------------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    model = fresh_model(seed=rank, dropout=0.0)  # different inits: DDP must broadcast rank 0's
    train(model, TinyScenes(), steps=3, batch_size=4, lr=0.05, progress=False,
                 checkpoint_dir=os.path.join(out_dir, "run"))
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_cpu_processes_match_one(tmp_path):
    """2 gloo processes, each half of every global batch: the same weights on both ranks, and the single-process
    weights (each rank's mean loss over equal-sized halves, averaged by DDP, is the global mean)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    single = fresh_model(seed=0, dropout=0.0)
    train(single, TinyScenes(), steps=3, batch_size=4, lr=0.05, progress=False)
    for k, v in single.state_dict().items():
        assert torch.equal(r0[k], r1[k]), k
        torch.testing.assert_close(r0[k], v, msg=k)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
