from __future__ import annotations

import pytest
import torch

from reranker_actors import device
from reranker_actors.device import pick_device, resolve_dtype
from reranker_actors.errors import ModelError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_uses_bf16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: native_bf16)
    assert resolve_dtype("auto", CPU) == expected


def test_auto_on_cuda_is_fp16() -> None:
    assert resolve_dtype("auto", CUDA) == torch.float16


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_explicit_dtypes_on_cuda(name: str) -> None:
    assert resolve_dtype(name, CUDA) == getattr(torch, name)


def test_fp16_on_cpu_is_refused_with_the_reason() -> None:
    with pytest.raises(ModelError, match=r"float16 is for CUDA only.*100x slower"):
        resolve_dtype("float16", CPU)


def test_bf16_on_a_cpu_without_native_bf16_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ModelError, match="no native bf16"):
        resolve_dtype("bfloat16", CPU)
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16


@pytest.mark.parametrize(("flags", "machine", "expected"), [
    ({"avx2", "avx512f", "avx512_bf16"}, "x86_64", True),  # Zen 4, Cooper Lake
    ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "x86_64", True),  # Sapphire Rapids
    ({"avx2", "avx512f"}, "x86_64", False),  # Skylake-SP: AVX-512 without bf16
    ({"avx2", "fma"}, "x86_64", False),  # Zen 2/3
    ({"asimd", "bf16", "sve"}, "aarch64", True),  # Graviton 3
    ({"asimd", "fp"}, "aarch64", False),  # Graviton 2
])
def test_bf16_is_read_from_the_cpu_flags(flags: set[str], machine: str, expected: bool) -> None:
    assert device.bf16_in_flags(flags, machine) is expected


def test_bf16_detection_on_this_cpu_agrees_with_its_flags() -> None:
    import platform

    flags = device._cpu_flags()
    assert flags, "no CPU flags read from /proc/cpuinfo"
    assert device.cpu_supports_bf16() == device.bf16_in_flags(flags, platform.machine())


def test_a_cpu_actor_stays_on_cpu_even_on_a_gpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(expect_gpu=False) == CPU
    assert pick_device(expect_gpu=True) == CUDA


def test_a_gpu_actor_without_cuda_fails_clearly() -> None:
    if torch.cuda.is_available():
        pytest.skip("this check is for CPU-only machines")
    with pytest.raises(ModelError, match=r"actor.num_gpus > 0 but CUDA is not available"):
        pick_device(expect_gpu=True)
    assert pick_device(expect_gpu=False) == CPU
