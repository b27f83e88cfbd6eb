"""The `signs` corpus: procedurally drawn scenes of signs with words and numbers, plus QA pairs.

Built to measure MoAI's effect on a CPU: some answers need reading (OCR) or counting signs, which a
small vision encoder trained for minutes cannot learn from pixels but the verbalized OCR output
states; others the OCR sentence cannot give (colours), and one control type has nothing to do with
text at all. Deterministic from a seed. Layout as COCO: `images/<split>/*.jpg`,
`annotations/instances_<split>.json` (sign boxes as annotations of the category `sign`, each with its
`text`, `colour` and `kind`), and `annotations/qa_<split>.json` ([{image_id, question, answer, type}]).

Sign texts (`kind`):
- `word` (70%): a lowercase English word that is ONE token of SmolLM2's tokenizer (" word"), from
  `signs_words.txt` (tests/test_signs.py checks every line against the tokenizer). Reading one then
  is a one-token copy that an order-free compressor can represent.
- `syllables` (15%): a made-up consonant-vowel word ("bakolu"), several tokens.
- `number` (15%): 10-999, one token per digit.
Every text belongs to one split by a stable hash (`split_of`), so train, val and test vocabularies
are disjoint: a test answer can only be read, never remembered.

Half the scenes hold one sign, the others two or three. Each scene gets four questions: `count`,
`has_text`, `read` (one sign) or `read_colour` (several), and `colour_of_text` or `shape` (alternately).
Question types, by what MoAI's verbalized OCR sentence ("The image includes text descriptions: a,
and b.") can answer:
- answerable from the aux text: `count` (How many signs?), `has_text` (Is there a sign that says X?
  yes/no, exactly balanced: X from the scene's texts or another text of the same split and kind),
  `read` (What does the sign say? one sign only).
- not answerable from it: `colour_of_text` (colours are no OCR output), `read_colour` (which text is on
  the red sign, with 2-3 signs: OCR's sentence drops positions and colours).
- control, aux-irrelevant: `shape` (Is there a circle? exactly balanced): the shapes carry no text, so
  the aux text must not change this type's accuracy.

Scenes are small (`width` x `height`, default 320x112) so OCR over thousands of them takes minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from corpora.layout import Corpus

SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}  # each split's share of the sign vocabulary (split_of)
COLOURS = {
    "red": (200, 30, 30),
    "blue": (30, 70, 200),
    "green": (30, 140, 60),
    "yellow": (235, 200, 30),
    "white": (245, 245, 245),
    "orange": (240, 130, 20),
}
TEXT_ON = {"yellow": (20, 20, 20), "white": (20, 20, 20)}  # dark text on light signs, white elsewhere
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf"]
SHAPES = ("circle", "triangle", "square")
KINDS = {"word": 0.7, "syllables": 0.15, "number": 0.15}
WORDS_FILE = Path(__file__).with_name("signs_words.txt")
# question types by what the verbalized OCR sentence can answer (the benchmark groups them so)
AUX_ANSWERABLE = ("count", "has_text", "read")
NOT_ANSWERABLE = ("colour_of_text", "read_colour")
CONTROL = ("shape",)
TEXT_ANSWER_TYPES = ("read", "read_colour")  # answers that are sign texts


@dataclass(frozen=True)
class SignsConfig:
    seed: int = 0
    train: int = 8000  # scenes per split (multiples of 8 balance every yes/no question exactly)
    val: int = 400
    test: int = 400
    width: int = 320
    height: int = 112
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


@cache
def single_token_words() -> tuple[str, ...]:
    """The shipped list of one-token lowercase words (SmolLM2's tokenizer, ids < 20000, 4-9 letters)."""
    return tuple(w for w in WORDS_FILE.read_text(encoding="utf-8").split() if w)


# words of the question templates, colour and shape names: never sign texts, so no answer can occur in
# its own question ("What does the sign say?" → "sign") and no sign text is also a colour answer
RESERVED = (
    frozenset(
        "how many signs are there is sign that says what does the say word number on colour circle yes no".split()
    )
    | frozenset(COLOURS)
    | frozenset(SHAPES)
)


@cache
def words_of(split: str) -> tuple[str, ...]:
    return tuple(w for w in single_token_words() if split_of(w) == split and w not in RESERVED)


def _syllables(rng: random.Random) -> str:
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 3, 3))))


