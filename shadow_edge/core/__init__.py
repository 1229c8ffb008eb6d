"""Torch side: checkpoint readers, the validated model spec, and the reference PyTorch model."""

from shadow_edge.core.checkpoint import load_spec
from shadow_edge.core.model import ShadowModel, StepInputs

__all__ = ["load_spec", "ShadowModel", "StepInputs"]
