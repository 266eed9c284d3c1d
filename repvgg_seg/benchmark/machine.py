"""What the numbers were measured on, read from the machine at run time."""

from __future__ import annotations

import contextlib

import torch

from .settings import BenchmarkSettings

SIMD_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def describe_machine(settings: BenchmarkSettings) -> str:
    """One line naming the device, its relevant features and the software versions.

    CUDA: GPU name and memory, torch, CUDA and cuDNN versions, TF32 state. CPU: the model
    name and SIMD flags from ``/proc/cpuinfo``, torch's CPU capability and thread count.
    """
    if settings.is_cuda:
        device = torch.device(settings.device)
        props = torch.cuda.get_device_properties(device)
        tf32 = {None: "torch default", True: "on", False: "off"}[settings.tf32]
        return (
            f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, TF32 {tf32}"
        )
    model, flags = cpu_info()
    return (
        f"CPU {model}, flags {' '.join(flags) or 'none of interest'}, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """The CPU model name and which of :data:`SIMD_FLAGS` it reports (from ``path``)."""
    model, flags = "unknown", set()
    with contextlib.suppress(OSError), open(path) as file:
        for line in file:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, [flag for flag in SIMD_FLAGS if flag in flags]
