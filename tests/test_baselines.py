"""Wavelet baselines: batched optimisers, SLFN, features, params and the stage end to end
(synthetic data). The cross-check against a reference CSO/BBO is in test_swarm_reference.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import pywt
import torch
import yaml
from PIL import Image

from ferpipe.baselines import METHODS, REGISTRY, features, slfn, swarm, swarm_slfn
from ferpipe.baselines.stage import BaselinesParams, main
from ferpipe.config import CLASSES, ParamsError, parse_section
from ferpipe.foldio import load_fold


# ---------------------------------------------------------------- optimisers
def sphere(pop):
    return (pop**2).sum(-1)


def rastrigin(pop):
    return 10 * pop.shape[-1] + (pop**2 - 10 * torch.cos(2 * np.pi * pop)).sum(-1)


OPTS = {"cso": (swarm.cso, {"pop_size": 20, "iters": 200}), "bbo": (swarm.bbo, {"pop_size": 30, "iters": 300})}


@pytest.mark.parametrize("name", list(OPTS))
def test_optimizers_reach_sphere_optimum(name):
    fn, kw = OPTS[name]
    res = fn(sphere, -5.12, 5.12, [3], dim=5, **kw)
    assert res.f[0] < 1e-2 and np.abs(res.x[0]).max() < 0.1
    assert res.f[0] == pytest.approx(float(sphere(torch.from_numpy(res.x[0]))), rel=1e-5)
    assert np.all(np.diff(res.history[0]) <= 0)  # best-so-far never gets worse
    assert res.history[0, -1] == res.f[0] and res.iterations[0] == kw["iters"]


@pytest.mark.parametrize("name", list(OPTS))
def test_optimizers_reach_rastrigin_global_basin(name):
    fn, kw = OPTS[name]
    # the nearest local minima (one coordinate at ±1) have value ~1: < 0.3 means the global basin
    res = fn(rastrigin, -5.12, 5.12, [1], dim=2, **kw)
    assert res.f[0] < 0.3, res.f
    assert np.all(np.abs(res.x) <= 5.12)


@pytest.mark.parametrize("name", list(OPTS))
def test_optimizers_repeat_exactly_with_a_seed(name):
    fn, kw = OPTS[name]
    kw = {**kw, "iters": 30}
    a = fn(rastrigin, -5.12, 5.12, [42], dim=4, **kw)
    b = fn(rastrigin, -5.12, 5.12, [42], dim=4, **kw)
    c = fn(rastrigin, -5.12, 5.12, [43], dim=4, **kw)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.history, b.history) and a.n_evals == b.n_evals
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("name", list(OPTS))
def test_a_problem_does_not_depend_on_its_batch(name):
    # three problems with boxes of their own, solved together and one by one: same bits
    fn, kw = OPTS[name]
    kw = {**kw, "iters": 40}
    lo = np.array([[-5.0, -5, -5], [1.0, -2.0, 0.5], [-1.0, -1, -1]])
    hi = np.array([[5.0, 5, 5], [2.0, -1.0, 3.0], [3.0, 3, 3]])
    together = fn(rastrigin, lo, hi, [7, 8, 9], **kw)
    for k in range(3):
        alone = fn(rastrigin, lo[k : k + 1], hi[k : k + 1], [7 + k], **kw)
        assert np.array_equal(together.x[k], alone.x[0]) and np.array_equal(together.history[k], alone.history[0])
        assert np.all(together.x[k] >= lo[k]) and np.all(together.x[k] <= hi[k])
    # the sphere's optimum on problem 1's box is its corner nearest 0
    res = fn(sphere, lo, hi, [0, 1, 2], **{**kw, "iters": 150})
    assert np.allclose(res.x[1], [1.0, -1.0, 0.5], atol=0.05)


def test_bad_optimizer_settings_are_named():
    with pytest.raises(ValueError, match="upper bound must exceed"):
        swarm.cso(sphere, 1.0, 1.0, [0], dim=2)
    with pytest.raises(ValueError, match="elites"):
        swarm.bbo(sphere, -1, 1, [0], dim=2, pop_size=4, elites=4)
    with pytest.raises(ValueError, match="subset"):
        swarm.cso(sphere, -1, 1, [0], dim=2, patience=5)  # a plain function cannot drop finished problems


# ---------------------------------------------------------------- SLFN
def _reference_fitness(vec, x, y, h, c, fitness, error_weight):
    w1, b1, w2, b2 = slfn.unpack(vec.astype(np.float64), x.shape[1], h, c)
    z = np.tanh(x @ w1.T + b1) @ w2.T + b2
    prob = slfn.softmax(z)
    loss = -np.log(prob[np.arange(len(y)), y]).mean() if fitness == "ce" else ((prob - np.eye(c)[y]) ** 2).sum(1).mean()
    err = (z[np.arange(len(y)), y] < z.max(1)).mean()
    return loss + error_weight * err, err


@pytest.mark.parametrize("fitness", ["ce", "mse"])
def test_fold_batch_scores_each_fold_on_its_own_rows(fitness):
    rng = np.random.default_rng(0)
    d, h, c = 4, 3, 7
    xs = [rng.standard_normal((n, d)).astype(np.float32) for n in (11, 9)]  # folds of different sizes
    ys = [rng.integers(0, c, len(x)) for x in xs]
    batch = slfn.FoldBatch(xs, ys, h, c, d_pad=d, n_pad=16, fitness=fitness, error_weight=0.1)
    pop = rng.standard_normal((2, 5, slfn.n_params(d, h, c))).astype(np.float32)
    got = batch(torch.from_numpy(pop)).numpy()
    err = batch.train_error(torch.from_numpy(pop[:, 0])).numpy()
    for k in range(2):
        for i in range(5):
            ref, ref_err = _reference_fitness(pop[k, i], xs[k], ys[k], h, c, fitness, 0.1)
            assert got[k, i] == pytest.approx(ref, rel=1e-4)
        assert err[k] == pytest.approx(_reference_fitness(pop[k, 0], xs[k], ys[k], h, c, fitness, 0.1)[1])
    sub = batch.subset(torch.tensor([1]))
    assert np.allclose(sub(torch.from_numpy(pop[1:])).numpy(), got[1:])
    z = slfn.logits(pop[0, 2], xs[0], h, c)
    assert z.shape == (11, c) and np.allclose(slfn.softmax(z).sum(1), 1)
    assert np.allclose(slfn.bounds(d, h, c, 3.0)[:1], 3 / np.sqrt(d))


def separable(n_classes=7, per_class=20, dim=6, seed=5):
    """Well-separated Gaussian clusters: a network that cannot fit these is under-trained."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    return (centres[y] + rng.normal(0, 0.3, (len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("method", ["cso", "bbo"])
