"""Calibration resizing is OpenCV's cv::resize (converter_lite's), checked against arrays OpenCV produced.

tests/fixtures/cv2_resize.npz comes from tests/fixtures/make_cv2_resize.py (opencv-python 5.0). OpenCV's
wheels route multi-row float images through IPP, which computes the source coordinate in double where
OpenCV's own C++ path rounds it to float: the two differ by about 1e-5 of the value range, which is the
tolerance here. Antialiasing, which OpenCV does not do, would differ by tens of percent.
"""


import numpy as np
import pytest
from paths import FIXTURES

from ptq_core.data.resize import METHODS, resize

FIXTURE = np.load(FIXTURES / "cv2_resize.npz")
CASES = sorted(k for k in FIXTURE.files if not k.startswith("src_") and k != "opencv_version")


@pytest.mark.parametrize("key", CASES)
def test_matches_opencv(key):
    name, method, size = key.split("_")
    width, height = (int(v) for v in size.split("x"))
    expected = FIXTURE[key]
    got = resize(FIXTURE[f"src_{name}"], width, height, method)
    assert got.shape == expected.shape and got.dtype == np.float32
    if method == "NEAREST":
        assert np.array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * float(np.abs(expected).max()))


def test_shrinking_does_not_low_pass_filter():
    """A 1-pixel checkerboard (values +-127.5) shrunk by 8/3 with LINEAR: OpenCV blends only the two pixels
    around each centre, so it keeps aliasing at about +-57; Pillow's BILINEAR, which filters over the source
    footprint, gives at most 0.62 (measured), i.e. different calibration data."""
    ours = resize(FIXTURE["src_checker"], 18, 12, "LINEAR")
    assert np.abs(ours).max() > 50


@pytest.mark.parametrize("method", METHODS)
def test_same_size_is_a_copy(method):
    img = FIXTURE["src_noise"]
    out = resize(img, img.shape[1], img.shape[0], method)
    assert np.array_equal(out, img) and out is not img


def test_one_channel_images():
    img = FIXTURE["src_noise"][:, :, :1]
    assert resize(img, 7, 5, "CUBIC").shape == (5, 7, 1)


def test_unknown_method():
    with pytest.raises(ValueError, match="AREA"):
        resize(FIXTURE["src_noise"], 3, 3, "AREA")
