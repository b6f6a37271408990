"""Fine-tuning ResNet-50 on one fold (the paper's method): model code, no stage logic.

Used by the train stage (per fold), final_model (all images) and the GPU check. Runs on
torch >= 2.4 (the GPU machine has 2.11): nothing here needs newer APIs.

Why the recipe looks like this (measured on JAFFE, see docs/finetune.md):
- BatchNorm: with ~170 gray faces, batch statistics differ so much from ImageNet's
  running statistics that train-mode BatchNorm wrecks the pretrained features within one
  epoch. ``bn: adapt`` re-estimates the running statistics on the fold's training images
  once (no gradients), then keeps BatchNorm in eval mode while the weights train.
- Head: a random 7-class head sends large, noisy gradients into the body for the first
  steps. ``head_init: probe`` first fits the new head as a linear probe on the pooled
  features (full-batch L-BFGS, L2), so fine-tuning starts from the probe's accuracy.
- Rates: AdamW with a lower rate for the pretrained body than for the head, a linear
  warm-up, cosine decay, label smoothing; the checkpoint with the best validation
  accuracy (ties: lower validation loss) is restored and tested.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from .model import build_resnet50, normalize, replace_head


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def to_input(batch_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> normalised float input, channels_last."""
    x = batch_u8.to(device, non_blocking=True).float().div_(255)
    return normalize(x).contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, p, gen: torch.Generator) -> torch.Tensor:
    """Random flip + per-sample shift/scale/rotation, one affine_grid for the batch.

    Random numbers come from the CPU generator ``gen`` so a fold's augmentation is the
    same on any device.
    """
    n = x.shape[0]
    dev = x.device

    def u(lo, hi):
        return torch.rand(n, generator=gen).mul(hi - lo).add(lo).to(dev)

    ang = u(-p.augment_rotate, p.augment_rotate) * math.pi / 180
    scale = u(1 - p.augment_scale, 1 + p.augment_scale)
    tx, ty = u(-p.augment_shift, p.augment_shift) * 2, u(-p.augment_shift, p.augment_shift) * 2
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(dev)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_train_mode(model: nn.Module, bn: str) -> None:
    """Train mode for the weights; BatchNorm keeps its running statistics unless bn == 'train'."""
    model.train()
    if bn != "train":
        for m in batchnorms(model):
            m.eval()


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, images, idx, p, device, dtype) -> None:
    """Re-estimate every BatchNorm's running mean/var on the training images (no gradients).

    Cumulative averages over all training images and their flips, in batches of
    ``batch_size``: the statistics the network will see on these faces.
    """
    saved = [(m, m.momentum) for m in batchnorms(model)]
    for m, _ in saved:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for s in range(0, len(idx), p.batch_size):
        x = to_input(images[idx[s : s + p.batch_size]], device)
        with autocast(device, dtype):
            model(x)
            model(torch.flip(x, dims=[3]))
    for m, mom in saved:
        m.momentum = mom
    model.eval()


@torch.no_grad()
def pooled_features(model: nn.Module, images, idx, p, device, dtype, flip: bool = False) -> torch.Tensor:
    model.eval()
    fc, model.fc = model.fc, nn.Identity()
    try:
        out = []
        for s in range(0, len(idx), p.batch_size):
            x = to_input(images[idx[s : s + p.batch_size]], device)
            if flip:
                x = torch.flip(x, dims=[3])
            with autocast(device, dtype):
                out.append(model(x).float())
        return torch.cat(out)
    finally:
        model.fc = fc


