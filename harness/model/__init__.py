"""Hardware/model presets, the per-instance cost model, and the PrfaaS analytic planner."""

from harness.model.cost import InstanceCost
from harness.model.presets import Hardware, ModelSpec, known_presets, load_hardware, load_model

__all__ = ["Hardware", "InstanceCost", "ModelSpec", "known_presets", "load_hardware", "load_model"]
