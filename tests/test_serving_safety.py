"""The prediction front door cannot answer wrongly: thread safety, checked faces, bounded
requests, errors as errors, the OOD distance (unit level; the real server: test_serve.py)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json

import numpy as np
import pytest
from conftest import SHARED_JAFFE, jaffe_available
from PIL import Image

from ferpipe import ood, rest, serving
from ferpipe.imaging import FaceCropper


def jaffe_gray(n: int) -> list[np.ndarray]:
    if not jaffe_available():
        pytest.skip(f"real faces needed: {SHARED_JAFFE} is missing")
    files = sorted(SHARED_JAFFE.glob("*.tiff"))[:n]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


@pytest.mark.slow
def test_one_face_cropper_shared_by_8_threads_gives_the_sequential_boxes():
    """The bug behind issue 25: one OpenCV cascade called from 8 threads changed 393/400 boxes."""
    grays = jaffe_gray(50)
    cropper = FaceCropper(0.2)
    sequential = [cropper.box(g) for g in grays]
    assert sum(b is not None for b in sequential) >= 45
    with cf.ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda i: cropper.box(grays[i % 50]), range(400)))
    assert [i for i, b in enumerate(concurrent) if b != sequential[i % 50]] == []


# ---------------------------------------------------------------- per-image checks
def png(shape, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("value", "reason"), [
    (12, "expected a base64 string, got int"),
    ("", "empty string"),
    ("  \n ", "empty string"),
    ("@@@@", "not valid base64"),
])  # fmt: skip
def test_b64_refuses_what_is_not_base64(value, reason):
    with pytest.raises(serving.ImageRejected, match=reason):
        serving.b64_to_bytes(value)


def test_b64_accepts_line_breaks_and_data_uris():
    raw = png((50, 50))
    enc = base64.b64encode(raw).decode()
    assert serving.b64_to_bytes("\n".join(enc[i : i + 76] for i in range(0, len(enc), 76))) == raw
    assert serving.b64_to_bytes("data:image/png;base64," + enc) == raw


def test_decode_refuses_tiny_and_huge_images_before_decoding():
    with pytest.raises(serving.ImageRejected, match="1 x 1 px is smaller than 32 px"):
        serving.decode_image(png((1, 1)))
    with pytest.raises(serving.ImageRejected, match="over the limit of 1,000"):
        serving.decode_image(png((60, 60)), max_pixels=1000)
    with pytest.raises(serving.ImageRejected, match="empty image"):
        serving.decode_image(b"")
    assert serving.decode_image(png((48, 60))).size == (60, 48)


# ---------------------------------------------------------------- request parsing
LIMITS = rest.Limits(max_body_bytes=10_000, max_images=3)


def parse(payload, content_type="application/json"):
    return rest.parse_request(json.dumps(payload).encode(), content_type, LIMITS)


@pytest.mark.parametrize("payload", [
    {"dataframe_split": {"columns": ["image"], "data": [["a"], ["b"]]}},
    {"dataframe_split": {"columns": ["id", "image"], "data": [[1, "a"], [2, "b"]]}},
    {"dataframe_records": [{"image": "a"}, {"image": "b"}]},
    {"inputs": ["a", "b"]},
    {"instances": [{"image": "a"}, {"image": "b"}]},
    {"inputs": {"image": ["a", "b"]}},
])  # fmt: skip
def test_every_mlflow_input_format_gives_the_images(payload):
    assert parse(payload) == (["a", "b"], {})


@pytest.mark.parametrize(("payload", "content_type", "status", "reason"), [
    ({"inputs": ["a"]}, None, 415, "got none"),
    ({"inputs": ["a"]}, "text/csv", 415, "got 'text/csv'"),
    ([1, 2], "application/json", 400, "got a list"),
    ({"inputs": ["a"], "extra": 1}, "application/json", 400, "exactly one of"),
    ({"inputs": []}, "application/json", 400, "no images"),
    ({"inputs": ["a"] * 4}, "application/json", 413, "4 images in one request; the limit is 3"),
    ({"inputs": ["a"], "params": {"face_crop": "bogus"}}, "application/json", 400, "face_crop must be one of"),
    ({"inputs": ["a"], "params": {"face_check": "yes"}}, "application/json", 400, "face_check must be true or false"),
    ({"inputs": ["a"], "params": {"zoom": 2}}, "application/json", 400, "unknown option(s) ['zoom']"),
    ({"dataframe_split": {"columns": ["image"], "data": [["a", "b"]]}}, "application/json", 400, "rows of 1 value"),
])  # fmt: skip
def test_a_bad_request_names_what_is_wrong(payload, content_type, status, reason):
    with pytest.raises(rest.RequestError) as exc:
        parse(payload, content_type)
    assert exc.value.status == status and reason in exc.value.reason


def test_json_nested_too_deeply_is_a_400_not_a_crash():
    with pytest.raises(rest.RequestError) as exc:
        rest.parse_request(b'{"inputs":' + b"[" * 100_000, "application/json", rest.Limits())
    assert exc.value.status == 400 and "nested too deeply" in exc.value.reason


def test_invalid_json_is_named_without_echoing_it():
    with pytest.raises(rest.RequestError) as exc:
        rest.parse_request(b'{"inputs": [SECRET', "application/json", LIMITS)
    assert exc.value.status == 400 and "line 1 column" in exc.value.reason and "SECRET" not in exc.value.reason


def test_a_batch_where_every_image_failed_is_422_and_counts_them():
    ok = {"label": "happy", "error": "", "anger": 0.1}
    bad = {"label": None, "error": "no face found", "anger": float("nan")}
    assert rest.answer([ok, bad])[0] == 200
    status, body = rest.answer([bad, bad])
    assert status == 422 and body["n_failed"] == 2 and body["predictions"][0]["anger"] is None


# ---------------------------------------------------------------- OOD distance
def test_ood_distance_is_zero_on_training_rows_and_grows_away_from_them():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 16))
    ref = ood.Reference.fit(train)
    assert np.allclose(ref.distance(train), 0, atol=1e-5)
    near = train[:5] + 0.05 * rng.normal(size=(5, 16))
    far = rng.normal(size=(5, 16)) * 3 + 10
    assert ref.distance(near).max() < ref.distance(far).min()
    brute = [1 - max(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for b in (train - ref.mu) / ref.sd)
             for a in (far - ref.mu) / ref.sd]  # fmt: skip
    assert np.allclose(ref.distance(far), brute, atol=1e-5)


def test_ood_threshold_comes_from_validation_images_and_flags_about_alpha_of_test_images():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(3, 16))  # in-distribution features live near a 3-d subspace
    feats = rng.normal(size=(600, 3)) @ basis + 0.1 * rng.normal(size=(600, 16))
    idx = np.arange(600)
    folds = [("subject", 1, k + 1, {"test": idx[k::3], "val": idx[(k + 1) % 3 :: 3], "train": idx[(k + 2) % 3 :: 3]})
             for k in range(3)]  # fmt: skip
    cal = ood.calibrate(feats, folds, alpha=0.05)
    assert cal["protocol"] == "subject" and cal["n_validation"] == 600 and cal["n_test"] == 600
    assert cal["validation_flag_rate"] <= 0.05
    assert cal["test_flag_rate"] <= 0.10  # same distribution as the validation images
    ref = ood.Reference.fit(feats)
    unlike = rng.normal(size=(100, 16)) * feats.std(0) + feats.mean(0)  # same scale, no subspace
    assert (ref.distance(unlike) > cal["threshold"]).mean() > 0.9
