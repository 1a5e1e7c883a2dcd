"""Fixtures shared by test files: a tiny VOC 2012 folder written from SyntheticScenes, and a tiny model for it."""

import pytest
import torch

from dlcore.data.voc import write_voc_fixture
from dlcore.models import build_model


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc_fixture(root, n_train=1, n_val=3, size=40)
    return root


@pytest.fixture(scope="module")
def voc_model():
    torch.manual_seed(0)
    return build_model("deeplab-v1-largefov", width=0.0625).eval()
