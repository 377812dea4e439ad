"""Where the model runs and in which precision: device choice, CPU threads, bf16 autocast."""

from __future__ import annotations

import functools
import os
import time

import torch

from .config import PRECISIONS
from .errors import UsageError


def pick_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu unless `name` forces one."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is available: use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps but MPS is not available: use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return device


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether to run matrix work in bf16 (weights and optimizer stay fp32). `auto` means CUDA only;
    `bf16` on a CPU pays off where it has bf16 instructions (AVX512-BF16, AMX)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return False
    if precision == "bf16":
        if device.type not in ("cuda", "cpu"):
            raise UsageError(f"--precision bf16 is not supported on {device.type}: use --precision fp32")
        return True
    return device.type == "cuda"


@functools.cache
def cpu_lstm_has_bf16() -> bool:
    """Whether this CPU's LSTM kernel runs in bf16 (oneDNN's needs AVX-512 BF16 or AMX; on others it
    fails to start, and under bf16 autocast the LSTM then computes in fp32, the rest in bf16)."""
    with torch.random.fork_rng(devices=[]):  # building the probe draws: leave the run's random stream as it was
        lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(2, 1, 4))
    except RuntimeError:
        return False
    return True


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast when use_bf16 says so, a no-op otherwise."""
    return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu", dtype=torch.bfloat16,
                          enabled=use_bf16(device, precision))


def cpu_threads(requested: int | None = None) -> int:
    """The torch threads a command computes with: `requested` (--threads), else OMP_NUM_THREADS when set,
    else the cores that are free now: all cores minus those other processes keep busy (busy_cores), at
    least one. An oversubscribed torch thread pool waits on busy cores at every step: a sampler next to
    a training run on 2 cores is several times faster on one thread."""
    if requested:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, cores - busy_cores()))


def busy_cores(reads: int = 3, pause_s: float = 0.005) -> int:
    """The threads other processes are running now: on Linux the runnable count of /proc/loadavg (less
    this one), the least of a few reads 5 ms apart, since a training keeps its threads runnable and a
    passing process does not stay; elsewhere the 1-minute load average. (The load average alone lags
    by a minute: right after a job ends it would still count it.)"""
    try:
        counts = []
        for i in range(reads):
            with open("/proc/loadavg", encoding="ascii") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
            if i + 1 < reads:
                time.sleep(pause_s)
        return max(0, min(counts))
    except (OSError, ValueError, IndexError):
        return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0


def set_cpu_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to cpu_threads(requested); returns the number."""
    n = cpu_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
