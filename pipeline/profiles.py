"""Job specs and expert profiles (YAML data, not code) and the exactly-once key of each expert.

A *profile* (`configs/profiles/<name>.yaml`) chooses backend, model and weights for each expert. A
*job* (`jobs/<dataset>.yaml`) names the profile a dataset uses by default and the run's knobs
(batch sizes, actor counts, whether random-init weights are acceptable for this corpus).

Both are read by pipeline/config.py into the dataclasses below: unknown keys (profiles: also those an
expert's backend does not read), wrong types and impossible values are one-line errors naming the file.

The key of an expert's work on an image is (image_id, expert, plan hash). The plan hash covers the
expert's config, its code version, the bytes of every weight file the config names, and the plan
hashes of the experts it reads from (segmentation reads detection; sgg reads both), so changing
one expert's config recomputes that expert and the ones downstream of it, nothing else.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotators.base import RANDOM_INIT
from annotators.registry import EXPERT_NAMES, EXPERTS
from core.config import (
    ConfigError,
    at_least,
    between,
    check_mapping,
    fields_of,
    keyed_by,
    one_of,
    read_yaml,
    shown,
    typed,
)
from core.errors import UserError
from core.hashing import config_hash
from core.paths import package_dir
from verbalize.moai import VerbalizeConfig

PROFILES_DIR = package_dir("configs") / "profiles"
JOBS_DIR = package_dir("jobs")
REPO = package_dir("configs").parent  # './…' and '../…' paths in profiles are relative to it


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


# What a job file may say beyond its type: a batch of 0 or a negative one would plan the work and then
# run none of it (reporting success), and an actor pool or GPU share only means something per expert.
JOB_CHECKS = {
    "batch_size": at_least(1),
    "commit_every": at_least(1),
    "actors": keyed_by(EXPERT_NAMES, at_least(1)),
    "gpus": keyed_by(EXPERT_NAMES, between(0.0, 1.0)),
}
PROFILE_CHECKS = {"experts": keyed_by(EXPERT_NAMES)}


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
        names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        close = difflib.get_close_matches(str(name_or_path), names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"No profile '{name_or_path}' (looked for {path}).{hint} Known profiles: {', '.join(names)}."
        )
    where = shown(path)
    profile = typed(Profile, read_yaml(path), where, checks=PROFILE_CHECKS, name=path.stem)
    for name, block in profile.experts.items():
        check_expert_block(name, block, where)
    check_mapping(profile.verbalize, fields_of(VerbalizeConfig), where, "verbalize")
    try:  # its own range checks (thresholds in [0, 1], ...), named after this file
        VerbalizeConfig.from_mapping(profile.verbalize)
    except UserError as err:
        raise ConfigError(f"{where}: {err}") from None
    profile.experts = {k: _expand(v) for k, v in profile.experts.items() if v.get("enabled", True)}
    if not profile.experts:  # a profile that runs nothing would commit empty aux rows and exit 0
        raise ConfigError(f"{where}: no expert enabled under 'experts' (known: {', '.join(EXPERT_NAMES)})")
    for name in profile.experts:
        missing = [u for u in EXPERTS[name].upstream if u not in profile.experts]
        if missing:
            raise ConfigError(f"{where}: expert 'experts.{name}' needs {missing} enabled too")
    return profile


def check_expert_block(name: str, block: dict[str, Any], where: str) -> None:
    """One `experts.<name>` block: a known backend, and only the keys that backend reads."""
    path = f"experts.{name}"
    if not block:  # `ocr: {}` used to mean "off"; say which is meant
        raise ConfigError(f"{where}: '{path}' is empty; give at least its backend, or 'enabled: false'")
    default, backends = EXPERTS[name].default_backend, EXPERTS[name].backend_keys
    one_of(*backends)(block.get("backend", default), where, f"{path}.backend")
    keys = backends[block.get("backend", default)]
    hints: dict[str, Any] = dict.fromkeys(keys if keys is not None else block, Any)
    check_mapping(block, {**hints, "enabled": bool}, where, path)


def load_job(dataset: str) -> JobSpec:
    path = JOBS_DIR / f"{dataset}.yaml"
    if not path.is_file():
        path = JOBS_DIR / "default.yaml"
    return typed(JobSpec, read_yaml(path), shown(path), checks=JOB_CHECKS, dataset=dataset)


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


def plan_hashes(profile: Profile) -> dict[str, str]:
    """The exactly-once key part for each enabled expert (see module docstring)."""
    hashes: dict[str, str] = {}
    for name, spec in EXPERTS.items():  # in dependency order: upstream hashes exist when needed
        if name not in profile.experts:
            continue
        config = profile.experts[name]
        hashes[name] = config_hash(
            {
                "expert": name,
                "version": spec.version(),
                "config": config,
                "files": _file_digests(config, {}),
                "upstream": {u: hashes[u] for u in spec.upstream},
            }
        )
    return hashes
