"""The machine (poetgen.device): CPU threads from the request, the environment or the free cores, and
the bf16 LSTM probe that must not disturb the random stream."""

from __future__ import annotations

import torch


def test_the_bf16_probe_leaves_the_random_stream_alone():
    from poetgen.device import cpu_lstm_has_bf16

    cpu_lstm_has_bf16.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cpu_lstm_has_bf16()
    assert torch.equal(torch.rand(3), expected)  # a resumed bf16 run draws the masks it would have drawn


def test_threads_follow_the_request_the_environment_then_the_free_cores(monkeypatch):
    import subprocess
    import sys

    from poetgen import device

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert device.cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert device.cpu_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(device, "busy_cores", lambda: 1)
    assert device.cpu_threads() == 3
    monkeypatch.setattr(device, "busy_cores", lambda: 9)
    assert device.cpu_threads() == 1  # never fewer than one
    monkeypatch.undo()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert device.busy_cores() >= 1  # a process that keeps a core busy is counted
    finally:
        spinner.kill()
        spinner.wait()
