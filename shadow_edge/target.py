"""The execution target of an artifact, declared once: the device its graphs are built for and how they run there.

Standard library only. The exporter builds an `ExecutionTarget` from its options and builds the
graphs for it (MatMulNBits arithmetic, attention kinds, KV dtype); the manifest records it under
`target`; the runtime reads it back for its onnxruntime providers and weight prepacking, and
refuses providers of another device with one clear error. Artifacts written before the field was
recorded read as the CPU target they were built for.

Only the CPU target exists. A CUDA target needs graphs this exporter does not build (onnxruntime's
CUDA GroupQueryAttention takes float16/bfloat16, not float32) and KV buffers on the device; it is
not claimed until it runs on a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from shadow_edge.errors import ArtifactError
from shadow_edge.io_spec import ATTENTION_KINDS, FLOAT

DEVICE_PROVIDERS = {"cpu": ("CPUExecutionProvider",)}  # device -> onnxruntime providers, in priority order
QUANT_COMPUTE = {"float32": 1, "int8": 4}  # MatMulNBits arithmetic -> its accuracy_level attribute
PREPACK_POLICIES = ("decoders_and_quantized",)  # which sessions prepack their weights (runtime/session.py)
THREAD_POLICIES = ("shared_pool",)  # one process-wide onnxruntime pool for every session (runtime/session.py)


@dataclass(frozen=True)
class ExecutionTarget:
    """Where an artifact's graphs run and with what: recorded in the manifest, read by builder and runtime."""

    device: str = "cpu"
    dtype: str = FLOAT  # float tensors of the graphs' I/O
    kv_dtype: str = FLOAT  # the KV cache buffers
    attention: tuple[str, ...] = ATTENTION_KINDS  # attention kinds the device runs (export/attention.py)
    quant_compute: str | None = None  # MatMulNBits arithmetic of a quantized artifact: QUANT_COMPUTE keys
    prepack: str = PREPACK_POLICIES[0]
    threads: str = THREAD_POLICIES[0]

    @property
    def providers(self) -> tuple[str, ...]:
        return DEVICE_PROVIDERS[self.device]

    @property
    def accuracy_level(self) -> int:
        """MatMulNBits' accuracy_level for this target (1, float32 arithmetic, when not quantized)."""
        return QUANT_COMPUTE[self.quant_compute or "float32"]

    def to_dict(self) -> dict:
        return {**asdict(self), "attention": list(self.attention), "providers": list(self.providers)}

    @classmethod
    def from_dict(cls, d: dict | None, path) -> "ExecutionTarget":
        """The manifest's `target` (None: an artifact written before it was recorded, built for the CPU)."""
        if d is None:
            return cls()
        expect = {"device": tuple(DEVICE_PROVIDERS), "dtype": (FLOAT,), "kv_dtype": (FLOAT,),
                  "quant_compute": (None, *QUANT_COMPUTE), "prepack": PREPACK_POLICIES, "threads": THREAD_POLICIES}
        for key, allowed in expect.items():
            if d.get(key, cls.__dataclass_fields__[key].default) not in allowed:
                raise ArtifactError(f"{path}: field `target.{key}` is {d.get(key)!r}; this shadow-edge runs "
                                    f"{' or '.join(map(repr, allowed))}; re-export the artifact for this device "
                                    "or upgrade shadow-edge")
        kinds = d.get("attention", list(ATTENTION_KINDS))
        if not isinstance(kinds, list) or not kinds or any(k not in ATTENTION_KINDS for k in kinds):
            raise ArtifactError(f"{path}: field `target.attention` is {kinds!r}; expected a list of "
                                f"{', '.join(ATTENTION_KINDS)}; re-export the artifact")
        return cls(**{k: d[k] for k in expect if k in d}, attention=tuple(kinds))

    def check_providers(self, providers: tuple[str, ...] | None, art_dir) -> tuple[str, ...]:
        """The providers to open sessions with: the target's, or the caller's when they are the target's device."""
        if providers is None:
            return self.providers
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        foreign = [n for n in names if n not in self.providers]
        if foreign:
            raise ArtifactError(f"{art_dir}: providers {', '.join(foreign)} do not run this artifact: it was built "
                                f"for the {self.device} target (manifest `target.providers` "
                                f"{list(self.providers)}); leave providers unset or pass those")
        return tuple(providers)


def export_target(quantize: str, quant_compute: str) -> ExecutionTarget:
    """The target an export builds for: the CPU, with the quantized arithmetic asked for."""
    if quant_compute not in QUANT_COMPUTE:
        raise ValueError(f"quant_compute {quant_compute!r} is not one of {', '.join(QUANT_COMPUTE)}")
    return ExecutionTarget(quant_compute=quant_compute if quantize != "none" else None)
