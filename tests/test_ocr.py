"""OCR expert: rendered text is read back, small text survives because we skip MoAI's 490 px squash,
every backend returns exactly what its library returns on correctly ordered (BGR) pixels, and no
model is ever downloaded."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import socket
import sys
import time
import types
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import annotators.ocr as ocr
from annotators.base import ImageInput, TextLine
from annotators.ocr import intra_op_threads, reading_order, to_bgr
from annotators.registry import make_expert
from annotators.weights import sha256_file
from core.errors import UserError, WeightsError
from corpora.decode import decode_image

FONT_DIR = (
    Path(importlib.util.find_spec("matplotlib").submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf"
)
FONTS = {
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "mono": "DejaVuSansMono.ttf",
}
# background colour (or "noise"), text colour
BACKGROUNDS = {
    "white": ((255, 255, 255), (0, 0, 0)),
    "dark": ((28, 30, 38), (235, 235, 225)),
    "coloured": ((0, 104, 55), (255, 255, 255)),
    "noise": ("noise", (35, 35, 35)),
}
SIZES = (18, 28, 40, 64)
PHRASES = [
    "STOP 42 MAIN ST",
    "EXIT 7",
    "OPEN DAILY",
    "Fresh Coffee 24 Hours",
    "PLATFORM 9",
    "Route 66 West",
    "NO PARKING",
    "Sale 50 Off",
    "Gate B12",
    "Bus Lane Only",
    "Speed Limit 30",
    "Welcome Home",
    "Exit Only",
    "Open 9 To 5",
    "Room 204",
    "Pharmacy",
    "ONE WAY",
    "Station Road 3",
    "Hotel Plaza",
    "Parking 2 Hours",
    "Library 1st Floor",
    "Push Door",
    "Taxi Rank",
    "Bakery Open",
    "Museum 10 AM",
    "Track 4",
    "Danger High Voltage",
    "Keep Left",
    "No Entry",
    "Post Office",
    "Car Wash 12",
    "City Centre 5",
]


@dataclass
class Band:
    """One sign: phrases one per row in a font, size and background."""

    phrases: list[str]
    font: str = "sans"
    size: int = 40
    background: str = "white"

    def condition(self) -> dict[str, str]:
        return {"font": self.font, "size": str(self.size), "background": self.background}


@dataclass
class Rendered:
    image: np.ndarray  # HxWx3 uint8 RGB
    phrases: list[str]
    boxes: list[tuple[int, int, int, int]]  # x1, y1, x2, y2 of each phrase's ink
    conditions: list[dict[str, str]]  # of each phrase


def render_bands(bands: list[Band], width: int | None = None, seed: int = 0) -> Rendered:
    """Bands stacked top to bottom, each a plain, coloured or lightly noisy background with its text."""
    faces = [ImageFont.truetype(str(FONT_DIR / FONTS[band.font]), band.size) for band in bands]
    margins = [max(24, band.size) for band in bands]
    heights = [
        2 * margin + int(band.size * 1.8) * (len(band.phrases) - 1) + 2 * band.size
        for band, margin in zip(bands, margins, strict=True)
    ]
    widths = [
        2 * margin + max(face.getbbox(phrase)[2] for phrase in band.phrases)
        for band, face, margin in zip(bands, faces, margins, strict=True)
    ]
    width = width or max(widths)
    canvas = Image.new("RGB", (width, sum(heights)))
    draw = ImageDraw.Draw(canvas)
    rng = np.random.default_rng(seed)
    phrases, boxes, conditions, top = [], [], [], 0
    for band, face, margin, height in zip(bands, faces, margins, heights, strict=True):
        fill, colour = BACKGROUNDS[band.background]
        if fill == "noise":
            canvas.paste(
                Image.fromarray(rng.normal(225, 18, (height, width, 3)).clip(0, 255).astype(np.uint8)),
                (0, top),
            )
        else:
            draw.rectangle((0, top, width, top + height), fill=fill)
        for row, phrase in enumerate(band.phrases):
            origin = (margin, top + margin + row * int(band.size * 1.8))
            draw.text(origin, phrase, font=face, fill=colour)
            boxes.append(tuple(int(v) for v in draw.textbbox(origin, phrase, font=face)))
            phrases.append(phrase)
            conditions.append(band.condition())
        top += height
    return Rendered(np.asarray(canvas), phrases, boxes, conditions)


def render(
    phrases: list[str],
    font: str = "sans",
    size: int = 40,
    background: str = "white",
    width: int | None = None,
) -> Rendered:
    return render_bands([Band(phrases, font, size, background)], width)


def rendered_set() -> list[Rendered]:
    """4 sign boards, one per font, each with 4 bands (one per background, 2 phrases each), sizes in a
    Latin square, so every font meets every background and every size. Boards rather than 16 tiny
    images: the detector scales short sides up to 736 px, so 16 tiny images would cost 4x the time."""
    boards = []
    for i, font in enumerate(FONTS):
        bands = []
        for j, background in enumerate(BACKGROUNDS):
            index = i * len(BACKGROUNDS) + j
            bands.append(
                Band(PHRASES[2 * index : 2 * index + 2], font, SIZES[(i + j) % len(SIZES)], background)
            )
        boards.append(render_bands(bands, seed=i))
    return boards


def words(text: str) -> list[str]:
    return [w for w in (re.sub(r"^\W+|\W+$", "", token) for token in text.upper().split()) if w]


def word_hits(expected: list[str], lines) -> tuple[int, int]:
    """(words of the phrases found among the words read, words expected), multiset-matched."""
    want = Counter(w for phrase in expected for w in words(phrase))
    got = Counter(w for line in lines for w in words(line.text))
    return sum((want & got).values()), sum(want.values())


def ink_margin(box: tuple[int, int, int, int]) -> float:
    """How far a detected line may reach beyond the ink: DB's unclip grows boxes by about half the text height."""
    return 0.6 * (box[3] - box[1]) + 3


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def expert():
    """The default OCR expert (rapidocr, PP-OCRv6 small), loaded once as a worker would."""
    ocr = make_expert("ocr", {})
    ocr.load()
    return ocr