def test_default_budget_fits_a_separable_training_set(method):
    # the defaults of params.yaml's schema: the optimiser must fit (>= 0.95) what is separable
    x, y = separable()
    p = REGISTRY[method].Params()
    x = features.standardize(x, features.fit_standardizer(x))
    fold = swarm_slfn.PreparedFold(x, y, x, y, x, {})
    opt = REGISTRY[method].optimizer_kwargs(p)
    ((_, prob, info, _),) = swarm_slfn.fit_folds([fold], [np.random.SeedSequence(1)], p, method, opt, n_classes=7, chunk=1)
    assert info["selected"]["train_accuracy"] >= 0.95, info["selected"]
    assert (prob.argmax(1) == y).mean() >= 0.95 and not info["selected"]["under_trained"]
    # it fits well before the budget ends, then stops once the training error stays put
    assert p.patience <= info["selected"]["iterations"] < p.iters


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
    assert pca[1].shape == (3, 64) and pca[2] == pytest.approx(1.0)  # at most n_train - 1 components
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


def test_pca_keeps_the_components_for_the_variance_asked():
    rng = np.random.default_rng(0)
    # 3 strong directions, then noise: 95 % of the variance needs exactly the 3
    x = rng.standard_normal((50, 3)) @ np.diag([10.0, 8.0, 6.0]) @ rng.standard_normal((3, 20))
    x += rng.normal(0, 0.1, (50, 20))
    mean, comp, explained = features.fit_pca(x, variance=0.95)
    assert comp.shape == (3, 20) and 0.95 <= explained < 1.0
    assert features.fit_pca(x, variance=0.95, max_components=2)[1].shape == (2, 20)
    assert features.fit_pca(x, variance=1.0)[1].shape[0] == 20
    with pytest.raises(ValueError, match="exactly one"):
        features.fit_pca(x)