def text_for(rng: random.Random, split: str, kind: str, avoid: set[str] = frozenset()) -> str:
    """A sign text of `kind` from `split`'s vocabulary, not in `avoid`."""
    while True:
        if kind == "word":
            text = rng.choice(words_of(split))
        elif kind == "number":
            text = str(rng.randint(10, 999))
        else:
            text = _syllables(rng)
            if text in _single_token_set():  # a made-up word must not be one of the one-token words
                continue
        if split_of(text) == split and text not in avoid and text not in RESERVED:
            return text


@cache
def _single_token_set() -> frozenset[str]:
    return frozenset(single_token_words())


def _kind(rng: random.Random) -> str:
    return rng.choices(list(KINDS), weights=list(KINDS.values()))[0]


def _font_path(name: str) -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)


@cache
def _font(name: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(_font_path(name), size)


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


def _draw_shapes(draw, rng: random.Random, w: int, h: int, circle: bool) -> list[str]:
    """0-2 shapes along the bottom edge (below the signs); a circle exactly when `circle`."""
    shapes = [rng.choice(("triangle", "square")) for _ in range(rng.randint(0, 1))]
    if circle:
        shapes.append("circle")
    elif rng.random() < 0.5:
        shapes.append(rng.choice(("triangle", "square")))
    rng.shuffle(shapes)
    slot_w = w // max(1, len(shapes))
    for k, shape in enumerate(shapes):
        r = rng.randint(7, 11)
        x = k * slot_w + rng.randint(r + 1, max(r + 2, slot_w - r - 1))
        y = h - r - rng.randint(1, 4)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        if shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return shapes


def _scene(rng: random.Random, split: str, cfg: SignsConfig, circle: bool):
    """Draw one image; return (PIL image, signs=[{text, colour, kind, box}], shapes)."""
    from PIL import Image, ImageDraw

    w, h = cfg.width, cfg.height
    image = _background(rng, w, h)
    draw = ImageDraw.Draw(image)
    shapes = _draw_shapes(draw, rng, w, h, circle)
    # half the scenes hold one sign (their `read` question is the reading line), the rest 2..max_signs
    n = rng.choices(range(1, cfg.max_signs + 1), weights=[cfg.max_signs - 1] + [1] * (cfg.max_signs - 1))[0]
    colours = rng.sample(sorted(COLOURS), n)
    slot_w = w // n  # one horizontal slot per sign keeps signs from overlapping
    signs, texts = [], set()
    for slot, colour in enumerate(colours):
        kind = _kind(rng)
        text = text_for(rng, split, kind, texts)
        texts.add(text)
        size = rng.randint(17, 24)
        while True:  # shrink the font until the sign fits its slot
            font = _font(rng.choice(FONTS), size)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            pad = rng.randint(5, 9)
            sw, sh = tw + 2 * pad, th + 2 * pad
            if sw + 8 <= slot_w or size <= 12:
                break
            size -= 2
        sign = Image.new("RGBA", (sw, sh), COLOURS[colour] + (255,))
        ImageDraw.Draw(sign).text(
            (pad - left, pad - top), text, font=font, fill=TEXT_ON.get(colour, (250, 250, 250))
        )
        sign = sign.rotate(rng.uniform(-6, 6), expand=True, resample=Image.BICUBIC)
        x0 = slot * slot_w + rng.randint(2, max(3, slot_w - sign.width - 2))
        x0 = max(0, min(x0, w - sign.width - 1))
        y0 = rng.randint(2, max(3, h - sign.height - 26))
        image.paste(sign, (x0, y0), sign)
        signs.append(
            {"text": text, "colour": colour, "kind": kind, "box": [x0, y0, x0 + sign.width, y0 + sign.height]}
        )
    return image, signs, shapes


def questions_for(
    signs: list[dict], shapes: list[str], rng: random.Random, split: str, yes: bool, colour: bool
) -> list[dict]:
    """Ground-truth QA pairs for one scene; every answer is determined by the drawing. `yes`: whether
    the scene's `has_text` question names one of its own texts; `colour`: whether its fourth question is
    `colour_of_text` (else `shape`). The corpus alternates both, so yes/no answers are exactly balanced."""
    texts = {s["text"] for s in signs}
    qa = [{"type": "count", "question": "How many signs are there?", "answer": str(len(signs))}]
    probe = rng.choice(signs)
    asked = probe["text"] if yes else text_for(rng, split, probe["kind"], texts)
    qa.append(
        {
            "type": "has_text",
            "question": f"Is there a sign that says {asked}?",
            "answer": "yes" if yes else "no",
        }
    )
    if len(signs) == 1:
        qa.append({"type": "read", "question": "What does the sign say?", "answer": signs[0]["text"]})
    else:
        sign = rng.choice(signs)
        what = "number" if sign["kind"] == "number" else "word"
        qa.append(
            {
                "type": "read_colour",
                "question": f"What {what} is on the {sign['colour']} sign?",
                "answer": sign["text"],
            }
        )
    sign = rng.choice(signs)
    if colour:
        qa.append(
            {
                "type": "colour_of_text",
                "question": f"What colour is the sign that says {sign['text']}?",
                "answer": sign["colour"],
            }
        )
    else:
        qa.append(
            {
                "type": "shape",
                "question": "Is there a circle?",
                "answer": "yes" if "circle" in shapes else "no",
            }
        )
    return qa


def split_counts(cfg: SignsConfig) -> dict[str, int]:
    return {"train": cfg.train, "val": cfg.val, "test": cfg.test}


def build_signs(root: Path, cfg: SignsConfig = SignsConfig()) -> Corpus:
    corpus = Corpus("signs", root)
    stamp = root / "annotations" / "config.json"
    wanted = json.dumps({**cfg.__dict__, "generator": 4}, sort_keys=True)
    if (
        stamp.is_file()
        and stamp.read_text() == wanted
        and all(corpus.annotations_file(s).is_file() for s in SPLITS)
    ):
        return corpus
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_id = 0
    for split, count in split_counts(cfg).items():
        image_dir = root / "images" / split
        if image_dir.is_dir():  # a corpus of another config: its images must not linger
            for old in image_dir.glob("signs_*.jpg"):
                old.unlink()
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations, qa = [], [], []
        for k in range(count):
            image_id += 1
            scene_rng = random.Random(f"{cfg.seed}-{image_id}")
            # exactly balanced yes/no answers per split: has_text alternates; every other scene asks
            # `shape` (the others `colour_of_text`), and of those every other one has a circle
            picture, signs, shapes = _scene(scene_rng, split, cfg, circle=(k // 4) % 2 == 0)
            name = f"signs_{image_id:06d}.jpg"
            picture.save(image_dir / name, quality=92)
            images.append({"id": image_id, "file_name": name, "width": cfg.width, "height": cfg.height})
            for j, s in enumerate(signs):
                x1, y1, x2, y2 = s["box"]
                annotations.append(
                    {
                        "id": image_id * 10 + j,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                        "text": s["text"],
                        "colour": s["colour"],
                        "kind": s["kind"],
                    }
                )
            scene_qa = questions_for(
                signs, shapes, scene_rng, split, yes=k % 2 == 0, colour=(k // 2) % 2 == 0
            )
            qa.extend({"image_id": image_id, **q} for q in scene_qa)
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
