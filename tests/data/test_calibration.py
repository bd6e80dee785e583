"""Calibration data follows converter_lite's file selection, BIN rules and image preprocessing (§10)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from calibration_reference import iter_samples
from PIL import Image

from ptq_core.config.model import CalibrationInput, DataPreprocessParam, QuantConfig
from ptq_core.data import calibration
from ptq_core.data.calibration import load_sample, sample_digest, write_shards
from ptq_core.data.calibration_files import check_inputs, list_calibration_files
from ptq_core.data.image_preprocess import preprocess_image
from ptq_core.errors import DataError
from ptq_core.onnxgraph.session import InputSpec


def make_cfg(folders: dict[str, Path], size: int, input_type: str = "BIN", **params) -> QuantConfig:
    data = DataPreprocessParam(
        calibrate_path=tuple(CalibrationInput(name, str(folder)) for name, folder in folders.items()),
        calibrate_size=size,
        input_type=input_type,
        **params,
    )
    return QuantConfig(source="test.cfg", data_preprocess_param=data)


def write_bins(folder: Path, arrays: list[np.ndarray], prefix: str = "s") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(arrays):
        path = folder / f"{prefix}{i:03d}.bin"
        path.write_bytes(np.ascontiguousarray(arr).tobytes())
        paths.append(path)
    return paths


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)
    return path


def image_params(**kw) -> DataPreprocessParam:
    return DataPreprocessParam(input_type="IMAGE", **kw)


# 2x2 RGB test image: red, green / blue, (10, 20, 30)
PIXELS = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# file selection


def test_files_are_the_first_n_in_bytewise_order_hidden_files_included(tmp_path):
    names = ["b.bin", "a.bin", "B.bin", ".hidden", "_x", "a10", "a2", "\u00e9.bin"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    cfg = make_cfg({"in": tmp_path}, 5)
    files = list_calibration_files(cfg)["in"]
    # bytes: '.'=2E < 'B'=42 < '_'=5F < 'a'=61 ...; 'a.bin' < 'a10' < 'a2' (no natural sort); UTF-8 last
    assert [p.name for p in files] == [".hidden", "B.bin", "_x", "a.bin", "a10"]
    cfg_all = make_cfg({"in": tmp_path}, len(names))
    assert [p.name for p in list_calibration_files(cfg_all)["in"]][-3:] == ["a2", "b.bin", "\u00e9.bin"]


def test_subfolders_are_skipped_and_reported(tmp_path, caplog):
    (tmp_path / "0sub").mkdir()
    for n in ["a", "b"]:
        (tmp_path / n).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="ptq_core.data.calibration_files"):
        files = list_calibration_files(make_cfg({"in": tmp_path}, 2))["in"]
    assert [p.name for p in files] == ["a", "b"]
    assert "0sub/" in caplog.text


def test_fewer_files_than_calibrate_size(tmp_path):
    write_bins(tmp_path, [np.zeros(1, np.float32)] * 3)
    with pytest.raises(DataError, match=r"3 files, calibrate_size is 5") as err:
        list_calibration_files(make_cfg({"in": tmp_path}, 5))
    assert str(tmp_path) in str(err.value)


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as err:
        list_calibration_files(make_cfg({"in": missing}, 1))
    assert str(missing) in str(err.value) and "test.cfg" in str(err.value)


def test_folder_that_is_a_file_or_empty(tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        list_calibration_files(make_cfg({"in": f}, 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files"):
        list_calibration_files(make_cfg({"in": tmp_path / "empty"}, 1))


def test_no_calibration_configured_lists_nothing():
    assert list_calibration_files(QuantConfig()) == {}


# ---------------------------------------------------------------------------------------------
# inputs


def test_input_name_not_in_model_suggests_closest(tmp_path):
    cfg = make_cfg({"imput": tmp_path}, 1)
    specs = [InputSpec("input", np.float32, (1, 4)), InputSpec("mask", np.int64, (1, 4))]
    with pytest.raises(DataError, match=r"'imput', which is not a model input \(did you mean 'input'\?\)"):
        check_inputs(cfg, specs)


def test_every_model_input_needs_a_folder(tmp_path):
    cfg = make_cfg({"input": tmp_path}, 1)
    specs = [InputSpec("input", np.float32, (1, 4)), InputSpec("mask", np.int64, (1, 4))]
    with pytest.raises(DataError, match="no folder for model input 'mask'"):
        check_inputs(cfg, specs)


def test_multiple_inputs_pair_file_i_of_each_folder_in_round_i(tmp_path):
    write_bins(tmp_path / "x", [np.full((1, 2), i, np.float32) for i in range(3)])
    write_bins(tmp_path / "ids", [np.full((1, 4), 10 + i, np.int32) for i in range(3)], prefix="t")
    cfg = make_cfg({"x": tmp_path / "x", "ids": tmp_path / "ids"}, 3)
    specs = [InputSpec("ids", np.int32, (1, 4)), InputSpec("x", np.float32, (1, 2))]
    rounds = list(iter_samples(cfg, specs))
    assert [i for i, _ in rounds] == [0, 1, 2]
    for i, feeds in rounds:
        assert set(feeds) == {"x", "ids"}
        assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (1, 2) and (feeds["x"] == i).all()
        assert feeds["ids"].dtype == np.int32 and feeds["ids"].shape == (1, 4) and (feeds["ids"] == 10 + i).all()
    np.testing.assert_array_equal(load_sample(cfg, specs, 2)["ids"], rounds[2][1]["ids"])


# ---------------------------------------------------------------------------------------------
# BIN


def test_bin_bytes_are_copied_unchanged(tmp_path):
    arr = np.arange(12, dtype=np.int64).reshape(1, 12) * 1000003
    write_bins(tmp_path, [arr])
    feeds = load_sample(make_cfg({"ids": tmp_path}, 1), [InputSpec("ids", np.int64, (1, 12))], 0)
    assert feeds["ids"].dtype == np.int64
    np.testing.assert_array_equal(feeds["ids"], arr)


def test_bin_size_mismatch_message(tmp_path):
    (path,) = write_bins(tmp_path, [np.zeros(10, np.float32)])
    spec = InputSpec("x", np.float32, (1, 3, 2, 2))
    with pytest.raises(DataError) as err:
        load_sample(make_cfg({"x": tmp_path}, 1), [spec], 0)
    msg = str(err.value)
    assert str(path) in msg and "40 bytes" in msg and "exactly 48 bytes" in msg
    assert "1x3x2x2" in msg and "float32" in msg and "\n" not in msg


def test_bin_nan_names_file_and_first_bad_index(tmp_path):
    arr = np.zeros((1, 8), np.float32)
    arr[0, 5] = np.nan
    arr[0, 7] = np.inf
    (path,) = write_bins(tmp_path, [arr])
    with pytest.raises(DataError, match=r"element 5 \(index \(0, 5\)\) is nan") as err:
        load_sample(make_cfg({"x": tmp_path}, 1), [InputSpec("x", np.float32, (1, 8))], 0)
    assert str(path) in str(err.value)


def test_nhwc_bin_files_are_transposed_to_nchw(tmp_path):
    nhwc = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)  # N, H, W, C
    write_bins(tmp_path, [nhwc])
    cfg = make_cfg({"x": tmp_path}, 1)
    spec = InputSpec("x", np.float32, (1, 4, 2, 3))  # N, C, H, W
    got = load_sample(cfg, [spec], 0, input_format="NHWC")["x"]
    np.testing.assert_array_equal(got, nhwc.transpose(0, 3, 1, 2))
    assert got.flags.c_contiguous
    # default: the files hold the model's own layout, bytes reshaped as they are
    np.testing.assert_array_equal(load_sample(cfg, [spec], 0)["x"], nhwc.reshape(1, 4, 2, 3))


# ---------------------------------------------------------------------------------------------
# IMAGE preprocessing


def test_image_to_format_rgb_bgr_and_default_bgr(tmp_path):
    path = write_png(tmp_path / "a.png", PIXELS)
    rgb = preprocess_image(path, image_params(image_to_format="RGB"))
    assert rgb.dtype == np.float32 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb, PIXELS.astype(np.float32))
    bgr = preprocess_image(path, image_params(image_to_format="BGR"))
    np.testing.assert_array_equal(bgr[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(bgr[1, 1], [30, 20, 10])
    # unset: converter_lite keeps cv::imread's BGR
    np.testing.assert_array_equal(preprocess_image(path, image_params()), bgr)


def test_gray_is_opencv_601_luma(tmp_path):
    path = write_png(tmp_path / "a.png", PIXELS)
    gray = preprocess_image(path, image_params(image_to_format="GRAY"))
    assert gray.shape == (2, 2, 1) and gray.dtype == np.float32
    # (B*1868 + G*9617 + R*4899 + 8192) >> 14: red 76, green 150, blue 29, (10,20,30) -> 18
    np.testing.assert_array_equal(gray[:, :, 0], [[76, 150], [29, 18]])


def test_normalize_per_channel_without_div_255(tmp_path):
    path = write_png(tmp_path / "a.png", np.array([[[9, 10, 11]]]))
    out = preprocess_image(path, image_params(image_to_format="RGB", normalize_mean=(1, 2, 3),
                                              normalize_std=(2, 4, 8)))
    np.testing.assert_array_equal(out, [[[4.0, 2.0, 1.0]]])
    assert out.dtype == np.float32


def test_resize_nearest_exact(tmp_path):
    path = write_png(tmp_path / "a.png", PIXELS)
    out = preprocess_image(path, image_params(image_to_format="RGB", normalize_mean=(0.5, 0.5, 0.5),
                                              normalize_std=(1, 1, 1), resize_method="NEAREST",
                                              resize_width=4, resize_height=4))
    expected = np.repeat(np.repeat(PIXELS.astype(np.float32) - 0.5, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(out, expected)


def test_resize_linear_and_cubic_give_requested_size(tmp_path):
    path = write_png(tmp_path / "a.png", np.full((3, 5, 3), 77))
    for method in ("LINEAR", "CUBIC"):
        out = preprocess_image(path, image_params(resize_method=method, resize_width=7, resize_height=2))
        assert out.shape == (2, 7, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, 77.0, atol=1e-4)  # a flat image stays flat


def test_center_crop_offsets(tmp_path):
    h, w = 4, 5
    img = np.zeros((h, w, 3), np.uint8)
    for y in range(h):
        for x in range(w):
            img[y, x] = (10 * x + y, 0, 0)
    path = write_png(tmp_path / "a.png", img)
    out = preprocess_image(path, image_params(image_to_format="RGB", center_crop_width=2, center_crop_height=3))
    # x0 = floor((5-2)/2) = 1, y0 = floor((4-3)/2) = 0
    np.testing.assert_array_equal(out[:, :, 0], [[10, 20], [11, 21], [12, 22]])


def test_center_crop_bigger_than_image_fails(tmp_path):
    path = write_png(tmp_path / "a.png", PIXELS)
    with pytest.raises(DataError, match=r"center crop 3x1 .* bigger than the image, which is 2x2") as err:
        preprocess_image(path, image_params(center_crop_width=3, center_crop_height=1))
    assert str(path) in str(err.value)


def test_image_fits_nchw_by_transpose_and_nhwc_as_is(tmp_path):
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    write_png(tmp_path / "a.png", img)
    cfg = make_cfg({"x": tmp_path}, 1, "IMAGE", image_to_format="RGB")
    nchw = load_sample(cfg, [InputSpec("x", np.float32, (1, 3, 2, 3))], 0)["x"]
    np.testing.assert_array_equal(nchw, img.transpose(2, 0, 1)[None].astype(np.float32))
    nhwc = load_sample(cfg, [InputSpec("x", np.float32, (1, 2, 3, 3))], 0)["x"]
    np.testing.assert_array_equal(nhwc, img[None].astype(np.float32))
    assert nchw.dtype == nhwc.dtype == np.float32


def test_image_not_fitting_the_input_names_both_shapes(tmp_path):
    path = write_png(tmp_path / "a.png", PIXELS)
    cfg = make_cfg({"x": tmp_path}, 1, "IMAGE")
    with pytest.raises(DataError, match=r"HWC 2x2x3 does not fit model input 'x' of shape 1x3x4x4") as err:
        load_sample(cfg, [InputSpec("x", np.float32, (1, 3, 4, 4))], 0)
    assert str(path) in str(err.value)


def test_palette_alpha_and_16bit_pngs_decode_to_8bit_rgb(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([200, 100, 50, 1, 2, 3])
    pal.putdata([0, 1])
    pal.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(preprocess_image(tmp_path / "p.png", image_params(image_to_format="RGB")),
                                  [[[200, 100, 50], [1, 2, 3]]])

    Image.new("RGBA", (1, 1), (10, 20, 30, 0)).save(tmp_path / "rgba.png")  # alpha dropped, not blended
    np.testing.assert_array_equal(preprocess_image(tmp_path / "rgba.png", image_params(image_to_format="RGB")),
                                  [[[10, 20, 30]]])

    Image.new("LA", (1, 1), (77, 5)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(preprocess_image(tmp_path / "la.png", image_params()), [[[77, 77, 77]]])

    Image.fromarray(np.array([[0x1234, 0xFFFF]], dtype=np.uint16)).save(tmp_path / "g16.png")
    out = preprocess_image(tmp_path / "g16.png", image_params(image_to_format="RGB"))
    np.testing.assert_array_equal(out, [[[0x12] * 3, [0xFF] * 3]])  # high byte, like OpenCV


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.array([[[1, 1, 1], [2, 2, 2]]], dtype=np.uint8))  # 1 row, 2 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.png", exif=exif)
    out = preprocess_image(tmp_path / "r.png", image_params(image_to_format="RGB"))
    assert out.shape == (2, 1, 3)
    np.testing.assert_array_equal(out[:, 0, 0], [1, 2])


def test_undecodable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(DataError) as err:
        preprocess_image(bad, image_params())
    assert str(bad) in str(err.value)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(DataError, match="not an image"):
        preprocess_image(text, image_params())


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow warns above 100 px, fails above 200
    for side in (12, 20):  # 144 px: the warning, 400 px: the error
        path = write_png(tmp_path / f"big{side}.png", np.zeros((side, side, 3)))
        with pytest.raises(DataError, match="too large") as err:
            preprocess_image(path, image_params())
        assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# determinism, digests, shards


def _image_folder(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(folder / f"{i}.png", rng.integers(0, 256, size=(4, 4, 3)))
    return folder


def test_same_files_give_same_arrays(tmp_path):
    cfg = make_cfg({"x": _image_folder(tmp_path)}, 3, "IMAGE", image_to_format="RGB", resize_method="CUBIC",
                   resize_width=3, resize_height=3, normalize_mean=(127.5,) * 3, normalize_std=(57.0,) * 3)
    specs = [InputSpec("x", np.float32, (1, 3, 3, 3))]
    first = [f["x"] for _, f in iter_samples(cfg, specs)]
    second = [f["x"] for _, f in iter_samples(cfg, specs)]
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


def test_write_shards_reuses_existing_shards(tmp_path, monkeypatch):
    cfg = make_cfg({"x": _image_folder(tmp_path)}, 3, "IMAGE", image_to_format="RGB")
    specs = [InputSpec("x", np.float32, (1, 3, 4, 4))]
    out = tmp_path / "shards"
    paths = write_shards(cfg, specs, out)
    assert len(paths) == 3 and len(set(paths)) == 3
    for i, p in enumerate(paths):
        assert p.parent == out and p.name.startswith("calib-") and p.suffix == ".npy"
        np.testing.assert_array_equal(np.load(p), load_sample(cfg, specs, i)["x"])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("shard was recomputed")

    monkeypatch.setattr(calibration, "_load_one", no_preprocessing)
    assert write_shards(cfg, specs, out) == paths
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_digest_changes_when_a_file_byte_changes(tmp_path):
    arrays = [np.full((1, 4), i, np.float32) for i in range(2)]
    paths = write_bins(tmp_path / "a", arrays)
    specs = [InputSpec("x", np.float32, (1, 4))]
    cfg = make_cfg({"x": tmp_path / "a"}, 2)
    d0 = sample_digest(cfg, specs, "NCHW")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # same bytes elsewhere: same digest
    assert sample_digest(make_cfg({"x": tmp_path / "copy"}, 2), specs, "NCHW") == d0
    raw = bytearray(paths[1].read_bytes())
    raw[3] ^= 0x01
    paths[1].write_bytes(bytes(raw))
    assert sample_digest(cfg, specs, "NCHW") != d0


def test_digest_changes_with_preprocessing_settings(tmp_path):
    cfg = make_cfg({"x": _image_folder(tmp_path)}, 3, "IMAGE", image_to_format="RGB")
    specs = [InputSpec("x", np.float32, (1, 3, 4, 4))]
    d0 = sample_digest(cfg, specs, "NCHW")
    other = make_cfg({"x": tmp_path / "imgs"}, 3, "IMAGE", image_to_format="BGR")
    assert sample_digest(other, specs, "NCHW") != d0
