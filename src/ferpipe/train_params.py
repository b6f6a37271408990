"""The train section of params.yaml and the runtime it resolves to (device, precision, seeds).

A library module: the train and final_model stages (and the GPU check) share it, so neither
stage imports the other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .config import ParamsError, register_section
from .features import GAP_TAPS, check_taps


@register_section("train")
@dataclasses.dataclass
class TrainParams:
    mode: str = "frozen"  # frozen | finetune
    image_size: int = 224
    stride_layout: str = "v1"  # must match the weights stage
    threads: int = 2  # torch CPU threads: results are identical only for the same count
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where supported) | bf16 | fp32
    batch_size: int = 32
    seed: int = 2021
    max_runs: int = 0  # 0 = every run of the plan
    max_folds: int = 0  # 0 = every fold
    # frozen mode: two heads side by side, resnet50_spatial on `taps` (<layer>:<grid>, ferpipe.features)
    # of images at spatial_image_size (both chosen on validation groups: docs/features.md) and, with
    # gap_head, the paper's network resnet50_gap (global average of layer4, at image_size). Features in
    # feature_precision (fp32 = what the final model serves in, so final_model reuses the cache, and
    # results do not depend on bf16 support).
    taps: list[str] = dataclasses.field(default_factory=lambda: ["layer2:6"])
    spatial_image_size: int = 112
    gap_head: bool = True
    feature_precision: str = "fp32"  # fp32 | auto (bf16 where supported)
    head_c_grid: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.1, 1.0])
    head_max_iter: int = 1000
    head_tol: float = 1e-5  # stop when every |gradient| of the (C * n)-scaled objective is below this
    flip_features: bool = True
    # finetune mode (recipe chosen on validation groups: docs/finetune.md)
    epochs: int = 30
    patience: int = 0  # 0 = no early stopping (the best validation epoch is still restored)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # the new head's rate
    body_lr_mult: float = 1.0  # pretrained layers train at lr * body_lr_mult
    warmup_epochs: int = 1
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    bn: str = "adapt"  # adapt (re-estimate on train images, then frozen) | frozen (ImageNet stats) | train
    head_init: str = "probe"  # probe (linear probe first) | random
    probe_iters: int = 100
    probe_l2: float = 0.001
    freeze_stages: int = 0  # 0 = train all; 1 = freeze the stem; 2 = stem + layer1; ...
    grad_clip: float = 1.0  # max gradient norm, 0 = off
    augment: bool = True
    augment_shift: float = 0.08  # fraction of the image side
    augment_scale: float = 0.1
    augment_rotate: float = 10.0  # degrees
    workers: int = 1  # folds trained concurrently in worker processes (a GPU fits several)
    log_mlflow: bool = True

    def check(self):
        choices = {"mode": ("frozen", "finetune"), "stride_layout": ("v1", "stock"),
                   "device": ("auto", "cpu", "cuda"), "precision": ("auto", "bf16", "fp32"),
                   "optimizer": ("adamw", "sgd"), "bn": ("adapt", "frozen", "train"),
                   "head_init": ("probe", "random"), "feature_precision": ("fp32", "auto")}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ParamsError(f"params.yaml: train.{key}: expected one of {allowed}, got {getattr(self, key)!r}")
        for key in ("image_size", "spatial_image_size", "threads", "batch_size", "epochs", "workers"):
            if getattr(self, key) < 1:
                raise ParamsError(f"params.yaml: train.{key}: expected a positive integer, got {getattr(self, key)}")
        if not self.head_c_grid or any(c <= 0 for c in self.head_c_grid):
            raise ParamsError(f"params.yaml: train.head_c_grid: expected positive numbers, got {self.head_c_grid}")
        # the grid must fit the map where the taps are used (frozen mode); finetune checks names only
        check_taps(self.taps, "train.taps", self.spatial_image_size if self.mode == "frozen" else None)

    @property
    def method(self) -> str:
        """The method this mode's final model serves: the layout-keeping head when frozen."""
        return "resnet50_spatial" if self.mode == "frozen" else f"resnet50_{self.mode}"

    @property
    def frozen_methods(self) -> dict[str, dict]:
        """Frozen mode's methods, in report order (the paper's network first):
        {method: {"image_size": input side, "taps": [...]}}."""
        gap = {"resnet50_gap": {"image_size": self.image_size, "taps": list(GAP_TAPS)}} if self.gap_head else {}
        return {**gap, "resnet50_spatial": {"image_size": self.spatial_image_size, "taps": list(self.taps)}}

    def taps_by_size(self) -> dict[int, list[str]]:
        """Every tap a frozen run computes, per input size (one forward pass per size)."""
        out: dict[int, list[str]] = {}
        for spec in self.frozen_methods.values():
            out.setdefault(spec["image_size"], [])
            out[spec["image_size"]] += [t for t in spec["taps"] if t not in out[spec["image_size"]]]
        return out

    def input_of(self, method: str) -> tuple[int, list[str]]:
        """(input side, taps) of a frozen method; other modes: (image_size, the global average)."""
        spec = self.frozen_methods.get(method, {"image_size": self.image_size, "taps": list(GAP_TAPS)})
        return spec["image_size"], spec["taps"]


# ---------------------------------------------------------------- runtime set-up
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_runtime(p: TrainParams) -> tuple[torch.device, torch.dtype | None]:
    torch.set_num_threads(p.threads)
    if p.device == "cuda" and not torch.cuda.is_available():
        raise ParamsError("params.yaml: train.device is 'cuda' but no CUDA device is available")
    device = torch.device("cuda" if p.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if p.precision == "fp32":
        return device, None
    bf16_ok = device.type == "cuda" or cpu_has_bf16()
    if p.precision == "bf16" and not bf16_ok:
        raise ParamsError("params.yaml: train.precision is bf16 but this CPU has no bf16 support")
    return device, torch.bfloat16 if bf16_ok else None
