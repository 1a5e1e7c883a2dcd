"""The CUDA paths: the same answers as on the CPU. Skipped on a machine without a GPU (CI); run on the lent
GPU machine with `python -m pytest tests/test_gpu.py` (benchmarks/RESULTS.md records when and where)."""

import matplotlib.cbook
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dlcore.crf import DenseCRF, PermutohedralLattice, crf_features
from dlcore.inference import Predictor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def photo(h: int, w: int) -> torch.Tensor:
    """grace_hopper.jpg (shipped by matplotlib) as uint8 [1,3,h,w]."""
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        return torch.from_numpy(np.array(im.convert("RGB").resize((w, h)))).permute(2, 0, 1)[None].contiguous()


def coarse_probs(b: int, labels: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, labels, h // 8 + 1, w // 8 + 1, generator=g) * 3
    return torch.softmax(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False), 1)


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 would make 'fp32 on CUDA equals CPU' a tolerance question; the parity tests want plain fp32."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def test_lattice_filter_on_cuda_equals_cpu():
    appearance, _, group = crf_features(photo(60, 80), 20.0, 5.0, 3.0)
    values = torch.rand(appearance.shape[0], 4, generator=torch.Generator().manual_seed(1))
    cpu = PermutohedralLattice(appearance, group).filter(values)
    gpu = PermutohedralLattice(appearance.to(CUDA), group.to(CUDA)).filter(values.to(CUDA))
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_crf_on_cuda_equals_cpu(batch):
    images = photo(75, 100).expand(batch, -1, -1, -1).contiguous()
    images[1:] = images[1:].flip(-1)  # different images in one batch (one lattice, the image index in the key)
    probs = coarse_probs(batch, 5, 75, 100)
    crf = DenseCRF(5)
    q_cpu = crf(images, probs)
    q_gpu = crf(images.to(CUDA), probs.to(CUDA)).cpu()
    assert (q_gpu - q_cpu).abs().max() < 1e-4
    assert (q_gpu.argmax(1) == q_cpu.argmax(1)).float().mean() > 0.999
    assert (q_cpu.argmax(1) != probs.argmax(1)).any()  # the CRF did something


def tiny_deeplab():
    from dlcore.models import build_model

    torch.manual_seed(0)
    return build_model("deeplab-v2-resnet101-aspp-l", num_classes=5, width=0.125)


def test_predictor_fp32_on_cuda_equals_cpu():
    model, images = tiny_deeplab(), photo(65, 97).expand(2, -1, -1, -1).contiguous()
    cpu = Predictor(model, device="cpu", crf=False).probs(images)
    gpu = Predictor(model, device=CUDA, crf=False, bf16=False).probs(images).cpu()
    assert (gpu - cpu).abs().max() < 1e-3


def test_cuda_graphs_replay_equals_eager_and_follows_new_inputs():
    model = tiny_deeplab()
    eager = Predictor(model, device=CUDA, crf=False)
    graphed = Predictor(model, device=CUDA, crf=False, cuda_graphs=True)
    for seed in (0, 1):  # the second call replays the captured graph on new pixels
        images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(graphed.probs(images), eager.probs(images), atol=1e-4)


def test_bf16_and_compile_agree_with_fp32_labels():
    model, images = tiny_deeplab(), photo(64, 96)
    fp32 = Predictor(model, device=CUDA, crf=False, bf16=False)(images)
    bf16 = Predictor(model, device=CUDA, crf=False, bf16=True)(images)
    compiled = Predictor(model, device=CUDA, crf=False, bf16=False, compile=True)(images)
    assert (bf16 == fp32).float().mean() > 0.95
    assert (compiled == fp32).float().mean() > 0.99


def test_end_to_end_predict_with_crf_stays_on_the_gpu_and_equals_cpu():
    model, images = tiny_deeplab(), photo(75, 100).expand(2, -1, -1, -1).contiguous()
    crf = {"iterations": 5, "w1": 4.0, "sigma_alpha": 30.0, "sigma_beta": 5.0}
    gpu = Predictor(model, device=CUDA, crf=crf, bf16=False)(images.to(CUDA))
    cpu = Predictor(model, device="cpu", crf=crf)(images)
    assert gpu.device.type == "cuda" and gpu.shape == (2, 75, 100)
    assert (gpu.cpu() == cpu).float().mean() > 0.999


def test_training_with_bf16_autocast_on_cuda_lowers_the_loss(tmp_path):
    from dlcore.train import train
    from dlcore.data import SyntheticScenes
    from dlcore.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplab-v2-resnet101-aspp-l-msc", num_classes=SyntheticScenes.num_classes, width=0.125)
    data = SyntheticScenes("train", n=32, size=64)
    result = train(model, data, steps=40, batch_size=8, lr=0.01, device="cuda", progress=False,
                          checkpoint_dir=tmp_path, checkpoint_every=20)
    assert next(model.parameters()).device.type == "cuda"
    assert np.mean(result["losses"][-5:]) < np.mean(result["losses"][:5])
    state = torch.load(tmp_path / "last.pt", weights_only=True, map_location="cpu")
    assert state["step"] == 40