@pytest.fixture(scope="module")
def rendered():
    return rendered_set()


@pytest.fixture(scope="module")
def rendered_outputs(expert, rendered):
    """One batch through the expert, as the pipeline calls it; keeps the wall time per image."""
    start = time.perf_counter()
    outputs = expert([ImageInput(i, r.image) for i, r in enumerate(rendered)])
    return outputs, (time.perf_counter() - start) / len(rendered)


@pytest.fixture
def offline(monkeypatch):
    """No network: any attempt to open a connection fails at once (as it would on an air-gapped worker)."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def lines_near(box: tuple[int, int, int, int], lines) -> list:
    """The lines whose centre lies on the phrase's ink (within the unclip margin)."""
    margin = ink_margin(box)
    near = []
    for line in lines:
        cx = sum(p[0] for p in line.polygon) / len(line.polygon)
        cy = sum(p[1] for p in line.polygon) / len(line.polygon)
        if box[0] - margin <= cx <= box[2] + margin and box[1] - margin <= cy <= box[3] + margin:
            near.append(line)
    return near


def accuracy_by_condition(rendered: list[Rendered], outputs) -> dict[str, tuple[int, int]]:
    """Word hits per phrase (read from the lines found where it was drawn), summed per condition."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item, output in zip(rendered, outputs, strict=True):
        for phrase, box, condition in zip(item.phrases, item.boxes, item.conditions, strict=True):
            hits, total = word_hits([phrase], lines_near(box, output.records))
            for key in ["all", *(f"{k}={v}" for k, v in condition.items())]:
                table[key][0] += hits
                table[key][1] += total
    return {key: (hits, total) for key, (hits, total) in table.items()}


def report(title: str, table: dict[str, tuple[int, int]]) -> str:
    return f"{title}: " + ", ".join(f"{key} {hits}/{total}" for key, (hits, total) in table.items())


# ----------------------------------------------------------------------------- reading rendered text


def test_rendered_text_is_read_back(expert, rendered, rendered_outputs):
    outputs, seconds = rendered_outputs
    assert [o.image_id for o in outputs] == list(range(len(rendered)))
    assert all(o.ok for o in outputs), [o.error for o in outputs if not o.ok]
    table = accuracy_by_condition(rendered, outputs)
    print(f"\n{report(expert.model_name(), table)}; {1000 * seconds:.0f} ms/image")
    hits, total = table["all"]
    assert total >= 70 and hits / total >= 0.9, report("word accuracy", table)
    # no font, size or background may fail as a whole (e.g. light text on dark)
    assert all(h / t >= 0.7 for h, t in table.values()), report("word accuracy", table)


def test_polygons_lie_inside_the_image_around_the_text(rendered, rendered_outputs):
    outputs, _ = rendered_outputs
    for item, output in zip(rendered, outputs, strict=True):
        height, width = item.image.shape[:2]
        for line in output.records:
            assert len(line.polygon) == 4
            assert all(0 <= x <= width and 0 <= y <= height for x, y in line.polygon), line
            assert 0.5 <= line.score <= 1.0
        for phrase, box in zip(item.phrases, item.boxes, strict=True):
            around = [line for line in output.records if _encloses(line.polygon, box)]
            assert len(around) == 1, (phrase, box, output.records)
        # reading order: the phrases were drawn one per row, top to bottom
        assert [line.text for line in output.records] == [
            line.text for line in sorted(output.records, key=lambda ln: min(y for _, y in ln.polygon))
        ]


def _encloses(polygon: list[list[float]], box: tuple[int, int, int, int]) -> bool:
    """The polygon covers the ink box and reaches no further than the unclip margin beyond it."""
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    margin = ink_margin(box)
    covers = (
        min(xs) <= box[0] + 2 and min(ys) <= box[1] + 2 and max(xs) >= box[2] - 2 and max(ys) >= box[3] - 2
    )
    tight = (
        min(xs) >= box[0] - margin
        and min(ys) >= box[1] - margin
        and max(xs) <= box[2] + margin
        and max(ys) <= box[3] + margin
    )
    return covers and tight


def test_small_text_at_native_resolution_beats_the_490_squash(expert):
    """Why we deviate from MoAI: 14 px text on a 1600x900 photo-sized canvas is read at native
    resolution; squashed to 490x490 (MoAI's input) the letters are ~4 px wide and mostly lost."""
    phrases = [
        "Platform 9 departures at 10 AM",
        "Station Road 3 Hotel Plaza",
        "Danger High Voltage Keep Left",
    ]
    strip = render(phrases, "sans", 14, "white", width=1600)
    canvas = np.full((900, 1600, 3), 255, np.uint8)
    canvas[380 : 380 + strip.image.shape[0]] = strip.image
    squashed = np.asarray(Image.fromarray(canvas).resize((490, 490), Image.Resampling.BICUBIC))
    native_out, squashed_out = expert([ImageInput(1, canvas), ImageInput(2, squashed)])
    native_hits, total = word_hits(phrases, native_out.records)
    squashed_hits, _ = word_hits(phrases, squashed_out.records)
    print(f"\nsmall text: native {native_hits}/{total} words, 490 squash {squashed_hits}/{total}")
    assert native_hits / total >= 0.9
    assert squashed_hits <= native_hits - 0.3 * total


def test_reading_order_groups_rows_then_left_to_right():
    def line(text, x, y, h=40):
        return TextLine(text, 0.9, [[x, y], [x + 100, y], [x + 100, y + h], [x, y + h]])

    # the right-hand word of each row sits a little higher than the left one (more than rapidocr's 10 px)
    shuffled = [line("d", 300, 88), line("a", 10, 20), line("c", 10, 100), line("b", 300, 6)]
    assert [ln.text for ln in reading_order(shuffled)] == ["a", "b", "c", "d"]


# ----------------------------------------------------------------------------- faithful to the libraries


def _direct_library_lines(backend: str, bgr: np.ndarray) -> list[tuple[str, float, np.ndarray]]:
    """Each library called as its README shows, with its own default settings and models."""
    if backend == "rapidocr":
        import rapidocr

        result = rapidocr.RapidOCR(params={"Global.log_level": "error"})(bgr)
        return list(zip(result.txts, result.scores, result.boxes, strict=True))
    import rapidocr_onnxruntime

    result, _ = rapidocr_onnxruntime.RapidOCR()(bgr)
    return [(text, score, np.asarray(box)) for box, text, score in result]


@pytest.mark.parametrize("backend", ["rapidocr", "rapidocr-onnxruntime"])
def test_records_equal_a_direct_library_call(backend, sample_image, offline):
    """Same lines, scores and boxes as the library on the same (BGR) pixels; only the order is ours.
    The library runs on its defaults, so this also proves our explicit model paths are its defaults."""
    image = decode_image(sample_image("bus")).image
    ocr = make_expert("ocr", {"backend": backend})
    ocr.load()
    (output,) = ocr([ImageInput(1, image)])
    direct = _direct_library_lines(backend, np.ascontiguousarray(image[..., ::-1]))

    assert len(direct) >= 4  # the bus carries several lines of text
    ours = sorted(output.records, key=lambda ln: ln.text)
    theirs = sorted(direct, key=lambda d: d[0])
    assert [ln.text for ln in ours] == [text for text, _, _ in theirs]
    for line, (_, score, box) in zip(ours, theirs, strict=True):
        assert line.score == pytest.approx(float(score), abs=1e-5)
        np.testing.assert_allclose(np.asarray(line.polygon), np.asarray(box, dtype=np.float64), atol=1e-3)
    assert offline == []


@pytest.mark.parametrize("package", ["rapidocr", "rapidocr_onnxruntime"])
def test_our_array_is_what_the_library_makes_of_an_rgb_image(package):
    """Both libraries turn a PIL (RGB) image into BGR themselves but take an ndarray as is: so the
    array we hand them must be the BGR one, exactly what their own loader produces."""
    loader = importlib.import_module(f"{package}.utils.load_image").LoadImage()
    rgb = render(["Red Blue"], size=28, background="coloured").image.copy()
    rgb[..., 0] = np.arange(rgb.shape[1], dtype=np.uint8)[None, :]  # make every channel different
    np.testing.assert_array_equal(loader(Image.fromarray(rgb)), to_bgr(rgb))
    assert not np.array_equal(to_bgr(rgb), rgb)


def test_the_expert_hands_the_library_bgr(expert):
    seen: list[np.ndarray] = []
    engine = expert.engine

    class Spy:
        def __call__(self, array, *args, **kwargs):
            seen.append(array.copy())
            return engine(array, *args, **kwargs)

    rgb = render(["EXIT 7"], size=40, background="coloured").image
    expert.engine = Spy()
    try:
        (output,) = expert([ImageInput(1, rgb)])
    finally:
        expert.engine = engine
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], rgb[..., ::-1])
    assert word_hits(["EXIT 7"], output.records) == (2, 2)


