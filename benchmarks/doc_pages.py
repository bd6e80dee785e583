"""Rendered document pages: realistic inputs for the zoo's document models (layout, orientation).

A layout detector trained on document pages (CDLA: titles, text blocks, tables, figures, captions) sees
nothing it knows in a holiday photograph: every class score stays near zero, and the output cosine then
measures only the noise on logits far below any threshold. So the zoo calibrates and evaluates the
document models on pages like the ones they were trained for, rendered here with Pillow from seeded
random layouts: a title, paragraphs of text lines, a ruled table with text in its cells, a figure (a crop
of one of scikit-learn's two sample photographs) with a caption, page numbers. Nothing is downloaded; the
same seed gives the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from models import _OCR_WORDS, _font


def _words(rng: np.random.Generator, lo: int, hi: int) -> str:
    text = " ".join(str(w) for w in rng.choice(_OCR_WORDS, size=int(rng.integers(lo, hi))))
    return text[0].upper() + text[1:]


def _paragraph(draw, rng, x: int, y: int, width: int, bottom: int, size: int) -> int:
    font, _ = _font(size)
    line_h = int(size * 1.45)
    for _ in range(int(rng.integers(3, 9))):
        if y + line_h > bottom:
            break
        text = _words(rng, 4, 14)
        while text and font.getlength(text) > width:
            text = text.rsplit(" ", 1)[0]
        draw.text((x, y), text, fill=tuple(int(v) for v in rng.integers(0, 50, 3)), font=font)
        y += line_h
    return y + line_h // 2


def _table(draw, rng, x: int, y: int, width: int, bottom: int) -> int:
    rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
    cell_h = int(rng.integers(22, 34))
    if y + rows * cell_h > bottom:
        return y
    font, _ = _font(int(cell_h * 0.55))
    cell_w = width // cols
    for r in range(rows + 1):
        draw.line([(x, y + r * cell_h), (x + cols * cell_w, y + r * cell_h)], fill=(30, 30, 30), width=1)
    for c in range(cols + 1):
        draw.line([(x + c * cell_w, y), (x + c * cell_w, y + rows * cell_h)], fill=(30, 30, 30), width=1)
    for r in range(rows):
        for c in range(cols):
            text = _words(rng, 1, 3) if r == 0 else f"{int(rng.integers(1, 99999))}"
            draw.text((x + c * cell_w + 4, y + r * cell_h + 3), text[: max(cell_w // 9, 1)], fill=(20, 20, 20), font=font)
    return y + rows * cell_h + 18


def _figure(img, draw, rng, photos, x: int, y: int, width: int, bottom: int) -> int:
    from PIL import Image

    h = int(rng.integers(120, 260))
    if y + h + 30 > bottom:
        return y
    photo = photos[int(rng.integers(0, len(photos)))]
    ph, pw = photo.shape[:2]
    ch, cw = int(rng.integers(ph // 3, ph)), int(rng.integers(pw // 3, pw))
    py, px = int(rng.integers(0, ph - ch)), int(rng.integers(0, pw - cw))
    fw = min(width, int(h * cw / ch))
    img.paste(Image.fromarray(photo[py:py + ch, px:px + cw]).resize((fw, h)), (x + (width - fw) // 2, y))
    font, _ = _font(14)
    draw.text((x + (width - fw) // 2, y + h + 6), "Figure " + str(int(rng.integers(1, 9))) + ". " + _words(rng, 3, 7),
              fill=(40, 40, 40), font=font)
    return y + h + 34


def render_document(seed: int, width: int = 1240, height: int = 1754) -> np.ndarray:
    """One page (A4 at 150 dpi by default), RGB uint8 [h, w, 3]."""
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(240, 256, 3)))
    draw = ImageDraw.Draw(img)
    margin = int(width * 0.08)
    title_font, _ = _font(int(rng.integers(34, 52)))
    draw.text((margin, margin), _words(rng, 3, 8), fill=(10, 10, 10), font=title_font)
    columns = int(rng.integers(1, 3))
    col_w = (width - 2 * margin - (columns - 1) * 40) // columns
    bottom = height - margin
    for c in range(columns):
        x, y = margin + c * (col_w + 40), margin + 90
        while y < bottom - 60:
            kind = rng.choice(["text", "text", "text", "table", "figure"])
            before = y
            if kind == "table":
                y = _table(draw, rng, x, y, col_w, bottom)
            elif kind == "figure":
                y = _figure(img, draw, rng, photos, x, y, col_w, bottom)
            if y == before:
                y = _paragraph(draw, rng, x, y, col_w, bottom, int(rng.integers(15, 22)))
            if y == before:
                break
    font, _ = _font(14)
    draw.text((width // 2, height - margin // 2), str(seed % 300 + 1), fill=(60, 60, 60), font=font)
    return np.asarray(img)


def document_pngs(folder: Path, n: int, seed: int, rotate: bool = False) -> list[Path]:
    """n rendered pages saved as PNGs (reused when present); ``rotate`` turns page i by 90 * (i % 4) degrees,
    the four classes an orientation classifier tells apart."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        if not path.exists():
            page = render_document(seed * 1000 + i)
            if rotate:
                page = np.ascontiguousarray(np.rot90(page, k=i % 4))
            Image.fromarray(page).save(path)
        paths.append(path)
    return paths


def text_line_pngs(folder: Path, n: int, seed: int, flip: bool = False) -> list[Path]:
    """n rendered text lines (models.render_line: dark text on a light ground, heights 32-56 px) as PNGs;
    ``flip`` turns every odd line by 180 degrees, the two classes PP-OCR's direction classifier tells apart."""
    from models import render_line, text_lines
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(text_lines(n, seed=seed)):
        path = folder / f"{i:03d}.png"
        if not path.exists():
            line = render_line(text, height=int(32 + 8 * (i % 4)), seed=seed * 1000 + i)[:, :, ::-1]  # BGR -> RGB
            if flip and i % 2:
                line = line[::-1, ::-1]
            Image.fromarray(np.ascontiguousarray(line)).save(path)
        paths.append(path)
    return paths
