"""Device and dtype resolution, done inside the actor where the real device is known."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from reranker_actors.errors import ModelError

if TYPE_CHECKING:
    import torch


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_in_flags(flags: set[str], machine: str) -> bool:
    """Whether CPU feature flags (as /proc/cpuinfo lists them) include native bf16 matmul."""
    if machine in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul (x86 AVX512-BF16/AMX, or Arm BF16).

    Without it torch emulates bf16 and a matmul runs two orders of magnitude slower than
    fp32 (docs/performance.md).
    """
    import torch

    checks = [getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None)]
    if any(check is not None and check() for check in checks):
        return True
    return bf16_in_flags(_cpu_flags(), platform.machine())


def pick_device(expect_gpu: bool) -> torch.device:
    """cuda for an actor that was given a GPU, else cpu, even on a GPU node: Ray does not
    hide GPUs from actors that asked for none, and they must not use one outside its accounting."""
    import torch

    if not expect_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ModelError(
            "actor.num_gpus > 0 but CUDA is not available inside the actor "
            "(no GPU on the node, or a CPU-only torch build); set actor.num_gpus: 0 to run on CPU"
        )
    return torch.device("cuda")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map a config dtype name to a torch dtype for `device`, refusing the slow traps.

    auto: float16 on CUDA, bfloat16 on a CPU with native bf16, else float32.
    """
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if device.type == "cpu" and name == "float16":
        raise ModelError(
            "reranker.dtype float16 is for CUDA only: fp16 matmul on CPU runs about 100x slower "
            "than bf16/fp32. Use auto, bfloat16 (CPUs with AVX512-BF16/AMX) or float32."
        )
    if device.type == "cpu" and name == "bfloat16" and not cpu_supports_bf16():
        raise ModelError(
            "reranker.dtype bfloat16: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag), "
            "so bf16 matmul runs about 100x slower than float32. Use auto or float32 here."
        )
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