# ----------------------------------------------------------------------------- identity, offline, config


def _shipped_sha(package: str, roles: dict[str, str]) -> str:
    folder = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / "models"
    digest = hashlib.sha256()
    for role, name in roles.items():
        digest.update(f"{role}={sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()


def test_loads_offline_and_identity_is_stable(expert, offline):
    package_models = Path(importlib.util.find_spec("rapidocr").submodule_search_locations[0]) / "models"
    before = sorted(package_models.iterdir())
    again = make_expert("ocr", {"backend": "rapidocr"})
    again.load()
    (output,) = again([ImageInput(1, render(["OPEN DAILY"], size=40).image)])
    assert word_hits(["OPEN DAILY"], output.records) == (2, 2)
    assert offline == [] and sorted(package_models.iterdir()) == before

    assert again.identity == expert.identity  # a missing "backend" key means the default backend
    assert expert.identity.model == "PP-OCRv6-small" and expert.identity.backend == "rapidocr"
    assert expert.weights_sha256() == _shipped_sha(
        "rapidocr",
        {
            "det": "PP-OCRv6_det_small.onnx",
            "cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
            "rec": "PP-OCRv6_rec_small.onnx",
        },
    )
    assert set(expert.providers()) == {"det", "cls", "rec"}
    # only the models that run are hashed; every setting is part of the config hash
    no_cls = make_expert("ocr", {"angle_classifier": False})
    assert no_cls.weights_sha256() == _shipped_sha(
        "rapidocr", {"det": "PP-OCRv6_det_small.onnx", "rec": "PP-OCRv6_rec_small.onnx"}
    )
    assert no_cls.identity.config_hash != expert.identity.config_hash
    v4 = make_expert("ocr", {"backend": "rapidocr-onnxruntime"})
    assert v4.identity.model == "PP-OCRv4-mobile"
    assert v4.weights_sha256() == _shipped_sha(
        "rapidocr_onnxruntime",
        {
            "det": "ch_PP-OCRv4_det_infer.onnx",
            "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "rec": "ch_PP-OCRv4_rec_infer.onnx",
        },
    )


@pytest.mark.parametrize("backend", ["rapidocr", "rapidocr-onnxruntime"])
def test_a_missing_model_is_an_error_not_a_download(backend, monkeypatch, tmp_path, offline):
    given = make_expert("ocr", {"backend": backend, "rec_model": str(tmp_path / "nope.onnx")})
    with pytest.raises(WeightsError, match="nope.onnx"):
        given.load()
    shipped = {**ocr.SHIPPED_MODELS[backend], "det": "gone_det.onnx"}
    monkeypatch.setitem(ocr.SHIPPED_MODELS, backend, shipped)
    with pytest.raises(WeightsError, match="gone_det.onnx.*never downloads"):
        make_expert("ocr", {"backend": backend}).load()
    assert offline == []


def test_other_model_files_can_be_named(tmp_path):
    shipped = Path(importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations[0]) / "models"
    ocr_v4_det = make_expert("ocr", {"det_model": str(shipped / "ch_PP-OCRv4_det_infer.onnx")})
    assert (
        ocr_v4_det.model_name() == "ch_PP-OCRv4_det_infer+ch_ppocr_mobile_v2.0_cls_mobile+PP-OCRv6_rec_small"
    )
    assert ocr_v4_det.weights_sha256() != make_expert("ocr", {}).weights_sha256()


@pytest.mark.parametrize("backend", ["rapidocr", "rapidocr-onnxruntime"])
def test_settings_reach_the_library(backend):
    one = make_expert(
        "ocr",
        {
            "backend": backend,
            "threads": 1,
            "device": "cpu",
            "det_min_side": 64,
            "score_threshold": 0.3,
            "angle_classifier": False,
        },
    )
    one.load()
    assert set(one.providers()) == {"det", "rec"}  # no classifier session when it is off
    assert set(one.providers().values()) == {"CPUExecutionProvider"}
    for session in one.sessions().values():
        assert session.get_session_options().intra_op_num_threads == 1
    assert one.engine.text_det.limit_side_len == 64
    assert one.engine.text_score == 0.3 and one.engine.use_cls is False


def test_automatic_threads_follow_the_actor_share(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert intra_op_threads(0) == 1
    assert intra_op_threads(1) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert intra_op_threads(0) == -1  # onnxruntime decides
    assert intra_op_threads(10_000) == os.cpu_count()


def test_huge_images_are_scaled_down_but_polygons_stay_in_original_pixels():
    item = render(["STOP 42 MAIN ST"], size=64, width=2400)
    canvas = np.full((1400, 2400, 3), 255, np.uint8)
    canvas[600 : 600 + item.image.shape[0]] = item.image
    box = (item.boxes[0][0], item.boxes[0][1] + 600, item.boxes[0][2], item.boxes[0][3] + 600)
    capped = make_expert("ocr", {"max_side": 1200})
    capped.load()
    (output,) = capped([ImageInput(1, canvas)])
    assert [line.text for line in output.records] == ["STOP 42 MAIN ST"]
    assert _encloses(output.records[0].polygon, box)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"backend": "tesseract"}, "unknown"),
        ({"score": 0.5}, "unknown config keys"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"max_side": 10}, "max_side"),
        ({"threads": -2}, "threads"),
        ({"det_min_side": 8}, "det_min_side"),
        ({"angle_classifier": "false"}, "angle_classifier"),
    ],
)
def test_bad_config_is_refused(config, message):
    with pytest.raises(UserError, match=message):
        make_expert("ocr", config)


