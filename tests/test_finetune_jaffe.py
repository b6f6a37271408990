"""Fine-tuning on the real JAFFE images: a short run must clearly learn (slow).

One stratified fold of run 1, 64 px, 3 epochs, fp32, 2 threads (about 20 s here). The floor
is measured, not guessed: this configuration scored 0.64 test / 0.73 validation accuracy
(chance is 1/7 = 0.14; with shuffled training labels 0.18); the floor of 0.45 leaves room for
other CPUs, and a broken loop
(no gradient clipping, train-mode BatchNorm, labels shuffled, ...) falls to ~0.14-0.30.
"""

import numpy as np
import pytest
import torch
from conftest import SHARED_JAFFE, jaffe_available

from ferpipe import config, cv, data, finetune, ingest, split, train
from ferpipe.config import IngestParams, SplitParams

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not jaffe_available(), reason="../shared/data/jaffe not present")]

FLOOR = 0.45


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    from pathlib import Path

    root = tmp_path_factory.mktemp("jaffe64")
    m = ingest.ingest(SHARED_JAFFE, root / "ing", IngestParams(image_size=64))
    plan, _ = split.make_plan(m, SplitParams())
    plan = plan[(plan.protocol == "stratified") & (plan.run == 1) & (plan.fold == 1)]
    _, _, _, roles = next(cv.fold_indices(plan, cv.check_plan_matches(plan, m)))
    images = data.load_images_uint8(m, root / "ing", 64)
    weights = Path(config.WEIGHTS_FILE)
    if not weights.exists():
        pytest.skip("models/resnet50_imagenet.safetensors missing (dvc repro weights)")
    from safetensors.torch import load_file

    return images, data.labels_of(m), roles, load_file(str(weights))


def params(**kw):
    # lr 1e-3: at 64 px and 3 epochs the default lr (1e-2, chosen at 224 px over 15 epochs) has not
    # settled (0.36 test here); 1e-3 is the rate these measurements were made with
    raw = dict(config.read_params_file(config.PARAMS_FILE)["train"], mode="finetune", image_size=64, epochs=3,
               threads=2, precision="fp32", lr=0.001)  # fmt: skip
    raw.update(kw)
    return config.parse_section("train", raw, train.TrainParams)


def test_short_finetune_learns_and_restores_its_best_checkpoint(fold):
    images, y, roles, pretrained = fold
    p = params()
    dev, dt = train.resolve_runtime(p)
    model, info = finetune.finetune(pretrained, images, y, roles, p, dev, dt, seed=1, n_classes=7)
    pt, _ = finetune.evaluate(model, images, y, roles["test"], p, dev, dt, 7)
    test_acc = float((pt.argmax(1) == y[roles["test"]]).mean())
    print(f"test accuracy {test_acc:.3f}, {info['selected']}")
    assert test_acc >= FLOOR, f"test accuracy {test_acc:.3f} < floor {FLOOR}: {info['selected']}"
    # the restored checkpoint is the one whose validation accuracy was reported
    pv, _ = finetune.evaluate(model, images, y, roles["val"], p, dev, dt, 7)
    assert float((pv.argmax(1) == y[roles["val"]]).mean()) == pytest.approx(info["selected"]["val_accuracy"])
    assert info["selected"]["val_accuracy"] == max(info["curves"]["val_accuracy"])
    # evaluation is deterministic and never augmented (same probabilities with augment on or off)
    pt2, _ = finetune.evaluate(model, images, y, roles["test"], params(augment=False), dev, dt, 7)
    assert np.array_equal(pt, pt2)


def test_shuffled_labels_do_not_pass_the_floor(fold):
    """The floor can fail: the same run on permuted training labels stays near chance."""
    images, y, roles, pretrained = fold
    p = params()
    dev, dt = train.resolve_runtime(p)
    y_bad = y.copy()
    y_bad[roles["train"]] = np.random.default_rng(0).permutation(y[roles["train"]])
    torch.manual_seed(0)
    model, _ = finetune.finetune(pretrained, images, y_bad, roles, p, dev, dt, seed=1, n_classes=7)
    pt, _ = finetune.evaluate(model, images, y, roles["test"], p, dev, dt, 7)
    acc = float((pt.argmax(1) == y[roles["test"]]).mean())
    print(f"shuffled-label test accuracy {acc:.3f}")
    assert acc < FLOOR
