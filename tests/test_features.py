"""Feature taps and spatial grids (ferpipe.features): shapes, the cache key, bad input, and a
generated task that only a grid can learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferpipe import features, heads
from ferpipe.config import ParamsError
from ferpipe.model import build_resnet50
from ferpipe.train_params import TrainParams


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_resnet50(1000, "v1").eval()


@pytest.mark.parametrize(("taps", "dim"), [
    (["layer4:1"], 2048), (["stem:2"], 64 * 4), (["layer1:2", "layer2:3"], 256 * 4 + 512 * 9),
    (["layer2:3", "layer3:3"], 512 * 9 + 1024 * 9),
])  # fmt: skip
def test_taps_and_grids_give_the_expected_shapes(backbone, taps, dim):
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    f = features.extract_features(backbone, images, 2, True, torch.device("cpu"), None, taps)
    assert f.shape == (2, 3, dim) and dim == sum(features.tap_dim(t) for t in taps)
    assert np.isfinite(f).all()


def test_layer4_global_average_is_the_networks_own_pooling(backbone):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = features.tap_features(backbone, x, ["layer4:1"])
        net = torch.nn.Sequential(*list(backbone.children())[:-1])(x).flatten(1)  # torchvision: ... avgpool
    assert torch.allclose(ours, net, atol=1e-5)


def test_split_taps_takes_each_taps_columns():
    taps = ["layer4:1", "layer2:1"]
    f = np.arange(2 * 3 * (2048 + 512), dtype=np.float32).reshape(2, 3, -1)
    assert np.array_equal(features.split_taps(f, taps, ["layer2:1"]), f[..., 2048:])
    assert np.array_equal(features.split_taps(f, taps, ["layer2:1", "layer4:1"]),
                          np.concatenate([f[..., 2048:], f[..., :2048]], -1))  # fmt: skip


def test_the_cache_invalidates_when_the_taps_change(tmp_path):
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return np.full((1, 2, 3), value, dtype=np.float32)

        return run

    key = {k: "x" for k in features.KEY_FIELDS}
    cache = tmp_path / "c.npz"
    assert features.cached_features(cache, {**key, "taps": ["layer4:1"]}, compute(1))[0, 0, 0] == 1
    assert features.cached_features(cache, {**key, "taps": ["layer4:1"]}, compute(2))[0, 0, 0] == 1  # hit
    assert features.cached_features(cache, {**key, "taps": ["layer2:3"]}, compute(3))[0, 0, 0] == 3  # miss
    assert calls == [1, 3]


@pytest.mark.parametrize(("taps", "reason"), [
    (["layer5:1"], "unknown tap 'layer5:1'; expected <layer>:<grid> with layer one of ['stem', 'layer1'"),
    (["layer2:0"], "needs a grid of 1 or more"),
    (["layer2"], "needs a grid of 1 or more"),
    (["layer3:20"], "a grid of 20 is larger than the 7 x 7 map layer3 has at 112 px (allowed 1..7)"),
    ([], "expected a non-empty list of taps"),
    (["layer2:3", "layer2:3"], "listed twice"),
])  # fmt: skip
def test_a_bad_tap_names_the_key_and_the_allowed_values(taps, reason):
    with pytest.raises(ParamsError) as exc:
        TrainParams(taps=taps).check()
    assert "train.taps" in str(exc.value) and reason in str(exc.value)


def test_the_frozen_methods_are_the_papers_head_and_the_spatial_one():
    p = TrainParams(taps=["layer2:3"], image_size=224, spatial_image_size=112)
    assert p.frozen_methods == {"resnet50_gap": {"image_size": 224, "taps": ["layer4:1"]},
                                "resnet50_spatial": {"image_size": 112, "taps": ["layer2:3"]}}  # fmt: skip
    assert p.taps_by_size() == {224: ["layer4:1"], 112: ["layer2:3"]} and p.method == "resnet50_spatial"
    same = TrainParams(taps=["layer2:3", "layer4:1"], image_size=112, spatial_image_size=112)
    assert same.taps_by_size() == {112: ["layer4:1", "layer2:3"]}  # one forward pass for both heads
    assert list(TrainParams(gap_head=False).frozen_methods) == ["resnet50_spatial"]


def test_a_class_that_differs_only_in_where_the_mark_is_needs_a_grid(backbone):
    """Class 0: a bright mark on the left half of the face; class 1: the same mark mirrored to
    the right half. A global average cannot tell them apart; a 2 x 2 grid can."""
    rng = np.random.default_rng(0)
    n, size = 120, 64
    yy, xx = np.mgrid[0:size, 0:size]
    imgs, y = [], []
    for i in range(n):
        cls = i % 2
        cy, cx = rng.integers(24, 40), rng.integers(16, 22)
        cx = cx if cls == 0 else size - 1 - cx
        mark = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
        img = np.clip(40 + rng.normal(0, 12, (size, size)) + mark, 0, 255).astype(np.uint8)
        imgs.append(np.repeat(img[None], 3, 0))
        y.append(cls)
    images, y = torch.from_numpy(np.stack(imgs)), np.array(y)
    idx = np.arange(n)
    fold = heads.FoldHeadProblem(idx[:80], idx[80:100], idx[100:])

    def test_accuracy(taps):
        f = features.extract_features(backbone, images, 32, False, torch.device("cpu"), None, taps)
        (prob, _), = heads.fit_fold_heads(f, y, [fold], [0.01, 0.1, 1.0], 2, 80)
        return float((prob.argmax(1) == y[fold.test]).mean())

    assert test_accuracy(["layer1:2"]) >= 0.95
    assert test_accuracy(["layer1:1"]) <= 0.75
