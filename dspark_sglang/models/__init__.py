"""Models this project runs against without a model hub (converted once, cached on disk)."""
from dspark_sglang.models.default_drafter import default_drafter_path
from dspark_sglang.models.smollm2 import smollm2_path

__all__ = ["default_drafter_path", "smollm2_path"]
