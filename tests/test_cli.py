"""The ``thinkgen`` command as a whole: what it sets up for every subcommand."""

from __future__ import annotations

import subprocess
import sys


def test_every_command_flushes_subnormal_floats_to_zero(tmp_path) -> None:
    """Subnormal float32 values slow x86 CPU arithmetic several times over (late training steps); the command
    flushes them, in a fresh process as a user runs it."""
    script = (
        "import torch\n"
        "from thinkgen.cli import main\n"
        "before = (torch.tensor([1e-39]) * 1.0).item()\n"
        f"assert main(['world', 'sample', '--scenario', 'composition', '-n', '1', '--out', {str(tmp_path)!r}]) == 0\n"
        "print(before, (torch.tensor([1e-39]) * 1.0).item())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[-2]) > 0.0 and float(out[-1]) == 0.0
