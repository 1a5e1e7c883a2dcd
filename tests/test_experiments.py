"""dlcore.experiments: convolutionalization, recipe keys, and the cached train-and-score recipe."""

import importlib.util

import pytest
import torch
from torch import nn

from dlcore.experiments import Recipe, convolutionalize, table_row, train, train_and_score



def _have_stack() -> bool:
    import dlcore.data

    return all(importlib.util.find_spec(m) for m in ("dlcore.models", "dlcore.engine")) \
        and hasattr(dlcore.data, "SyntheticScenes")


HAVE_STACK = _have_stack()


def test_convolutionalized_classifier_equals_sliding_window():
    torch.manual_seed(0)
    c, k = 3, 5
    fc = nn.Linear(c * k * k, 4)
    conv = convolutionalize(fc, c, k)
    x = torch.randn(1, c, 9, 11)
    dense = conv(x)  # [1, 4, 5, 7]: the classifier at every window, in one pass
    for i in range(x.shape[2] - k + 1):
        for j in range(x.shape[3] - k + 1):
            window = x[:, :, i:i + k, j:j + k].flatten(1)
            torch.testing.assert_close(dense[:, :, i, j], fc(window))


def test_convolutionalize_rejects_wrong_window():
    with pytest.raises(ValueError, match="cannot read"):
        convolutionalize(nn.Linear(10, 2), 3, 2)


def test_recipe_key_is_stable_and_separates_recipes():
    a = Recipe("fcn32s", steps=10)
    assert a.key() == Recipe("fcn32s", steps=10).key()
    assert a.key() != Recipe("fcn32s", steps=11).key()
    assert a.key() != Recipe("fcn16s", steps=10).key()
    assert Recipe("fcn16s", init_from=a.key()).key() != Recipe("fcn16s").key()


def test_table_row_needs_scores():
    class Fake:
        recipe = Recipe("fcn32s")
        scores = None
        images_per_s = 1.0

    with pytest.raises(ValueError, match="no scores"):
        table_row(Fake())


@pytest.mark.skipif(not HAVE_STACK, reason="dlcore.models / engine / data not there yet")
def test_train_and_score_caches_and_stages(tmp_path):
    tiny = dict(width=0.0625, steps=2, batch_size=2, size=32, n_train=4)
    first = train_and_score("fcn32s", n_val=2, cache_dir=tmp_path, **tiny)
    assert (tmp_path / f"{first.key}.pt").exists()
    for column in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert 0.0 <= first.scores[column] <= 1.0
    again = train(first.recipe, cache_dir=tmp_path)
    for (k, v), w in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    assert again.images_per_s == pytest.approx(first.images_per_s)
    staged = train_and_score("fcn16s", init=first, n_val=2, cache_dir=tmp_path, **tiny)
    assert staged.recipe.init_from == first.key
    with pytest.raises(ValueError, match="init"):
        train(Recipe("fcn16s", init_from=first.key, **tiny), cache_dir=tmp_path)


@pytest.mark.skipif(not HAVE_STACK, reason="dlcore.models not there yet")
def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        train(Recipe("fcn4s"), cache_dir=tmp_path)


@pytest.mark.skipif(not HAVE_STACK, reason="dlcore.models not there yet")
def test_pretrained_trunk_starts_the_backbone_only(tmp_path):
    from dlcore.experiments import _load_start, pretrained_trunk
    from dlcore.models import build_model

    trunk = pretrained_trunk(width=0.0625, size=32, steps=1, cache_dir=tmp_path)
    assert trunk.recipe.options == {"batch_norm": True}
    torch.manual_seed(1)
    model = build_model("deeplab-v1-4x4", num_classes=trunk.model.num_classes, width=0.0625, batch_norm=True)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    _load_start(model, trunk, prefix="backbone.")
    mine = model.state_dict()
    backbone = {k: v for k, v in trunk.model.state_dict().items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(mine[k], v) for k, v in backbone.items())
    assert all(torch.equal(mine[k], v) for k, v in head_before.items()), "the head must keep its own init"
    tiny = dict(width=0.0625, steps=1, batch_size=2, size=32, n_train=4, options={"batch_norm": True})
    staged = train_and_score("fcn32s", trunk=trunk, n_val=2, cache_dir=tmp_path, **tiny)
    assert staged.recipe.trunk_from == trunk.key
    with pytest.raises(ValueError, match="trunk"):
        train(Recipe("fcn32s", trunk_from=trunk.key, **tiny), cache_dir=tmp_path)


@pytest.mark.skipif(not HAVE_STACK, reason="dlcore.models not there yet")
def test_trunk_fc_starts_every_aspp_branch_from_the_pretrained_head(tmp_path):
    from dlcore.experiments import _load_fc, pretrained_trunk
    from dlcore.models import build_model

    trunk = pretrained_trunk(width=0.0625, size=32, steps=1, cache_dir=tmp_path)
    model = build_model("deeplab-v2-vgg-aspp-l", num_classes=trunk.model.num_classes, width=0.0625, batch_norm=True)
    _load_fc(model, trunk)
    for branch in model.head.branches:
        assert torch.equal(branch[0].weight, trunk.model.head.fc6.weight)
        assert torch.equal(branch[3].weight, trunk.model.head.fc7.weight)
    assert branch[0].dilation == (24, 24), "the branch keeps its own rate"
    with pytest.raises(ValueError, match="only 3x3"):
        _load_fc(build_model("deeplab-v1-7x7", num_classes=11, width=0.0625), trunk)
