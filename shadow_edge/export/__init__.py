"""Torch side: export a ShadowPEFT checkpoint to a validated ONNX artifact."""

from shadow_edge.export.artifact import export_artifact
from shadow_edge.export.options import ExportOptions
from shadow_edge.export.pack import export_pack

__all__ = ["export_artifact", "export_pack", "ExportOptions"]
