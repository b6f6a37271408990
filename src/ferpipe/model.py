"""ResNet-50 construction: torchvision layout, optional Keras ("v1") stride placement.

Never touches the network: the architecture is built with ``weights=None`` and the
ImageNet weights come from the local safetensors file written by the ``weights`` stage.

Stride layouts of the downsampling Bottleneck (first block of layer2..layer4):

- ``stock``: torchvision ("ResNet v1.5"), stride 2 on the 3x3 ``conv2``.
- ``v1``: the original paper / Keras, stride 2 on the first 1x1 ``conv1``. The Keras
  ImageNet weights were trained this way, so this layout reproduces Keras exactly; the
  same weights in the stock layout still work but are slightly off.

Both layouts have identical parameter shapes, so one state dict fits either.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, inputs in [0, 1]
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
STRIDE_LAYOUTS = ("v1", "stock")
RESNET50_NUM_PARAMS = 25_557_032  # 1000-class torchvision resnet50


def apply_v1_strides(model: torchvision.models.ResNet) -> torchvision.models.ResNet:
    """Move the stride of every downsampling Bottleneck from conv2 (3x3) to conv1 (1x1).

    In place; returns ``model``. Blocks without a stride (layer1) are untouched, and the
    shortcut ``downsample`` conv keeps its stride in both layouts.
    """
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            stride = block.conv2.stride
            if stride != (1, 1):
                block.conv1.stride = stride
                block.conv2.stride = (1, 1)
    return model


def build_resnet50(num_classes: int = 1000, stride_layout: str = "v1") -> torchvision.models.ResNet:
    """A randomly initialised torchvision resnet50 (no download), in the given stride layout."""
    if stride_layout not in STRIDE_LAYOUTS:
        raise ValueError(f"stride_layout must be one of {STRIDE_LAYOUTS}, got {stride_layout!r}")
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if stride_layout == "v1":
        apply_v1_strides(model)
    return model


def load_pretrained_backbone(
    weights_path: Path | str, stride_layout: str = "v1"
) -> torchvision.models.ResNet:
    """The 1000-class ImageNet resnet50, loaded strictly from a safetensors state dict."""
    from safetensors.torch import load_file

    weights_path = Path(weights_path)
    if not weights_path.exists():
        raise FileNotFoundError(
            f"{weights_path}: ImageNet weights not found (run `python -m ferpipe.weights`)"
        )
    model = build_resnet50(1000, stride_layout)
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    return model


def replace_head(model: torchvision.models.ResNet, num_classes: int) -> torchvision.models.ResNet:
    """Swap the ImageNet ``fc`` for a freshly initialised ``num_classes`` classifier (in place)."""
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def normalize(images: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1], shape (N, 3, H, W) -> ImageNet-normalised network input."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
