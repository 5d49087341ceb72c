"""Where and in what a network computes, the rules training and scoring share: whether a device has native bf16,
true float32 or TF32 for a block, and the memory layout of convolutions. Torch only, no Lightning: predicting from a
safetensors export loads nothing more."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from cifake.core.errors import ConfigError


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX): there oneDNN's bf16
    convolutions run about twice as fast as float32 ones; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: we cannot tell, so we do not guess
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU from Ampere on (torch counts emulated
    bf16 too by default, and a V100 or T4 emulates it, slower than float32), or a CPU with
    AVX512_BF16 or AMX (:func:`cpu_has_fast_bf16`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_fast_bf16()


FLOAT32_MATMUL_PRECISIONS = ("highest", "high")  # of torch.set_float32_matmul_precision's: true float32, TF32


@contextmanager
def float32_matmul(precision: str) -> Iterator[None]:
    """Within the block, float32 matrix products at ``precision`` (``torch.set_float32_matmul_precision``)
    and cuDNN's float32 convolutions alike: ``highest``, true float32; ``high``, TF32 on CUDA
    (Ampere and newer GPUs). Both switches are process-wide: they are restored on the way out, so
    what one block sets never reaches another (training's TF32 never reaches scoring)."""
    if precision not in FLOAT32_MATMUL_PRECISIONS:
        raise ConfigError(f"float32_matmul_precision={precision!r}; choose one of {list(FLOAT32_MATMUL_PRECISIONS)} "
                          "(highest: true float32; high: TF32 matrix products and convolutions on CUDA)")
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = conv


def channels_last_on(choice: bool | str, device: torch.device) -> bool:
    """``model.channels_last`` on ``device``: ``auto`` is NHWC on CUDA (tensor cores want it) and on
    a CPU, where oneDNN's kernels measured faster in NHWC in both float32 and bf16."""
    return device.type in ("cuda", "cpu") if choice == "auto" else bool(choice)
