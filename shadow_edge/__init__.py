"""shadow-edge: deploy ShadowPEFT adapters with ONNX and a torch-free runtime."""

__version__ = "0.1.0"
