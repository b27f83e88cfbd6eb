"""Find, download and verify weight files. Never a silent substitute, never a hang.

A weight spec names a file and (optionally) where it comes from:

    {"file": "sam_vit_b_01ec64.pth", "url": "https://…/sam_vit_b_01ec64.pth", "sha256": "ec2df62…"}

Lookup order: an absolute/relative `path` given by the user; then `$MOAI_WEIGHTS` (default
`~/.cache/moai-forge/weights`); then, if a `url` is known and downloads are allowed, a download
into that folder with its sha256 checked before it is moved into place. When none of that works the
error names the file, every place it was looked for, and how to get it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import WeightsError


def weights_dir() -> Path:
    return Path(os.environ.get("MOAI_WEIGHTS", Path.home() / ".cache" / "moai-forge" / "weights"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, expected_sha256: str | None, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise WeightsError(
                f"Downloaded {url} but its sha256 is {digest.hexdigest()}, not the expected {expected_sha256}; "
                "the file was discarded."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_weights(
    spec: Mapping[str, Any], *, allow_download: bool | None = None, timeout: float = 30.0
) -> Path:
    """Return a local, verified path for the weight file described by `spec`."""
    file_name = spec.get("file") or (Path(spec["path"]).name if spec.get("path") else None)
    if not file_name:
        raise WeightsError(f"weight spec {dict(spec)!r} names no file")
    expected = spec.get("sha256")
    looked: list[Path] = []
    candidates = []
    if spec.get("path"):
        candidates.append(Path(spec["path"]).expanduser())
    candidates.append(weights_dir() / file_name)
    for candidate in candidates:
        looked.append(candidate)
        if candidate.is_file():
            if expected and sha256_file(candidate) != expected:
                raise WeightsError(
                    f"{candidate} exists but its sha256 does not match {expected}: the file is corrupt or a "
                    "different version. Delete it and fetch it again."
                )
            return candidate
    if allow_download is None:
        allow_download = os.environ.get("MOAI_OFFLINE", "0") != "1"
    url = spec.get("url")
    if url and allow_download:
        try:
            _download(url, weights_dir() / file_name, expected, timeout)
            return weights_dir() / file_name
        except WeightsError:
            raise
        except Exception as err:  # network down, DNS, HTTP error: say so plainly
            reason = f"downloading it from {url} failed ({type(err).__name__}: {err})"
        how = f"download {url} and put it in {weights_dir()} (or set MOAI_WEIGHTS to the folder holding it)"
    elif url:
        reason = "downloads are disabled (MOAI_OFFLINE=1)"
        how = f"download {url} and put it in {weights_dir()}"
    else:
        reason = "no download location is known for it"
        how = f"put it in {weights_dir()} or give its full path in the profile"
    where = ", ".join(str(p) for p in looked)
    raise WeightsError(
        f"Weight file '{file_name}' was not found (looked in: {where}) and {reason}. To fix: {how}. "
        "Profiles that may run without pretrained weights must say `weights: random-init` explicitly "
        "(and the run needs --allow-random-weights)."
    )
