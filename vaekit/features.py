"""The reference digit classifier whose features sample-quality scores are taken in.

FID, KID, precision and recall compare two sets of images in the features of a fixed network. Papers
use Inception-v3 on 299x299 colour images; for 28x28 digits (and with no download possible) vaekit
ships a small conv classifier trained on the MNIST training set, so every user's scores are taken in
the same features on every machine. Its weights are `vaekit/assets/digit_features.pt`, made by
`benchmarks/train_digit_features.py`; their SHA-256 is checked on every load. Scores in these
features are **not** comparable with Inception-feature FIDs in papers.
"""

from __future__ import annotations

import hashlib
import io
from importlib import resources

import torch
from torch import nn

from .errors import ConfigError

FEATURES_FILE = "digit_features.pt"
#: SHA-256 of the shipped weights file; `load_digit_features` refuses any other file.
FEATURES_SHA256 = "31e889fbd3d743d89a58a1a7b7a3d1cbad4c8e2995f1c275401288743601cb40"
NUM_FEATURES = 128


class DigitFeatures(nn.Module):
    """A small conv classifier for 1x28x28 images in [0, 1]: three conv blocks, a 128-d feature layer.

    ``forward`` returns the 128 penultimate features (what the scores compare); ``logits`` the ten
    class scores. Inputs of another size are resized to 28x28 and colour is averaged to grey.
    """

    num_features = NUM_FEATURES  # read by torchmetrics' FID/KID for a custom feature extractor

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),   # 14
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # 7
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # 3
            nn.Flatten(), nn.Linear(64 * 3 * 3, NUM_FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(NUM_FEATURES, 10)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """Images as float ``[N, 1, 28, 28]`` in [0, 1] (uint8 is scaled, colour averaged, size resized)."""
        if x.dtype == torch.uint8:
            x = x.float() / 255
        x = x.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (28, 28):
            x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", antialias=True,
                                          align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 128 features of images ``x`` (``[N, C, H, W]``)."""
        return self.body(self.prepare(x) - 0.5)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The ten class scores of images ``x``."""
        return self.head(self(x))


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def load_digit_features(device: str | torch.device = "cpu") -> DigitFeatures:
    """The shipped reference classifier, in eval mode with gradients off, its file's hash checked.

    Raises:
        ConfigError: when the weights file is missing or its SHA-256 is not `FEATURES_SHA256`.
    """
    ref = resources.files("vaekit") / "assets" / FEATURES_FILE
    try:
        data = ref.read_bytes()
    except OSError:
        raise ConfigError(f"the reference classifier {FEATURES_FILE} is missing from the vaekit "
                          "package; reinstall vaekit") from None
    if sha256(data) != FEATURES_SHA256:
        raise ConfigError(f"the reference classifier {FEATURES_FILE} has SHA-256 {sha256(data)}, not "
                          f"{FEATURES_SHA256}; reinstall vaekit (sample-quality scores need the "
                          "shipped weights)")
    net = DigitFeatures()
    net.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False).to(device)
