"""The CRF settings of the papers' released models, in one place: the defaults and the per-family configs.

DeepLab v1 (Sec. 5 and its released CRF config) cross-validated DeepLab-LargeFOV's appearance kernel on
VOC 2012 val: w1 = 4, sigma_alpha = 121, sigma_beta = 5, with the smoothness kernel w2 = 3, sigma_gamma = 3,
10 mean-field iterations. These are `DEFAULTS`: every CRF of dlcore (`dense_crf`, `DenseCRF`, `--crf`) starts
from them. DeepLab v2 fixes w2 = 3, sigma_gamma = 3 in the paper (Sec. 4.1) and cross-validates the rest;
its released ResNet-101 VOC config is `DEEPLAB_V2_RESNET101`.
"""

from __future__ import annotations

DEEPLAB_V1_LARGEFOV = dict(iterations=10, w1=4.0, sigma_alpha=121.0, sigma_beta=5.0, w2=3.0, sigma_gamma=3.0)
DEEPLAB_V2_RESNET101 = dict(iterations=10, w1=4.0, sigma_alpha=67.0, sigma_beta=3.0, w2=3.0, sigma_gamma=1.0)
DEFAULTS = DEEPLAB_V1_LARGEFOV

# Model family (the prefix of a `dlcore.models` name) -> the CRF its published release was evaluated with.
# DeepLab v2's VGG-16 models were released with DeepLab v1's LargeFOV settings; FCN has no CRF.
RELEASED = {"deeplab-v1": DEEPLAB_V1_LARGEFOV, "deeplab-v2-vgg": DEEPLAB_V1_LARGEFOV,
            "deeplab-v2-resnet101": DEEPLAB_V2_RESNET101}


def paper_crf(model_name: str) -> dict | None:
    """The released CRF settings (a fresh dict) for `model_name`'s family, e.g. deeplab-v1-largefov; None for FCN."""
    for family, settings in RELEASED.items():
        if model_name.startswith(family + "-"):
            return dict(settings)
    return None
