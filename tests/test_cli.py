from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from poetgen import __version__
from poetgen.cli import app

runner = CliRunner()


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from poetgen.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(app, ['sample', '--help']); assert r.exit_code == 0; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_version_and_module_entry_point():
    assert runner.invoke(app, ["--version"]).stdout.strip() == f"poetgen {__version__}"
    out = subprocess.run([sys.executable, "-m", "poetgen", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"poetgen {__version__}"


def test_every_command_has_short_help():
    for args in (["-h"], ["corpus", "-h"], ["corpus", "prepare", "-h"], ["train", "-h"], ["eval", "-h"],
                 ["sample", "-h"], ["check", "-h"], ["info", "-h"], ["export", "-h"], ["corpus", "stats", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.stdout, args


def test_unknown_option_is_a_usage_error_without_traceback():
    result = runner.invoke(app, ["sample", "--no-such-option"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr + result.stdout
