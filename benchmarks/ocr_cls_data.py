"""Labelled data for the PP-OCR text-direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx``).

Deterministic English text lines (word runs from the sentences of ``pydoc_data.topics``, see
``models._candidate_sentences``) rendered with Pillow in the DejaVu fonts, with mild, seeded
photometric noise (colours, blur, pixel noise, a small tilt); every odd-numbered line is rotated
180 degrees (label 1 = ``"180"``, rapidocr's ``label_list: ['0', '180']``).

Layout under ``root`` (default ``benchmarks/work/cls``)::

    calib/cal_00000.png ...   calibration images, already at 48x192 (see below); IMAGE folder for ptqflow
    calib/labels.json         their labels (not used for calibration, only for the record)
    eval/ev_00000.png ...     evaluation images at their rendered size
    eval/labels.json          {"ev_00000.png": 0, ...}
    manifest.json             generator version + parameters; a matching manifest means "reuse"

Preprocessing is rapidocr 1.4.4's own: ``LoadImage`` (Pillow decode, RGB -> **BGR**) and
``TextClassifier.resize_norm_img`` (resize to height 48 keeping the aspect, width capped at 192,
``(x/255 - 0.5)/0.5``, zero-pad on the right to 192, CHW), called from the installed package.

Calibration images and ptqflow's IMAGE pipeline. converter_lite's pipeline (ptq_core.data.image_preprocess)
can resize but cannot pad, and rapidocr's padding value (0 after normalisation = raw 127.5) is not a
uint8 pixel. So every line is generated with aspect ratio > 4 (rendered width > 4 x height): rapidocr
then squeezes it to exactly 192 wide and pads nothing. The calibration PNG holds that
``cv2.resize(line, (192, 48))`` result; ptqflow with ``image_to_format=BGR`` (rapidocr feeds BGR),
``normalize_mean=[127.5]*3``, ``normalize_std=[127.5]*3`` then reproduces rapidocr's tensor:
identical uint8 pixels, and float values within 1 ulp (``(x-127.5)/127.5`` and
``(x/255-0.5)/0.5`` round differently in float32 for half of the 256 pixel values, by <= 6e-8).
:func:`verify_calibration` checks this for every calibration image.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import models  # noqa: E402

VERSION = 2
CLS_SHAPE = (3, 48, 192)
LABELS = ("0", "180")
MIN_ASPECT = 4.1  # > 4: rapidocr resizes to the full 192 width, no padding
MAX_ASPECT = 11.0
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansCondensed.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerifCondensed-Bold.ttf", "DejaVuSansMono.ttf",
)
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)


# --------------------------------------------------------------------------- rapidocr preprocessing
class _ClsShape:
    cls_image_shape = list(CLS_SHAPE)


def _rapidocr_resize_norm():
    """rapidocr 1.4.4's TextClassifier.resize_norm_img (unbound), or the transcription in models.py."""
    try:
        from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

        return lambda img: TextClassifier.resize_norm_img(_ClsShape(), img), "rapidocr_onnxruntime TextClassifier.resize_norm_img"
    except Exception:  # noqa: BLE001 - fall back to the transcription (same code)
        return lambda img: models.preprocess_cls(img, CLS_SHAPE)[0], "models.preprocess_cls (transcription)"


def _rapidocr_load():
    try:
        from rapidocr_onnxruntime.utils.load_image import LoadImage

        return LoadImage()
    except Exception:  # noqa: BLE001
        import cv2

        return lambda p: cv2.imread(str(p), cv2.IMREAD_COLOR)


def preprocess(img_bgr: np.ndarray) -> np.ndarray:
    """rapidocr's cls preprocessing of one BGR uint8 image -> float32 [3, 48, 192]."""
    fn, _ = _rapidocr_resize_norm()
    return np.asarray(fn(img_bgr), dtype=np.float32)


def load_tensor(path: Path) -> np.ndarray:
    """An image file as rapidocr's classifier sees it: LoadImage (-> BGR) + resize_norm_img."""
    return preprocess(_rapidocr_load()(str(path)))


# --------------------------------------------------------------------------- text + rendering
def _fonts() -> list:
    found = []
    for name in FONT_FILES:
        for d in FONT_DIRS:
            p = Path(d) / name
            if p.is_file():
                found.append(p)
                break
    if not found:  # whatever models.py finds (DejaVu/Liberation or Pillow's default)
        return [("models._font", None)]
    return [(p.name, p) for p in found]


_FONT_CACHE: dict = {}


def _font(idx: int, size: int):
    from PIL import ImageFont

    fonts = _fonts()
    name, path = fonts[idx % len(fonts)]
    key = (name, size)
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = (models._font(size)[0] if path is None else ImageFont.truetype(str(path), size), name)
    return _FONT_CACHE[key]


