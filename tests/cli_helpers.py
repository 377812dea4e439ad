"""Running poetgen's CLI from the tests: one CliRunner for every in-process call, real processes and shell
lines where the process itself is the point, the arguments of tiny training runs, and the shape of a
one-line error."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from poetgen.cli import app

runner = CliRunner()

# `poetgen train` arguments for a model and batches small enough that a test trains in seconds.
TINY_TRAIN_ARGS = ["--hidden-size", "16", "--emb-size", "8", "--batch-size", "4", "--bptt", "8"]
# The same, validating never (within a test's few steps) and logging every 5 steps.
TINY_RUN = [*TINY_TRAIN_ARGS, "--eval-every", "100000", "--log-every", "5"]
# A model and batches a little larger, for runs whose checkpoint is then evaluated, exported or sampled.
SMALL_TRAIN_ARGS = ["--hidden-size", "32", "--emb-size", "16", "--batch-size", "8", "--bptt", "16"]

# The real CLI, as a shell command line.
POETGEN = f"{sys.executable} -m poetgen"


def cli(*args: str, input: bytes | str | None = None):
    """Run the CLI in this process: exit_code, stdout and stderr (str)."""
    return runner.invoke(app, list(args), input=input)


def real_poetgen(*args: str, input: bytes | None = None, timeout: float = 120):
    """Run the real CLI in a subprocess (where the process itself is the point)."""
    return subprocess.run([sys.executable, "-m", "poetgen", *args], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def shell(command: str, input: bytes | None = None, timeout: float = 120):
    """A bash command line with pipefail (the real CLI is {POETGEN} in it): redirections, pipes."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def one_line_error(result) -> bool:
    """A subprocess's or a CliRunner result's stderr is one line of ours, no traceback."""
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    return "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("poetgen: error:")