def test_image_size_must_suit_the_levels():
    with pytest.raises(features.FeatureError, match=r"bbo: image_size=40 must be divisible by 2\*\*levels=16"):
        features.swe_features(np.zeros((1, 40, 40)), levels=4)


# ---------------------------------------------------------------- params and registry
def test_nested_params_name_the_bad_key():
    with pytest.raises(ParamsError, match=r"baselines.bbo.image_size=72 must be divisible by 2\*\*levels=16"):
        parse_section("baselines", {"bbo": {"image_size": 72}}, BaselinesParams)
    p = parse_section("baselines", {"methods": ["hwt"], "hwt": {"image_size": 100, "levels": 2}}, BaselinesParams)
    assert p.hwt.image_size == 100 and p.cso == REGISTRY["cso"].Params()  # untouched methods keep their defaults
    with pytest.raises(ParamsError, match="methods"):
        parse_section("baselines", {"methods": ["sift"]}, BaselinesParams)
    with pytest.raises(ParamsError, match=r"unknown key\(s\) in 'baselines.cso': itres"):
        parse_section("baselines", {"cso": {"itres": 3}}, BaselinesParams)
    with pytest.raises(ParamsError, match="baselines.cso.pca_variance"):
        parse_section("baselines", {"cso": {"pca_variance": 1.5}}, BaselinesParams)
    with pytest.raises(ParamsError, match="baselines.bbo.elites"):
        parse_section("baselines", {"bbo": {"pop": 4, "elites": 4}}, BaselinesParams)


def test_a_profile_overrides_one_nested_key(tmp_path):
    from ferpipe.config import load_section

    base, profile = tmp_path / "params.yaml", tmp_path / "profile.yaml"
    base.write_text("baselines:\n  cso: {iters: 100, hidden: 7}\n")
    profile.write_text("baselines:\n  cso: {iters: 5}\n")
    p = load_section("baselines", [base, profile])
    assert (p.cso.iters, p.cso.hidden) == (5, 7)


def test_every_registered_method_has_the_interface():
    assert METHODS == ("hwt", "cso", "bbo", "nn_pixels")
    for name, mod in REGISTRY.items():
        assert mod.NAME == name and hasattr(BaselinesParams(), name)
        p = mod.Params()
        p.check()
        assert len(mod.describe(p)) > 100 and callable(mod.features_of) and callable(mod.fit_folds)


# ---------------------------------------------------------------- the stage end to end
SMALL = (
    "split: {n_runs: 1}\n"  # other sections are ignored
    "baselines:\n  threads: 1\n  hwt: {image_size: 64, c_grid: [0.1, 1.0]}\n"
    "  cso: {image_size: 64, pca_variance: 0.95, pca_max_components: 10, hidden: 8, iters: 150, patience: 20}\n"
    "  bbo: {image_size: 64, hidden: 8, iters: 200, patience: 0}\n"
)


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
    params.write_text(SMALL)
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
        # the report's description is written from the settings that ran
        p = parse_section("baselines", yaml.safe_load(synthetic[2].read_text())["baselines"], BaselinesParams)
        assert summary["methods"][method]["description"] == REGISTRY[method].describe(getattr(p, method))
    assert "200 generations" in summary["methods"]["bbo"]["description"]
    assert "150 iterations" in summary["methods"]["cso"]["description"]
    fold = load_fold(out / "bbo" / "subject" / "run01_fold02.json")
    assert fold.extra["selected"]["hidden"] == 8 and len(fold.probabilities[0]) == len(CLASSES)
    assert fold.extra["selected"]["iterations"] == 200 and 0 <= fold.extra["selected"]["train_accuracy"] <= 1
    cso_fold = load_fold(out / "cso" / "stratified" / "run01_fold01.json").extra["selected"]
    assert 1 <= cso_fold["pca_components"] <= 10 and cso_fold["n_features"] == cso_fold["pca_components"]
    cso_iters = [load_fold(f).extra["selected"]["iterations"] for f in (out / "cso").glob("*/*.json")]
    assert min(cso_iters) < 150 and all(20 <= i <= 150 for i in cso_iters)  # some folds stopped on a plateau
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
    changed.write_text(params.read_text().replace("iters: 200", "iters: 201"))
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
    bad.write_text("baselines: {cso: {image_size: 100}}\n")
    assert main(_argv(synthetic, tmp_path / "c", bad)) == 2
    assert not (tmp_path / "c").exists()