# ----------------------------------------------------------------------------- paddleocr (optional extra)


def test_paddleocr_missing_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "paddleocr", None)  # as if not installed, even where it is
    with pytest.raises(WeightsError, match="det_model"):
        make_expert("ocr", {"backend": "paddleocr", "device": "cpu"}).load()
    folders = {f"{role}_model": str(tmp_path / role) for role in ("det", "rec", "cls")}
    for folder in folders.values():
        Path(folder).mkdir()
        (Path(folder) / "inference.json").write_text(folder)
    with pytest.raises(UserError, match=re.escape("pip install moai-forge[paddle]")):
        make_expert("ocr", {"backend": "paddleocr", "device": "cpu", **folders}).load()


def test_paddleocr_adapter_passes_bgr_and_maps_results(monkeypatch, tmp_path):
    """PaddleOCR itself is not installed here: a stand-in with its 3.x interface checks our side."""
    calls: dict[str, object] = {}

    class FakePaddleOCR:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def predict(self, array):
            calls["array"] = array.copy()
            quad = lambda x, y: np.array([[x, y], [x + 50, y], [x + 50, y + 20], [x, y + 20]])  # noqa: E731
            return [
                {
                    "rec_texts": ["second", "first", "faint"],
                    "rec_scores": [0.9, 0.95, 0.3],
                    "rec_polys": [quad(10, 60), quad(10, 10), quad(80, 10)],
                }
            ]

    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(PaddleOCR=FakePaddleOCR))
    folders = {f"{role}_model": str(tmp_path / role) for role in ("det", "rec", "cls")}
    for folder in folders.values():
        Path(folder).mkdir()
        (Path(folder) / "inference.pdiparams").write_bytes(folder.encode())
    paddle = make_expert("ocr", {"backend": "paddleocr", "device": "cpu", **folders})
    paddle.load()
    rgb = render(["EXIT 7"], background="coloured").image
    (output,) = paddle([ImageInput(1, rgb)])

    np.testing.assert_array_equal(calls["array"], rgb[..., ::-1])
    assert [(line.text, line.score) for line in output.records] == [("first", 0.95), ("second", 0.9)]
    assert output.records[0].polygon == [[10.0, 10.0], [60.0, 10.0], [60.0, 30.0], [10.0, 30.0]]
    init = calls["init"]
    assert (
        init["text_detection_model_dir"] == folders["det_model"] and init["use_textline_orientation"] is True
    )
    assert init["text_rec_score_thresh"] == 0.5 and init["device"] == "cpu"
    assert len(paddle.weights_sha256()) == 64


# ----------------------------------------------------------------------------- backend comparison


@pytest.mark.slow
def test_backends_compared_on_the_rendered_set(rendered, expert):
    """The numbers behind the default: PP-OCRv6 small (rapidocr) vs PP-OCRv4 mobile (rapidocr-onnxruntime)."""
    accuracy = {}
    for backend in ("rapidocr", "rapidocr-onnxruntime"):
        ocr_expert = expert if backend == "rapidocr" else make_expert("ocr", {"backend": backend})
        if ocr_expert.engine is None:
            ocr_expert.load()
        ocr_expert([ImageInput(0, rendered[0].image)])  # warm-up
        start = time.perf_counter()
        outputs = ocr_expert([ImageInput(i, r.image) for i, r in enumerate(rendered)])
        seconds = (time.perf_counter() - start) / len(rendered)
        table = accuracy_by_condition(rendered, outputs)
        print(f"\n{report(backend, table)}; {1000 * seconds:.0f} ms/image")
        accuracy[backend] = table["all"][0] / table["all"][1]
    assert accuracy["rapidocr"] >= 0.9
    assert accuracy["rapidocr"] >= accuracy["rapidocr-onnxruntime"]
