"""The `signs` corpus: procedurally drawn scenes of signs with words and numbers, plus QA pairs.

Built to show MoAI's effect on a CPU: answering needs reading (OCR) and counting, which a small
vision encoder trained for minutes cannot learn from pixels, but verbalized expert output states.

Deterministic from a seed. Splits have disjoint vocabularies (words and numbers are assigned to a
split by a hash), so a model cannot pass the test split by memorizing answers. Layout as COCO:
`images/<split>/*.jpg`, `annotations/instances_<split>.json` (sign boxes as annotations of the
category `sign`), and `annotations/qa_<split>.json` ([{image_id, question, answer, type}]).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from corpora.layout import Corpus

SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
COLOURS = {
    "red": (200, 30, 30),
    "blue": (30, 70, 200),
    "green": (30, 140, 60),
    "yellow": (235, 200, 30),
    "white": (245, 245, 245),
    "orange": (240, 130, 20),
}
TEXT_ON = {"yellow": (20, 20, 20), "white": (20, 20, 20)}  # dark text on light signs, white elsewhere
CONSONANTS = "BDFGKLMNPRSTVZ"
VOWELS = "AEIOU"
FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf"]
SHAPES = ("circle", "triangle", "square")


@dataclass(frozen=True)
class SignsConfig:
    seed: int = 0
    images: int = 600
    width: int = 448
    height: int = 336
    max_signs: int = 3


def split_of(token: str) -> str:
    """Which split a word or number belongs to: a stable hash, so vocabularies are disjoint."""
    h = int(hashlib.sha256(token.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for split, share in SPLITS.items():
        edge += share
        if h <= edge:
            return split
    return "test"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 2, 3))))


def _token(rng: random.Random, split: str, number: bool) -> str:
    while True:
        token = str(rng.randint(10, 999)) if number else _word(rng)
        if split_of(token) == split:
            return token


def _font_path(name: str) -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)


def _background(rng: random.Random, w: int, h: int):
    import numpy as np
    from PIL import Image

    kind = rng.choice(("gradient", "noise", "plain"))
    base = np.array([rng.randint(60, 200) for _ in range(3)], dtype=np.float32)
    if kind == "gradient":
        other = np.array([rng.randint(60, 200) for _ in range(3)], dtype=np.float32)
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        pixels = base * (1 - t) + other * t + np.zeros((h, w, 3), np.float32)
    else:
        pixels = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    if kind == "noise":
        noise_rng = np.random.default_rng(rng.randint(0, 2**31))
        pixels = pixels + noise_rng.normal(0, 18, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_shape(draw, rng: random.Random, w: int, h: int) -> None:
    shape = rng.choice(SHAPES)
    r = rng.randint(10, 24)
    x, y = rng.randint(r, w - r), rng.randint(h - 60, h - r)
    fill = tuple(rng.randint(0, 255) for _ in range(3))
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)


def _scene(rng: random.Random, split: str, cfg: SignsConfig):
    """Draw one image; return (PIL image, signs=[{text, colour, box, number}])."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = cfg.width, cfg.height
    image = _background(rng, w, h)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 2)):
        _draw_shape(draw, rng, w, h)
    n = rng.randint(1, cfg.max_signs)
    colours = rng.sample(sorted(COLOURS), n)
    slots = rng.sample(range(cfg.max_signs), n)  # horizontal slots keep signs from overlapping
    signs = []
    for colour, slot in sorted(zip(colours, slots, strict=True), key=lambda p: p[1]):
        number = rng.random() < 0.4
        text = _token(rng, split, number)
        font = ImageFont.truetype(_font_path(rng.choice(FONTS)), rng.randint(24, 40))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = rng.randint(8, 14)
        sw, sh = tw + 2 * pad, th + 2 * pad
        slot_w = w // cfg.max_signs
        x0 = slot * slot_w + rng.randint(2, max(3, slot_w - sw - 2))
        y0 = rng.randint(10, max(11, h - sh - 70))
        sign = Image.new("RGBA", (sw, sh), COLOURS[colour] + (255,))
        ImageDraw.Draw(sign).text(
            (pad - left, pad - top), text, font=font, fill=TEXT_ON.get(colour, (250, 250, 250))
        )
        sign = sign.rotate(rng.uniform(-8, 8), expand=True, resample=Image.BICUBIC)
        x0 = min(x0, w - sign.width - 1)
        image.paste(sign, (x0, y0), sign)
        signs.append(
            {
                "text": text,
                "colour": colour,
                "number": number,
                "box": [x0, y0, x0 + sign.width, y0 + sign.height],
            }
        )
    return image, signs


def questions_for(signs: list[dict], rng: random.Random) -> list[dict]:
    """Ground-truth QA pairs for one scene; every answer is determined by the drawing."""
    qa = [{"type": "count", "question": "How many signs are there?", "answer": str(len(signs))}]
    if len(signs) == 1:
        qa.append({"type": "read", "question": "What does the sign say?", "answer": signs[0]["text"]})
    sign = rng.choice(signs)
    kind = "number" if sign["number"] else "word"
    qa.append(
        {
            "type": "read_colour",
            "question": f"What {kind} is on the {sign['colour']} sign?",
            "answer": sign["text"],
        }
    )
    qa.append(
        {
            "type": "colour_of_text",
            "question": f"What colour is the sign that says {sign['text']}?",
            "answer": sign["colour"],
        }
    )
    return qa


def build_signs(root: Path, cfg: SignsConfig = SignsConfig()) -> Corpus:
    corpus = Corpus("signs", root)
    stamp = root / "annotations" / "config.json"
    wanted = json.dumps(cfg.__dict__, sort_keys=True)
    if (
        stamp.is_file()
        and stamp.read_text() == wanted
        and all(corpus.annotations_file(s).is_file() for s in SPLITS)
    ):
        return corpus
    counts = {s: round(cfg.images * share) for s, share in SPLITS.items()}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_id = 0
    for split, count in counts.items():
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations, qa = [], [], []
        for _ in range(count):
            image_id += 1
            scene_rng = random.Random(f"{cfg.seed}-{image_id}")
            picture, signs = _scene(scene_rng, split, cfg)
            name = f"signs_{image_id:06d}.jpg"
            picture.save(image_dir / name, quality=92)
            images.append({"id": image_id, "file_name": name, "width": cfg.width, "height": cfg.height})
            for k, s in enumerate(signs):
                x1, y1, x2, y2 = s["box"]
                annotations.append(
                    {
                        "id": image_id * 10 + k,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                        "text": s["text"],
                        "colour": s["colour"],
                    }
                )
            qa.extend({"image_id": image_id, **q} for q in questions_for(signs, scene_rng))
        _write_json(
            corpus.annotations_file(split),
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "sign"}]},
        )
        _write_json(root / "annotations" / f"qa_{split}.json", qa)
    stamp.write_text(wanted)
    return corpus


def _write_json(path: Path, document) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    os.replace(tmp, path)
