"""The DSpark drafter shipped inside the package for SmolLM2-135M-Instruct."""
from __future__ import annotations

from pathlib import Path

DEFAULT_DRAFTER_NAME = "smollm2-135m-dspark"
DEFAULT_DRAFTER_DIR = Path(__file__).resolve().parents[1] / "assets" / "drafters" / DEFAULT_DRAFTER_NAME
"""Where the package keeps the default drafter (see `default_drafter_path` for the checked lookup)."""


def default_drafter_path() -> Path:
    """Directory of the embedded default drafter (DeepSpec format: config.json, model.safetensors, sts.json).

    Raises:
        FileNotFoundError: the package was installed without its assets.
    """
    path = DEFAULT_DRAFTER_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the default drafter is missing from the installed package: {path}/config.json; "
                                f"reinstall dspark-sglang or pass --speculative-draft-model-path")
    return path
