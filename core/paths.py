"""Where things are: the default warehouse, and the YAML that ships inside the installed packages
(`configs/` for profiles and training configs, `jobs/` for job specs). Both load the same from a
source checkout (editable install) and from a normal wheel install."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_WAREHOUSE = Path("outputs") / "warehouse"  # relative to where the command runs


def package_dir(package: str) -> Path:
    """The folder of an installed data package (`configs`, `jobs`), found by name, not imported."""
    return Path(str(files(package)))


def config_file(path: str | Path) -> Path:
    """A training config by path; failing that, the shipped one of that file name (so `--config
    configs/train-tiny.yaml` or `--config train-tiny` also works outside a source checkout)."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = package_dir("configs") / (path.name if path.suffix else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path
