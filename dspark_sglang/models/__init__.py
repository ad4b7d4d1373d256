"""Models this project runs against without a model hub (converted once, cached on disk)."""
from dspark_sglang.models.smollm2 import smollm2_path

__all__ = ["smollm2_path"]
