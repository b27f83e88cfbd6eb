"""Decoding odd and bad files: odd-but-valid images are converted, bad ones fail with a typed reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from corpora.decode import DecodeError, decode_image


def _save(tmp_path, name, image: Image.Image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _gradient(w=64, h=48):
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], axis=-1)


def test_rgb_jpeg_is_unchanged_in_shape(sample_image):
    decoded = decode_image(sample_image("coffee"))
    assert decoded.image.shape == (400, 600, 3) and decoded.image.dtype == np.uint8
    assert decoded.source_mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA", "I;16", "I", "F"])
def test_modes_become_rgb(tmp_path, mode):
    base = Image.fromarray(_gradient())
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        path = _save(tmp_path, "x.png", im)
    elif mode in ("I", "F"):
        im = base.convert("L").convert(mode)
        path = _save(tmp_path, "x.tiff", im)
    else:
        im = base.convert(mode)
        path = _save(tmp_path, "x.tiff" if mode == "CMYK" else "x.png", im)
    decoded = decode_image(path)
    assert decoded.image.shape == (48, 64, 3) and decoded.image.dtype == np.uint8
    if mode in ("L", "I;16", "I", "F"):
        gray = np.asarray(base.convert("L"), dtype=np.int16)
        assert np.abs(decoded.image[..., 0].astype(np.int16) - gray).max() <= 1


def test_sixteen_bit_keeps_full_range(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    decoded = decode_image(_save(tmp_path, "x.png", Image.fromarray(ramp)))
    assert decoded.image.min() == 0 and decoded.image.max() == 255 and decoded.source_mode.startswith("I;16")


def test_rgba_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:10, :, :] = [255, 0, 0, 255]  # opaque red top half, fully transparent bottom half
    decoded = decode_image(_save(tmp_path, "x.png", Image.fromarray(rgba, "RGBA")))
    assert tuple(decoded.image[0, 0]) == (255, 0, 0)
    assert tuple(decoded.image[-1, -1]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(_gradient(64, 32))  # landscape pixels, EXIF says rotate 90° => portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(_save(tmp_path, "x.jpg", im, exif=exif.tobytes()))
    assert decoded.image.shape[:2] == (64, 32) and decoded.exif_rotated


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "x.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = decode_image(path)
    assert decoded.frames == 2
    assert decoded.image[..., 0].mean() > 200 and decoded.image[..., 2].mean() < 50


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (so no huge allocation is needed to test limits)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"this is a text file, not a picture\n" * 10, "not-an-image"),
        ("huge.png", _png_with_header_size(20000, 20000), "too-large"),  # beyond Pillow's bomb limit
        ("big.png", _png_with_header_size(10000, 10000), "too-large"),  # above our pixel limit
        ("tiny.png", _png_with_header_size(1, 1), "too-small"),
    ],
)
def test_bad_files_fail_with_a_typed_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DecodeError) as err:
        decode_image(path)
    assert err.value.reason == reason and err.value.message


def test_truncated_jpeg_is_reported(tmp_path, sample_image):
    data = sample_image("astronaut").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError) as err:
        decode_image(path)
    assert err.value.reason == "truncated"


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(DecodeError) as err:
        decode_image(tmp_path / "nope.jpg")
    assert err.value.reason == "unreadable"
