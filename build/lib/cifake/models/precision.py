"""Where and in what a network computes: every precision rule of training and scoring in one place. Whether a
device has native bf16; what ``trainer.precision=auto`` trains in on a device; what ``scoring.precision`` may be,
its check and the warning where bf16 would be emulated; the autocast a precision runs the forward pass under; true
float32 or TF32 for a block (``float32_matmul_precision``); the memory layout of convolutions. No Lightning, and
torch only inside the functions that compute with it: checking ``scoring.precision`` before an ONNX export scores
loads nothing heavy."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifake.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


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
    import torch

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
    import torch

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


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will run on a CUDA device for ``trainer.accelerator=accelerator``."""
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """Training's ``trainer.precision``. ``auto``: bf16 mixed precision where the CUDA device computes
    bf16 natively (Ampere and newer; not a V100 or T4, which only emulate it), or where the CPU does
    (:func:`cpu_has_fast_bf16`); full float32 elsewhere. Batch-norm and the loss stay in float32 under
    autocast. Other values pass through. The choice and its reason are logged. (Scoring does not
    follow it: ``scoring.precision``.)"""
    if precision != "auto":
        return precision
    import torch

    if uses_cuda(accelerator):
        chosen, why = ("bf16-mixed", "the CUDA device computes bf16 natively") if native_bf16(torch.device("cuda")) \
            else ("32-true", "the CUDA device has no native bf16 (it would only emulate it)")
    elif native_bf16(torch.device("cpu")):
        chosen, why = "bf16-mixed", "the CPU has native bf16 (AVX512_BF16/AMX)"
    else:
        chosen, why = "32-true", "the CPU has no native bf16 (no AVX512_BF16/AMX)"
    log.info("trainer.precision=auto -> %s: %s (set trainer.precision=32-true to force float32)", chosen, why)
    return chosen


# What scoring.precision may be (conf/scoring/default.yaml), in Lightning's names, and what each computes in.
SCORING_PRECISIONS: Mapping[str, str] = {"32-true": "float32", "bf16-mixed": "bf16 autocast"}


def check_scoring_precision(precision: str) -> str:
    """``precision`` if ``scoring.precision`` may be it; a :class:`ConfigError` that says what it may be otherwise."""
    if precision not in SCORING_PRECISIONS:
        raise ConfigError(f"scoring.precision={precision!r}; choose 32-true (float32 on every device: the same "
                          "numbers on every machine and in an ONNX export) or bf16-mixed (bf16 autocast: faster "
                          "where bf16 is native, p(REAL) within about 1e-2 of float32)")
    return precision


def warn_if_emulated(precision: str, device: torch.device) -> None:
    """Warn that ``scoring.precision=bf16-mixed`` is slower than float32 on a ``device`` without native bf16."""
    if precision == "bf16-mixed" and not native_bf16(device):
        log.warning("scoring.precision=bf16-mixed on %s, which has no native bf16: it is emulated there, slower than "
                    "float32 (scoring.precision=32-true)", device)


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast a forward pass (and loss) runs under at ``precision`` on ``device``, as Lightning's mixed
    precision runs it: bf16 for ``bf16-mixed``, float16 for ``16-mixed``; none for ``32-true``, where an autocast
    around the block (Lightning's, while training) is switched off too."""
    import torch

    if precision == "32-true":
        return torch.autocast(device.type, enabled=False)
    if precision in ("bf16-mixed", "16-mixed"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16-mixed" else torch.float16)
    raise ValueError(f"autocast is known for trainer.precision 32-true, bf16-mixed and 16-mixed, not {precision}: "
                     "pass one of those")


@contextmanager
def scoring_arithmetic(precision: str, device: torch.device) -> Iterator[None]:
    """Within the block, a network scores as ``scoring.precision=precision`` says on ``device``: true float32
    matrix products and convolutions (no TF32 on CUDA, whatever PyTorch's default or a training run set, so the
    numbers are those of every other device and of an ONNX export), under bf16 autocast for ``bf16-mixed``."""
    with float32_matmul("highest"), autocast(check_scoring_precision(precision), device):
        yield
