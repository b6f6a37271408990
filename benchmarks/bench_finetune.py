"""Finetune loop throughput: the pipeline's train_one_epoch vs a bare PyTorch loop.

Same model (ResNet-50, v1 strides), image size, batch and precision; prints images/s
of both and the pipeline's share. Target: the pipeline keeps >= 90 % of the bare loop.

    python benchmarks/bench_finetune.py --image-size 64 --images 256 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from ferpipe.model import build_resnet50, normalize, replace_head
from ferpipe.train import TrainParams, resolve_runtime, train_one_epoch


def bare_loop(model, x_u8, y, batch, device, dtype):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for s in range(0, len(x_u8), batch):
        x = normalize(x_u8[s : s + batch].to(device).float() / 255).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y[s : s + batch].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--image-size", type=int, default=64, help="input side in pixels")
    ap.add_argument("--images", type=int, default=256, help="images per timed epoch")
    ap.add_argument("--batch", type=int, default=32, help="batch size")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="autocast precision")
    ap.add_argument("--repeats", type=int, default=2, help="timed epochs per variant (after one warm-up)")
    args = ap.parse_args()
    p = TrainParams(mode="finetune", image_size=args.image_size, threads=args.threads,
                    batch_size=args.batch, precision=args.precision)  # fmt: skip
    device, dtype = resolve_runtime(p)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 7, (args.images,), generator=g)
    model = replace_head(build_resnet50(1000, "v1"), 7).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    idx = np.arange(args.images)
    results = {}
    for name, fn in (
        ("bare", lambda: bare_loop(model, x, y, args.batch, device, dtype)),
        ("pipeline", lambda: train_one_epoch(model, opt, x, y.numpy(), idx, p, device, dtype, g)),
    ):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[name] = args.images / min(times)
        print(f"{name:9s}: {results[name]:8.1f} images/s  (best of {args.repeats}, {device.type}, {dtype or 'fp32'}, "
              f"{args.image_size}px, batch {args.batch}, {args.threads} threads)")
    share = results["pipeline"] / results["bare"]
    print(f"pipeline keeps {100 * share:.1f} % of the bare loop (target >= 90 %): {'OK' if share >= 0.9 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
