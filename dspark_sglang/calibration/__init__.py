"""Confidence calibration (pure functions over arrays): Sequential Temperature Scaling (DSpark §3.2.2)."""
from dspark_sglang.calibration.sts import (expected_calibration_error, fit_sts, prefix_survival,
                                           prefix_survival_ece, survival_labels)

__all__ = ["expected_calibration_error", "fit_sts", "prefix_survival", "prefix_survival_ece", "survival_labels"]
