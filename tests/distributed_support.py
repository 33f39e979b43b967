"""Run a test body under ``torch.distributed.run`` with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def one_thread_env() -> dict[str, str]:
    """The environment of a child process: one thread, the package and the test helpers importable."""
    paths = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": paths}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(tmp_path: Path, name: str, body: str) -> dict:
    """Run ``body`` (which imports what it needs and sets ``report``) in 2 processes; rank 0 writes ``report``
    as JSON, which is returned. ``body`` may call ``same_on_every_rank(parameters)``: whether those weights are
    equal, bit for bit, on both ranks."""
    script = tmp_path / f"{name}.py"
    script.write_text(f"""
import json, sys, torch, torch.distributed as dist
from thinkgen.train.distributed import end_processes

def same_on_every_rank(parameters):
    flat = torch.cat([p.detach().flatten() for p in parameters])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(g, gathered[0]) for g in gathered)

{body}
if dist.get_rank() == 0:
    json.dump(report, open({str(tmp_path / f"{name}.json")!r}, "w"))
end_processes()
""")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(script)]
    completed = subprocess.run(command, env=one_thread_env(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads((tmp_path / f"{name}.json").read_text())
