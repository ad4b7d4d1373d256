"""Verify-length policies (pure functions over survivals and an SPS table) and the SPS table helpers.
Never imports sglang."""
from dspark_sglang.scheduling.context_cost import ContextCost
from dspark_sglang.scheduling.policies import (MIN_PRUNING_FLOOR, POLICIES, LaggedBudget, admission_floor,
                                               plan_verify_lens, pruning_floor)
from dspark_sglang.scheduling.sps import sps_table_from_points, sps_lookup

__all__ = ["ContextCost", "MIN_PRUNING_FLOOR", "POLICIES", "LaggedBudget", "admission_floor", "plan_verify_lens",
           "pruning_floor", "sps_table_from_points", "sps_lookup"]
