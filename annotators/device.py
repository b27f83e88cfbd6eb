"""Pick the compute device once: CUDA (half precision) when present, CPU otherwise."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    half: bool

    @property
    def torch_device(self) -> str:
        return "cuda:0" if self.kind == "cuda" else "cpu"

    def onnx_providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.kind == "cuda" and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


def pick_device(requested: str | None = None) -> Device:
    """`requested` is "auto"/None, "cpu" or "cuda"; asking for CUDA without one is an error."""
    requested = (requested or "auto").lower()
    if requested == "cpu":
        return Device("cpu", False)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if requested == "cuda" and not has_cuda:
        raise RuntimeError("device 'cuda' was requested but no CUDA device is visible")
    return Device("cuda", True) if has_cuda else Device("cpu", False)


def onnx_device(requested: str | None = None) -> Device:
    """The device of an expert run by onnxruntime: CUDA only when onnxruntime can use it. "auto" needs no
    torch import when it cannot (importing torch only to learn there is no GPU costs every Ray actor
    ~1.3 s of CPU and ~450 MB of memory)."""
    import onnxruntime as ort

    if (
        requested or "auto"
    ).lower() == "auto" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return Device("cpu", False)
    return pick_device(requested)
