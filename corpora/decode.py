"""Decode any image file into HxWx3 uint8 RGB, or fail with a typed reason (never a crash).

Odd but valid inputs are converted: grayscale, 1-bit, palette, RGBA/LA (composited on white),
CMYK, 16-bit and float images, EXIF orientation (applied), animated/multi-page files (first frame).
Inputs that cannot or should not be annotated raise `DecodeError` with a short machine-readable
`reason` (a warehouse `errors` row) and a human message.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_SIDE = 8
MAX_PIXELS = 89_478_485  # Pillow's default decompression-bomb threshold (2**28 // 3)


class DecodeError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class Decoded:
    image: np.ndarray  # HxWx3 uint8 RGB
    source_mode: str  # Pillow mode of the file before conversion, e.g. "CMYK", "I;16"
    exif_rotated: bool
    frames: int


def _full_scale(mode: str, array: np.ndarray) -> float:
    """The value that means 'white' for a high-bit-depth image: by its type, else by its range."""
    peak = float(array.max()) if array.size else 0.0
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F" and peak <= 1.0:
        return 1.0
    for scale in (255.0, 65535.0):
        if peak <= scale:
            return scale
    return peak


def _to_rgb(im):
    from PIL import Image

    mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        gray = np.clip(array / _full_scale(mode, array) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return im.convert("RGB")


def decode_image(path: str | Path, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Decoded:
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DecodeError("unreadable", f"cannot read {path.name}: {err.strerror or err}") from None
    if size == 0:
        raise DecodeError("empty", f"{path.name} is an empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as err:
            raise DecodeError("too-large", str(err)) from None
        except UnidentifiedImageError:
            raise DecodeError("not-an-image", f"{path.name} is not an image Pillow can identify") from None
        except OSError as err:
            raise DecodeError("unreadable", f"cannot open {path.name}: {err}") from None
        except (
            Exception
        ) as err:  # e.g. an optional format plugin (HEIF) another library registered is missing
            raise DecodeError(
                "not-an-image", f"{path.name}: no image reader accepts it ({type(err).__name__}: {err})"
            ) from None
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise DecodeError(
                    "too-large",
                    f"{width}x{height} = {width * height / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP limit "
                    "(Pillow's decompression-bomb threshold; raise decode.max_pixels to accept it)",
                )
            if min(width, height) < min_side:
                raise DecodeError("too-small", f"{width}x{height} is smaller than {min_side} px on a side")
            frames = int(getattr(im, "n_frames", 1) or 1)
            source_mode = im.mode
            try:
                im.seek(0)
                im.load()
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                reason = (
                    "truncated" if "truncated" in str(err).lower() or isinstance(err, EOFError) else "corrupt"
                )
                raise DecodeError(reason, f"{path.name}: {err}") from None
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            oriented = ImageOps.exif_transpose(im) if orientation not in (None, 1) else im
            rgb = _to_rgb(oriented)
            array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:  # pragma: no cover - _to_rgb guarantees this
        raise DecodeError("unsupported-mode", f"{path.name}: mode {source_mode} gave shape {array.shape}")
    return Decoded(np.ascontiguousarray(array), source_mode, orientation not in (None, 1), frames)
