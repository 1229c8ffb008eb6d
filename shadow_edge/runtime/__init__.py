"""The torch-free runtime: numpy + onnxruntime + tokenizers (+ jinja2 for chat templates) only.

    from shadow_edge.runtime import ShadowRuntime
    rt = ShadowRuntime.load("ART")
    out = rt.generate("Hello", mode="shadow_only", max_new_tokens=32)
"""

from shadow_edge.runtime.options import ALL_MODES, GenerationOptions
from shadow_edge.runtime.result import GenerationResult, Timings
from shadow_edge.runtime.runtime import ShadowRuntime

__all__ = ["ShadowRuntime", "GenerationOptions", "GenerationResult", "Timings", "ALL_MODES"]
