"""The train section of params.yaml and the runtime it resolves to (device, precision, seeds).

A library module: the train and final_model stages (and the GPU check) share it, so neither
stage imports the other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .config import ParamsError, register_section


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
    # frozen mode
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
                   "head_init": ("probe", "random")}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ParamsError(f"params.yaml: train.{key}: expected one of {allowed}, got {getattr(self, key)!r}")
        for key in ("image_size", "threads", "batch_size", "epochs", "workers"):
            if getattr(self, key) < 1:
                raise ParamsError(f"params.yaml: train.{key}: expected a positive integer, got {getattr(self, key)}")
        if not self.head_c_grid or any(c <= 0 for c in self.head_c_grid):
            raise ParamsError(f"params.yaml: train.head_c_grid: expected positive numbers, got {self.head_c_grid}")

    @property
    def method(self) -> str:
        return f"resnet50_{self.mode}"


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
