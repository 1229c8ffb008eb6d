"""The one error hierarchy of shadow-edge (standard library only).

Every message names the file, field or tensor, what was found, what was expected and
how to fix it. The CLI prints `str(error)` on one line and exits non-zero.
"""


class ShadowEdgeError(Exception):
    """Base class of every user-facing error."""


class CheckpointError(ShadowEdgeError):
    """A base model, adapter or shadow-model directory is missing, unreadable or malformed."""


class UnsupportedModelError(ShadowEdgeError):
    """The architecture or checkpoint format is not supported."""


class MismatchError(ShadowEdgeError):
    """An adapter and a base (or shadow) model do not belong together."""


class ExportError(ShadowEdgeError):
    """Export failed, including validation of the exported graphs against PyTorch."""


class ArtifactError(ShadowEdgeError):
    """An exported artifact is missing files, tampered with, or of an unknown format."""


class InputError(ShadowEdgeError):
    """Bad runtime input: prompt, token ids, generation or benchmark options."""


class ContextLengthError(InputError):
    """A prompt (plus the tokens to generate) does not fit the model's context (the server answers 413)."""

    def __init__(self, message: str, tokens: int, limit: int):
        super().__init__(message)
        self.tokens, self.limit = tokens, limit