@functools.lru_cache(maxsize=1)
def _words() -> tuple[list[list[str]], list[list[str]]]:
    """Sentences as word lists, split in two disjoint halves: calibration (odd) and evaluation (even)."""
    sents = [s.split() for s in models._candidate_sentences()]
    return sents[1::2], sents[0::2]


def render_sample(i: int, split: str, seed: int = 0) -> tuple[np.ndarray, int, str, dict]:
    """Sample i of a split: (BGR uint8 [h, w, 3], label, text, render params). Deterministic."""
    from PIL import Image, ImageDraw, ImageFilter

    calib_words, eval_words = _words()
    pool = calib_words if split == "calib" else eval_words
    rng = np.random.default_rng([seed, 0 if split == "calib" else 1, i])
    font_idx = int(rng.integers(0, 1 << 16))
    size = int(rng.integers(14, 44))
    font, font_name = _font(font_idx, size)
    height = int(round(size * rng.uniform(1.25, 1.7)))
    target_aspect = float(rng.uniform(MIN_ASPECT + 0.3, MAX_ASPECT))
    pad_x = int(round(height * rng.uniform(0.05, 0.35)))
    # Words from a random point of a random sentence, continuing into the next ones.
    s = int(rng.integers(0, len(pool)))
    w0 = int(rng.integers(0, len(pool[s])))
    words: list[str] = []
    stream = (w for k in range(len(pool)) for w in pool[(s + k) % len(pool)][(w0 if k == 0 else 0):])
    text = ""
    while True:
        nxt = next(stream)
        cand = (text + " " + nxt) if text else nxt
        width = font.getlength(cand) + 2 * pad_x
        if text and width / height > target_aspect:
            break
        text = cand
        words.append(nxt)
        if width / height >= MIN_ASPECT and len(words) >= 2 and rng.random() < 0.15:
            break
    # Make sure the aspect is > MIN_ASPECT (rare: one long word hit the cap early).
    width = int(math.ceil(font.getlength(text))) + 2 * pad_x
    width = max(width, int(math.ceil(MIN_ASPECT * height)) + 1)

    dark = rng.random() < 0.12
    if dark:
        bg = tuple(int(v) for v in rng.integers(10, 80, 3))
        ink = tuple(int(v) for v in rng.integers(190, 256, 3))
    else:
        bg = tuple(int(v) for v in rng.integers(170, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    img = Image.new("RGB", (width, height), bg)
    l, t, r, b = font.getbbox(text)
    y = (height - (b - t)) // 2 - t + int(rng.integers(-max(1, height // 10), max(1, height // 10) + 1))
    ImageDraw.Draw(img).text((pad_x - l, y), text, fill=ink, font=font)
    angle = float(rng.uniform(-2.0, 2.0))
    if abs(angle) > 0.3:
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=bg)
    blur = float(rng.choice([0.0, 0.0, 0.5, 0.8, 1.2, 1.6]))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img).astype(np.float32)
    sigma = float(rng.choice([0.0, 3.0, 6.0, 10.0, 14.0]))
    if sigma:
        arr = arr + rng.normal(0, sigma, arr.shape)
    rgb = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    label = i % 2
    if label:
        rgb = rgb[::-1, ::-1]  # 180 degrees
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    params = {"font": font_name, "size": size, "h": height, "w": width, "dark": dark, "angle": round(angle, 2),
              "blur": blur, "noise": sigma}
    return bgr, label, text, params


