"""What the numbers were measured on, read from the machine at run time."""

from __future__ import annotations

import torch

from ..host import SIMD_FLAGS, cpu_info
from .settings import BenchmarkSettings

__all__ = ["SIMD_FLAGS", "cpu_info", "describe_machine"]


def describe_machine(settings: BenchmarkSettings) -> str:
    """One line naming the device, its relevant features and the software versions.

    CUDA: GPU name and memory, torch, CUDA and cuDNN versions, TF32 state. CPU: the model
    name and SIMD flags from ``/proc/cpuinfo`` (:func:`repvgg_seg.host.cpu_info`), torch's
    CPU capability and thread count.
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
