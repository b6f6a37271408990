"""Wavelet baselines: optimisers, SLFN, features and the stage end to end (synthetic data)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import pywt
from PIL import Image

from ferpipe.baselines import DESCRIPTION, METHODS, features, slfn
from ferpipe.baselines.optimizers import bbo, cso, jaya
from ferpipe.baselines.stage import BaselinesParams, main
from ferpipe.config import CLASSES, ParamsError, parse_section
from ferpipe.foldio import load_fold


# ---------------------------------------------------------------- optimisers
def sphere(pop):
    return (pop**2).sum(axis=1)


def rastrigin(pop):
    return 10 * pop.shape[1] + (pop**2 - 10 * np.cos(2 * np.pi * pop)).sum(axis=1)


OPTS = {
    "cso": (cso, {"pop_size": 20, "iters": 200}),
    "bbo": (bbo, {"pop_size": 30, "iters": 300}),
    "jaya": (jaya, {"pop_size": 20, "iters": 300}),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_optimizers_reach_sphere_optimum(name):
    fn, kw = OPTS[name]
    res = fn(sphere, -5.12, 5.12, dim=5, seed=3, **kw)
    assert res.f < 1e-2 and np.abs(res.x).max() < 0.1
    assert res.f == pytest.approx(sphere(res.x[None])[0])
    assert np.all(np.diff(res.history) <= 0)  # best-so-far never gets worse
    assert res.history[-1] == res.f


@pytest.mark.parametrize("name", list(OPTS))
def test_optimizers_reach_rastrigin_global_basin(name):
    fn, kw = OPTS[name]
    # the nearest local minima (one coordinate at ±1) have value ~1: < 0.3 means the global basin
    res = fn(rastrigin, -5.12, 5.12, dim=2, seed=1, **kw)
    assert res.f < 0.3, res.f
    assert np.all(np.abs(res.x) <= 5.12)


@pytest.mark.parametrize("name", list(OPTS))
def test_optimizers_repeat_exactly_with_a_seed(name):
    fn, kw = OPTS[name]
    kw = {**kw, "iters": 30}
    a = fn(rastrigin, -5.12, 5.12, dim=4, seed=42, **kw)
    b = fn(rastrigin, -5.12, 5.12, dim=4, seed=42, **kw)
    c = fn(rastrigin, -5.12, 5.12, dim=4, seed=43, **kw)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.history, b.history) and a.n_evals == b.n_evals
    assert not np.array_equal(a.x, c.x)


def test_optimizers_respect_a_vector_box():
    lo, hi = np.array([1.0, -2.0, 0.5]), np.array([2.0, -1.0, 3.0])
    for fn, kw in OPTS.values():
        res = fn(sphere, lo, hi, seed=0, **{**kw, "iters": 100})
        assert np.all(res.x >= lo) and np.all(res.x <= hi)
        assert np.allclose(res.x, [1.0, -1.0, 0.5], atol=0.05)  # optimum on the box corner


# ---------------------------------------------------------------- SLFN
def test_slfn_pack_unpack_and_batched_forward_match_a_loop():
    rng = np.random.default_rng(0)
    d, h, c, n, p = 4, 3, 7, 11, 5
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    pop = rng.standard_normal((p, slfn.n_params(d, h, c)))
    w1, b1, w2, b2 = slfn.unpack(pop, d, h, c)
    assert np.array_equal(slfn.pack(w1[2], b1[2], w2[2], b2[2]), pop[2])
    z = slfn.forward(pop, x, h, c, "tanh")  # class-major (P, c, N)
    assert z.shape == (p, c, n)
    for i in range(p):
        ref = np.tanh(x @ w1[i] + b1[i]) @ w2[i] + b2[i]
        np.testing.assert_allclose(z[i].T, ref, rtol=1e-4, atol=1e-4)
        sig = 1 / (1 + np.exp(-(x @ w1[i] + b1[i]))) @ w2[i] + b2[i]
        np.testing.assert_allclose(slfn.forward(pop[i : i + 1], x, h, c, "sigmoid")[0].T, sig, rtol=1e-4, atol=1e-4)
    obj = slfn.SLFNObjective(x, y, h, c, fitness="ce", error_weight=0.1)
    f = obj(pop)
    for i in range(p):
        logits = (np.tanh(x @ w1[i] + b1[i]) @ w2[i] + b2[i]).astype(np.float64)
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        ce = -np.log(prob[np.arange(n), y]).mean()
        err = (logits.argmax(1) != y).mean()
        assert f[i] == pytest.approx(ce + 0.1 * err, rel=1e-4)
        np.testing.assert_allclose(obj.predict_proba(pop[i], x), prob, rtol=1e-4, atol=1e-6)
    mse = slfn.SLFNObjective(x, y, h, c, fitness="mse", error_weight=0.0)(pop[:1])
    assert 0 <= mse[0] <= 2
    lo, hi = slfn.bounds(d, h, c, 3.0)
    assert lo.shape == (slfn.n_params(d, h, c),) and np.allclose(hi[0], 3 / np.sqrt(d))


def test_slfn_trained_by_bbo_fits_a_separable_problem():
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(0, 0.3, (60, 2)) + np.array([[0, 2], [2, -1], [-2, -1]])[y]
    obj = slfn.SLFNObjective(x, y, 4, 3)
    res = bbo(obj, *obj.bounds(3.0), pop_size=30, iters=150, seed=0)
    assert (obj.predict_proba(res.x, x).argmax(1) == y).mean() > 0.95


# ---------------------------------------------------------------- features
def test_haar_of_known_arrays():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    ca, (ch, cv, cd) = features.haar2(a)
    # (a+b+c+d)/2, (a+b-c-d)/2, (a-b+c-d)/2, (a-b-c+d)/2
    assert (ca.item(), ch.item(), cv.item(), cd.item()) == (5.0, -2.0, -1.0, 0.0)
    x = np.arange(16, dtype=np.float64).reshape(4, 4)
    # level 1: every 2x2 block [[v, v+1], [v+4, v+5]] -> cA = 2v+5, cH = -4, cV = -1, cD = 0
    # level 2 on cA = [[5, 9], [21, 25]] -> 30, -16, -4, 0
    f = features.haar_features(x[None], levels=2, detail_levels=2)[0]
    expected = [30, -16, -4, 0] + [-4] * 4 + [-1] * 4 + [0] * 4
    np.testing.assert_allclose(f, expected)
    np.testing.assert_allclose(features.haar_features(x[None], 2, 0)[0], [30])
    # same coefficients as PyWavelets' Haar, on a batch of random images
    imgs = np.random.default_rng(0).random((3, 16, 16))
    ours = features.haar_decompose(imgs, 3)
    ref = pywt.wavedec2(imgs, "haar", level=3, axes=(-2, -1))
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-12)
    for o, r in zip(ours[1:], ref[1:], strict=True):
        for ob, rb in zip(o, r, strict=True):
            np.testing.assert_allclose(ob, rb, atol=1e-12)


def test_feature_shapes_and_pca_fit_on_train_rows():
    imgs = np.random.default_rng(1).random((6, 64, 64)).astype(np.float32)
    assert features.haar_features(imgs, 3, 1).shape == (6, 64 * 4)
    assert features.haar_features(imgs, 3, 3).shape == (6, 64 * 64)
    assert features.dwt_coefficients(imgs, "db4", 3, "approx").shape == (6, 64)
    assert features.dwt_coefficients(imgs, "haar", 2, "all").shape == (6, 64 * 64)
    assert features.swe_features(imgs, "db4", 4).shape == (6, 13)
    assert features.swe_features(imgs, "db4", 2, "histogram", 16, grid=2).shape == (6, 7 * 4)
    pca = features.fit_pca(features.dwt_coefficients(imgs[:4], "db4", 3).astype(np.float64), 20)
    assert pca[1].shape == (3, 64)  # at most n_train - 1 components
    assert features.apply_pca(features.dwt_coefficients(imgs, "db4", 3), pca).shape == (6, 3)
    mu, sd = features.fit_standardizer(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert np.allclose(mu, [2, 5]) and np.allclose(sd, [1, 1])


def test_swe_entropy_of_constant_and_simple_images():
    const = np.full((1, 32, 32), 0.7)
    # histogram entropy: every subband of a constant image is constant -> one bin -> 0 bits
    assert np.all(features.swe_features(const, "db4", 4, "histogram") == 0)
    # energy entropy: details are 0 -> 0 bits; the flat approximation spreads its energy
    # evenly over the 32*32 coefficients -> log2(1024) = 10 bits
    e = features.swe_features(const, "db4", 4, "energy")[0]
    assert e[0] == pytest.approx(10.0, abs=1e-4) and np.allclose(e[1:], 0)
    noise = np.random.default_rng(0).random((1, 32, 32))
    h = features.swe_features(noise, "db4", 2, "histogram", bins=8)[0]
    assert np.all(h > 0) and np.all(h <= 3 + 1e-9)  # at most log2(bins)


def test_image_size_must_suit_the_levels():
    with pytest.raises(features.FeatureError, match=r"multiple of 2\*\*4=16"):
        features.swe_features(np.zeros((1, 40, 40)), levels=4)
    with pytest.raises(ParamsError, match=r"image_size=72 must be divisible by 2\*\*swe_levels=16"):
        parse_section("baselines", {"image_size": 72}, BaselinesParams)
    parse_section("baselines", {"image_size": 100, "methods": ["hwt"], "hwt_levels": 2}, BaselinesParams)
    with pytest.raises(ParamsError, match="methods"):
        parse_section("baselines", {"methods": ["sift"]}, BaselinesParams)
    with pytest.raises(ParamsError, match="unknown key"):
        parse_section("baselines", {"hidden": [3]}, BaselinesParams)


def test_descriptions_cover_every_method():
    assert set(DESCRIPTION) == set(METHODS) == {"hwt", "cso", "bbo"}


# ---------------------------------------------------------------- the stage end to end
def pattern(k: int, subj: int, shot: int, size: int = 48) -> np.ndarray:
    """Class k: a blob at angle 2*pi*k/7 (pixel features) + a grating of frequency 3+3k
    (wavelet-entropy features), random phase and noise per (subject, shot)."""
    rng = np.random.default_rng(1000 * subj + 10 * k + shot)
    yy, xx = np.mgrid[0:size, 0:size] / size
    th = np.pi * k / 7
    tex = np.sin(2 * np.pi * (3 + 3 * k) * (xx * np.cos(th) + yy * np.sin(th)) + rng.uniform(0, 2 * np.pi))
    cy, cx = 0.5 + 0.3 * np.sin(2 * np.pi * k / 7), 0.5 + 0.3 * np.cos(2 * np.pi * k / 7)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.08**2))
    img = 0.3 + 0.15 * tex + 0.5 * blob + rng.normal(0, 0.05, (size, size))
    return np.clip(img, 0, 1)


@pytest.fixture
def synthetic(tmp_path):
    """6 subjects x 7 classes x 2 shots as RGB PNGs + manifest + a 1-run, 3-group plan."""
    root = tmp_path / "ingest"
    rows, n = [], 0
    for s in range(6):
        for k, cls in enumerate(CLASSES):
            for shot in range(2):
                rel = f"images/S{s}.{cls[:2].upper()}{shot}.{n}.png"
                gray = (pattern(k, s, shot) * 255).astype(np.uint8)
                (root / "images").mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.stack([gray] * 3, -1), "RGB").save(root / rel)
                rows.append({"path": rel, "label": cls, "subject": f"S{s}", "source_path": rel,
                             "sha256": f"{n:064x}", "width": 48, "height": 48, "face_found": ""})  # fmt: skip
                n += 1
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    within = manifest.groupby("label").cumcount()
    groups = {"stratified": within % 3 + 1, "subject": manifest["subject"].str[1].astype(int) % 3 + 1}
    plan = []
    for protocol, g in groups.items():
        for fold in (1, 2, 3):
            role = np.where(g == fold, "test", np.where(g == fold % 3 + 1, "val", "train"))
            plan += [{"protocol": protocol, "run": 1, "fold": fold, "image": p, "role": r}
                     for p, r in zip(manifest["path"], role, strict=True)]  # fmt: skip
    pd.DataFrame(plan).to_csv(tmp_path / "plan.csv", index=False)
    params = tmp_path / "params.yaml"
    params.write_text(
        "split: {n_runs: 1}\n"  # other sections are ignored
        "baselines:\n  image_size: 64\n  hidden_grid: [8]\n  cso_pca_components: 10\n"
        "  cso_iters: 60\n  bbo_iters: 120\n  hwt_c_grid: [0.1, 1.0]\n"
    )
    return root / "manifest.csv", tmp_path / "plan.csv", params


def _argv(synthetic, out, params=None):
    manifest, plan, p = synthetic
    return ["--manifest", str(manifest), "--plan", str(plan), "--out", str(out), "--params", str(params or p)]


def test_stage_end_to_end_beats_chance_and_resumes(synthetic, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(synthetic, out)) == 0
    summary = json.loads((out / "baselines_summary.json").read_text())
    for method in METHODS:
        for protocol in ("stratified", "subject"):
            files = sorted((out / method / protocol).glob("run*_fold*.json"))
            assert [f.name for f in files] == [f"run01_fold{k:02d}.json" for k in (1, 2, 3)]
            res = [load_fold(f) for f in files]
            assert sum(len(r.images) for r in res) == 84  # every image tested once per run
            acc = np.mean([r.accuracy for r in res])
            assert acc > 0.6, (method, protocol, acc)  # chance is 1/7
            s = summary["methods"][method]["protocols"][protocol]
            assert s["n_folds"] == 3 and s["oa_run_mean"] == pytest.approx(100 * acc, abs=1.0)
        assert json.loads((out / "run.json").read_text())["methods"][method]["n_computed"] == 6  # the run record
        assert summary["methods"][method]["description"] == DESCRIPTION[method]
    fold = load_fold(out / "bbo" / "subject" / "run01_fold02.json")
    assert fold.extra["selected"]["hidden"] == 8 and len(fold.probabilities[0]) == len(CLASSES)
    mtimes = {f: f.stat().st_mtime_ns for f in out.glob("*/*/*.json")}

    # rerun: everything resumed, nothing rewritten
    capsys.readouterr()
    assert main(_argv(synthetic, out)) == 0
    again = json.loads((out / "run.json").read_text())
    assert all(again["methods"][m]["n_resumed"] == 6 and again["methods"][m]["n_computed"] == 0 for m in METHODS)
    assert {f: f.stat().st_mtime_ns for f in out.glob("*/*/*.json")} == mtimes

    # a changed bbo setting recomputes bbo only
    manifest, plan, params = synthetic
    changed = tmp_path / "changed.yaml"
    changed.write_text(params.read_text().replace("bbo_iters: 120", "bbo_iters: 121"))
    assert main(_argv(synthetic, out, changed)) == 0
    third = json.loads((out / "run.json").read_text())
    assert third["methods"]["bbo"]["n_computed"] == 6
    assert third["methods"]["cso"]["n_computed"] == 0 and third["methods"]["hwt"]["n_computed"] == 0


def test_stage_repeats_exactly_and_defaults_without_section(synthetic, tmp_path):
    manifest, plan, params = synthetic
    p = tmp_path / "few.yaml"
    p.write_text(params.read_text() + "  methods: [cso]\n  max_folds: 1\n")
    assert main(_argv(synthetic, tmp_path / "a", p)) == 0
    assert main(_argv(synthetic, tmp_path / "b", p)) == 0
    for protocol in ("stratified", "subject"):
        a = load_fold(tmp_path / "a" / "cso" / protocol / "run01_fold01.json")
        b = load_fold(tmp_path / "b" / "cso" / protocol / "run01_fold01.json")
        assert a.probabilities == b.probabilities and a.y_pred == b.y_pred
        assert not (tmp_path / "a" / "cso" / protocol / "run01_fold02.json").exists()
    # a params file without the section is valid (all defaults); a bad value exits 2
    assert parse_section("baselines", None, BaselinesParams) == BaselinesParams()
    bad = tmp_path / "bad.yaml"
    bad.write_text("baselines: {image_size: 72}\n")
    assert main(_argv(synthetic, tmp_path / "c", bad)) == 2
    assert not (tmp_path / "c").exists()


def test_worker_processes_give_the_single_process_results(synthetic, tmp_path):
    # baselines.workers fans folds out over processes; every fold is seeded from its own key
    # and each process uses the same BLAS threads, so the fold files are byte-identical
    manifest, plan, params = synthetic
    one, two = tmp_path / "w1.yaml", tmp_path / "w2.yaml"
    one.write_text(params.read_text() + "  workers: 1\n")
    two.write_text(params.read_text() + "  workers: 2\n")
    assert main(_argv(synthetic, tmp_path / "a", one)) == 0
    assert main(_argv(synthetic, tmp_path / "b", two)) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").glob("*/*/run*_fold*.json"))
    assert len(files) == 3 * 2 * 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