def _save_png(path: Path, bgr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(path, format="PNG", optimize=False, compress_level=1)


def squeeze_for_calibration(bgr: np.ndarray) -> np.ndarray:
    """What rapidocr's resize does to a line with aspect > 4: cv2.resize to exactly 192x48 (no pad)."""
    import cv2

    c, h, w = CLS_SHAPE
    ratio = bgr.shape[1] / float(bgr.shape[0])
    if math.ceil(h * ratio) <= w:
        raise ValueError(f"line aspect {ratio:.3f} would be padded by rapidocr; calibration lines need > 4")
    return cv2.resize(bgr, (w, h))


def _manifest(n_calib: int, n_eval: int, seed: int) -> dict:
    import PIL

    return {"version": VERSION, "n_calib": n_calib, "n_eval": n_eval, "seed": seed,
            "fonts": [n for n, _ in _fonts()], "pillow": PIL.__version__,
            "python": sys.version.split()[0], "min_aspect": MIN_ASPECT, "max_aspect": MAX_ASPECT}


def build(root: str | Path = HERE / "work" / "cls", n_calib: int = 1000, n_eval: int = 1000, seed: int = 0,
          force: bool = False) -> dict:
    """Write the calibration and evaluation folders (reused while the manifest matches)."""
    root = Path(root)
    man = _manifest(n_calib, n_eval, seed)
    mpath = root / "manifest.json"
    if not force and mpath.is_file():
        try:
            old = json.loads(mpath.read_text())
            if old.get("params") == man:
                return old
        except ValueError:
            pass
    import shutil

    for sub in ("calib", "eval"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    for f in (root / "eval_tensors.npz",):
        f.unlink(missing_ok=True)
    stats = {}
    for split, n, prefix in (("calib", n_calib, "cal"), ("eval", n_eval, "ev")):
        labels, texts, aspects = {}, {}, []
        for i in range(n):
            bgr, label, text, p = render_sample(i, split, seed)
            name = f"{prefix}_{i:05d}.png"
            aspects.append(bgr.shape[1] / bgr.shape[0])
            _save_png(root / split / name, squeeze_for_calibration(bgr) if split == "calib" else bgr)
            labels[name] = label
            texts[name] = text
        (root / split / "labels.json").write_text(json.dumps(labels, indent=0))
        (root / split / "texts.json").write_text(json.dumps(texts, indent=0))
        stats[split] = {"n": n, "n_180": int(sum(labels.values())), "aspect_min": float(min(aspects)),
                        "aspect_max": float(max(aspects)), "aspect_mean": float(np.mean(aspects))}
    # labels.json / texts.json sit inside the folders; ptqflow takes the first calibrate_size entries in
    # byte order, and "cal_*" < "labels.json" < "texts.json", so they are never taken as images.
    out = {"params": man, "stats": stats, "preprocess": _rapidocr_resize_norm()[1]}
    mpath.write_text(json.dumps(out, indent=1))
    return out


def calib_files(root: str | Path, n: int) -> list[Path]:
    files = sorted((Path(root) / "calib").glob("cal_*.png"))
    if len(files) < n:
        raise FileNotFoundError(f"{root}/calib has {len(files)} images, need {n}")
    return files[:n]


def calib_tensors(root: str | Path, n: int) -> np.ndarray:
    """The first n calibration images as rapidocr's tensors, [n, 3, 48, 192] (ORT / NNCF calibration)."""
    return np.stack([load_tensor(p) for p in calib_files(root, n)])


def load_eval(root: str | Path = HERE / "work" / "cls") -> tuple[np.ndarray, np.ndarray]:
    """(X [N, 3, 48, 192] float32, y [N] int64), preprocessed by rapidocr's code; cached in eval_tensors.npz."""
    root = Path(root)
    cache = root / "eval_tensors.npz"
    labels = json.loads((root / "eval" / "labels.json").read_text())
    if cache.is_file():
        d = np.load(cache)
        if len(d["y"]) == len(labels):
            return d["x"], d["y"]
    names = sorted(labels)
    x = np.stack([load_tensor(root / "eval" / n) for n in names])
    y = np.array([labels[n] for n in names], dtype=np.int64)
    np.savez(cache, x=x, y=y)
    return x, y


def verify_calibration(root: str | Path, cfg_path: str | Path, n: int, seed: int = 0) -> dict:
    """Per calibration image: rapidocr's tensor of the ORIGINAL rendered line vs ptqflow's IMAGE pipeline
    (ptq_core.data.image_preprocess, with the config's [data_preprocess_param]) on the 48x192 PNG.

    Returns {'n', 'pixels_identical' (decoded uint8 == cv2.resize of the line, count),
             'max_abs_diff', 'exact' (bit-identical tensors, count), 'ok'}."""
    from ptq_core.config import load_config
    from ptq_core.data.image_preprocess import _decode_bgr, fit_image, preprocess_image
    from ptq_core.onnxgraph.session import InputSpec

    p = load_config(cfg_path).data
    spec = InputSpec("x", np.float32, (1, *CLS_SHAPE))
    files = calib_files(root, n)
    max_diff, exact, same_px = 0.0, 0, 0
    for i, f in enumerate(files):
        line, _, _, _ = render_sample(i, "calib", seed)
        ref = preprocess(line)
        ours = fit_image(preprocess_image(f, p), spec, f)[0]
        d = float(np.abs(ref - ours).max())
        max_diff = max(max_diff, d)
        exact += int(d == 0.0)
        same_px += int(np.array_equal(_decode_bgr(f), squeeze_for_calibration(line)))
    ok = same_px == len(files) and max_diff <= 1.2e-7
    return {"n": len(files), "pixels_identical": same_px, "exact": exact, "max_abs_diff": max_diff, "ok": ok}


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    info = build()
    print(json.dumps(info, indent=1), f"{time.perf_counter() - t0:.1f} s")