def fit_probe_head(model: nn.Module, images, y, idx, p, device, dtype) -> None:
    """Initialise ``model.fc`` as an L2-regularised softmax probe on the pooled features."""
    f = torch.cat([pooled_features(model, images, idx, p, device, dtype, flip) for flip in (False, True)])
    t = torch.as_tensor(np.concatenate([y[idx], y[idx]]), device=device)
    head = model.fc
    w = torch.zeros_like(head.weight, dtype=torch.float32, requires_grad=True)
    b = torch.zeros_like(head.bias, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=p.probe_iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(f @ w.T + b, t) + p.probe_l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(w.detach())
        head.bias.copy_(b.detach())


def make_optimizer(model: nn.Module, p):
    head = list(model.fc.parameters())
    head_ids = {id(t) for t in head}
    body = [t for t in model.parameters() if id(t) not in head_ids and t.requires_grad]
    groups = [{"params": body, "lr": p.lr * p.body_lr_mult}, {"params": head, "lr": p.lr}]
    if p.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
    return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``total`` steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def freeze_stages(model: nn.Module, n: int) -> None:
    """Freeze the stem (n >= 1) and layer1..layer(n-1): fewer weights for ~170 images to move."""
    parts = [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]
    for part in parts[:n]:
        for t in part.parameters():
            t.requires_grad_(False)


def train_one_epoch(model, opt, sched_step, images, y, idx, p, device, dtype, gen) -> tuple[float, int]:
    set_train_mode(model, p.bn)
    perm = idx[torch.randperm(len(idx), generator=gen).numpy()]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=p.label_smoothing)
    total, n = torch.zeros((), device=device), 0
    for s in range(0, len(perm), p.batch_size):
        b = perm[s : s + p.batch_size]
        if len(b) < 2 and p.bn == "train":  # BatchNorm in train mode needs more than one sample
            continue
        sched_step()
        x = to_input(images[b], device)
        if p.augment:
            x = augment(x, p, gen)
        t = torch.as_tensor(y[b], device=device)
        with autocast(device, dtype):
            loss = loss_fn(model(x).float(), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if p.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        total += loss.detach() * len(b)  # no .item(): keeps the GPU queue full
        n += len(b)
    return float(total) / max(n, 1), n


@torch.no_grad()
def evaluate(model, images, y, idx, p, device, dtype, n_classes: int) -> tuple[np.ndarray, float]:
    """-> (softmax probabilities averaged over image + flip, mean cross-entropy). No augmentation."""
    model.eval()
    probs = []
    for s in range(0, len(idx), p.batch_size):
        x = to_input(images[idx[s : s + p.batch_size]], device)
        with autocast(device, dtype):
            logits = model(x).float() + model(torch.flip(x, dims=[3])).float()
        probs.append(torch.softmax(logits / 2, 1).cpu().numpy())
    pr = np.concatenate(probs) if probs else np.zeros((0, n_classes))
    loss = float(-np.log(np.clip(pr[np.arange(len(idx)), y[idx]], 1e-12, None)).mean()) if len(idx) else 0.0
    return pr, loss


def new_model(pretrained: dict, stride_layout: str, n_classes: int, device, seed: int) -> nn.Module:
    """The pretrained network with a fresh ``n_classes`` head; the head's init is seeded."""
    model = build_resnet50(1000, stride_layout)
    model.load_state_dict(pretrained)
    torch.manual_seed(seed)
    replace_head(model, n_classes)
    return model.to(device).to(memory_format=torch.channels_last)


def finetune(pretrained: dict, images, y, roles, p, device, dtype, seed: int, n_classes: int):
    """Fine-tune on roles['train'], select the epoch on roles['val'].

    -> (model holding the selected checkpoint, info with curves and the selection).
    With an empty validation role (final model) the last epoch is kept.
    """
    gen = torch.Generator().manual_seed(seed)
    model = new_model(pretrained, p.stride_layout, n_classes, device, seed)
    tr, va = roles["train"], roles.get("val", np.zeros(0, dtype=np.int64))
    freeze_stages(model, p.freeze_stages)
    if p.bn == "adapt":
        adapt_batchnorm(model, images, tr, p, device, dtype)
    if p.head_init == "probe":
        fit_probe_head(model, images, y, tr, p, device, dtype)
    opt = make_optimizer(model, p)
    base = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = math.ceil(len(tr) / p.batch_size)
    total, warmup, step = p.epochs * steps_per_epoch, p.warmup_epochs * steps_per_epoch, [0]

    def sched_step():
        f = lr_factor(step[0], total, warmup)
        for g, lr in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr * f
        step[0] += 1

    curves = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    start_acc = None
    if len(va):
        pv, vloss = evaluate(model, images, y, va, p, device, dtype, n_classes)
        start_acc = float((pv.argmax(1) == y[va]).mean())
    best, best_state, best_epoch, since, seen = (-1.0, math.inf), None, 0, 0, 0
    for epoch in range(p.epochs):
        tl, n = train_one_epoch(model, opt, sched_step, images, y, tr, p, device, dtype, gen)
        curves["train_loss"].append(tl)
        seen += n
        if not len(va):
            continue
        pv, vloss = evaluate(model, images, y, va, p, device, dtype, n_classes)
        vacc = float((pv.argmax(1) == y[va]).mean())
        curves["val_loss"].append(vloss)
        curves["val_accuracy"].append(vacc)
        if (vacc, -vloss) > (best[0], -best[1]):
            best, best_epoch, since = (vacc, vloss), epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since += 1
            if p.patience and since >= p.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    info = {"curves": curves, "train_images_seen": seen,
            "selected": {"best_epoch": best_epoch or p.epochs, "val_accuracy": best[0] if len(va) else None,
                         "val_accuracy_at_start": start_acc, "epochs_run": len(curves["train_loss"])}}  # fmt: skip
    return model, info
