"""The torch-free runtime: numpy + onnxruntime + tokenizers (+ jinja2 for chat templates) only.

    from shadow_edge.runtime import ShadowRuntime
    rt = ShadowRuntime.load("ART")
    out = rt.generate("Hello", mode="shadow_only", max_new_tokens=32)
"""

from shadow_edge.runtime.classify import ClassificationResult
from shadow_edge.runtime.options import GenerationOptions
from shadow_edge.runtime.result import GenerationResult, Timings
from shadow_edge.runtime.runtime import ShadowRuntime
from shadow_edge.runtime.strategies import mode_names

ALL_MODES = mode_names(listed_only=True)  # every generation mode a user can ask for

__all__ = ["ShadowRuntime", "GenerationOptions", "GenerationResult", "Timings", "ALL_MODES", "ClassificationResult"]