def test_batch_size_does_not_change_a_single_bit(synthetic, tmp_path):
    # baselines.chunk batches folds into one optimiser run; each fold has its own random
    # stream and padding, and a fold that stops early (cso: patience 20) leaves its batch
    # without touching the others, so one-fold batches and one big batch write identical files
    manifest, plan, params = synthetic
    one, many = tmp_path / "c1.yaml", tmp_path / "c50.yaml"
    one.write_text(params.read_text() + "  chunk: 1\n")
    many.write_text(params.read_text() + "  chunk: 50\n")
    assert main(_argv(synthetic, tmp_path / "a", one)) == 0
    assert main(_argv(synthetic, tmp_path / "b", many)) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").glob("*/*/run*_fold*.json"))
    assert len(files) == 4 * 2 * 3  # hwt, cso, bbo, nn_pixels x 2 protocols x 3 folds
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_nn_pixels_equals_a_brute_force_nearest_neighbour():
    from ferpipe.baselines import nn_pixels
    from ferpipe.baselines.base import FoldContext

    rng = np.random.default_rng(5)
    images = rng.uniform(size=(30, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    idx = np.arange(30)
    folds = [("stratified", 1, 1, {"train": idx[:20], "val": idx[20:25], "test": idx[25:]}),
             ("stratified", 1, 2, {"train": idx[10:], "val": idx[5:10], "test": idx[:5]})]  # fmt: skip
    p = nn_pixels.Params(image_size=8)
    feats = nn_pixels.features_of(images, p)
    out = list(nn_pixels.fit_folds(feats, y, folds, p, FoldContext(3, 20, 1, [])))
    for (_i, prob, info, _s), (*_, roles) in zip(out, folds, strict=True):
        def unit(a):
            a = a.reshape(-1) - a.mean()
            return a / np.linalg.norm(a)

        ref = np.concatenate([roles["train"], roles["val"]])  # reference: train+val
        expect = [y[max(ref, key=lambda j, t=t: float(unit(images[t]) @ unit(images[j])))] for t in roles["test"]]
        assert prob.argmax(1).tolist() == expect and np.allclose(prob.sum(1), 1)
        assert 0 <= info["selected"]["val_accuracy"] <= 1


def test_swarm_baselines_refuse_a_dataset_above_their_size_limit(synthetic, tmp_path, capsys):
    manifest, plan, params = synthetic  # 84 images
    small = tmp_path / "limit.yaml"
    small.write_text(params.read_text().replace("  cso: {", "  cso: {max_images: 50, "))
    assert "max_images: 50" in small.read_text()
    assert main(_argv(synthetic, tmp_path / "o", small)) == 2
    err = capsys.readouterr().err
    assert "baselines.cso: 84 images, more than baselines.cso.max_images = 50" in err and "0 = no limit" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(params.read_text().replace("  cso: {", "  cso: {max_images: -1, "))
    assert main(_argv(synthetic, tmp_path / "o2", bad)) == 2
    assert "baselines.cso.max_images" in capsys.readouterr().err
