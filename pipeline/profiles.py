"""Job specs and expert profiles (YAML data, not code) and the exactly-once key of each expert.

A *profile* (`configs/profiles/<name>.yaml`) chooses backend, model and weights for each expert. A
*job* (`jobs/<dataset>.yaml`) names the profile a dataset uses by default and the run's knobs
(batch sizes, actor counts, whether random-init weights are acceptable for this corpus).

The key of an expert's work on an image is (image_id, expert, plan hash). The plan hash covers the
expert's config, its code version, the bytes of every weight file the config names, and the plan
hashes of the experts it reads from (segmentation reads detection; sgg reads both), so changing
one expert's config recomputes that expert and the ones downstream of it, nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from annotators.base import EXPERT_NAMES, RANDOM_INIT, config_hash
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO / "configs" / "profiles"
JOBS_DIR = REPO / "jobs"
UPSTREAM = {"detection": (), "segmentation": ("detection",), "sgg": ("detection", "segmentation"), "ocr": ()}
EXPERT_VERSIONS_MODULE = {
    "detection": "annotators.detection",
    "segmentation": "annotators.segmentation",
    "sgg": "annotators.sgg",
    "ocr": "annotators.ocr",
}


@dataclass
class Profile:
    name: str
    experts: dict[str, dict[str, Any]]  # expert name -> config block (only enabled experts)
    verbalize: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def random_init_experts(self) -> list[str]:
        return [name for name, cfg in self.experts.items() if cfg.get("weights") == RANDOM_INIT]


@dataclass
class JobSpec:
    dataset: str
    profile: str
    allow_random_weights: bool = False
    batch_size: int = 4
    commit_every: int = 64  # images per warehouse commit
    actors: dict[str, int] = field(default_factory=dict)  # expert -> actor pool size
    gpus: dict[str, float] = field(default_factory=dict)  # expert -> fraction of a GPU per actor
    splits: list[str] | None = None


def _expand(value: Any) -> Any:
    """Expand ${VAR} / ~ in strings and resolve repo-relative paths ('./…', '../…') against the repo."""
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, str):
        expanded = os.path.expanduser(os.path.expandvars(value))
        if expanded.startswith(("./", "../")):
            return str((REPO / expanded).resolve())
        return expanded
    return value


def load_profile(name_or_path: str) -> Profile:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise UserError(f"No profile '{name_or_path}' (looked for {path}). Known profiles: {known}.")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    experts = {k: _expand(v) for k, v in (raw.get("experts") or {}).items() if v and v.get("enabled", True)}
    unknown = set(experts) - set(EXPERT_NAMES)
    if unknown:
        raise UserError(
            f"Profile {path} names unknown experts {sorted(unknown)}; known: {list(EXPERT_NAMES)}."
        )
    for name in experts:
        missing = [u for u in UPSTREAM[name] if u not in experts]
        if missing:
            raise UserError(f"Profile {path}: expert '{name}' needs {missing} enabled too.")
    return Profile(path.stem, experts, dict(raw.get("verbalize") or {}), str(raw.get("description", "")))


def load_job(dataset: str) -> JobSpec:
    path = JOBS_DIR / f"{dataset}.yaml"
    if not path.is_file():
        path = JOBS_DIR / "default.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    raw["dataset"] = dataset
    return JobSpec(**raw)


def _file_digests(config: Any, out: dict[str, str]) -> dict[str, str]:
    from annotators.weights import sha256_file

    if isinstance(config, dict):
        for value in config.values():
            _file_digests(value, out)
    elif isinstance(config, list):
        for value in config:
            _file_digests(value, out)
    elif isinstance(config, str) and os.path.isabs(config) and os.path.isfile(config):
        out[config] = _cached_sha256(config, sha256_file)
    return out


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: str, sha256_file) -> str:
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(Path(path))
    return _SHA_CACHE[key]


def expert_version(name: str) -> str:
    import importlib

    module = importlib.import_module(EXPERT_VERSIONS_MODULE[name])
    classes = [v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", None) == name]
    return ",".join(sorted({str(c.version) for c in classes})) or "1"


def plan_hashes(profile: Profile) -> dict[str, str]:
    """The exactly-once key part for each enabled expert (see module docstring)."""
    hashes: dict[str, str] = {}
    for name in ("detection", "segmentation", "sgg", "ocr"):
        if name not in profile.experts:
            continue
        config = profile.experts[name]
        hashes[name] = config_hash(
            {
                "expert": name,
                "version": expert_version(name),
                "config": config,
                "files": _file_digests(config, {}),
                "upstream": {u: hashes[u] for u in UPSTREAM[name]},
            }
        )
    return hashes
