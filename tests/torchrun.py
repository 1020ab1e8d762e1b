"""Run a script on two gloo processes with `torch.distributed.run`, for the multi-process tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on the loopback now (`--master_port=0` hangs on some machines)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_now() -> None:
    """End a worker at once, skipping the interpreter's teardown: there, freeing a DDP model's reducer
    destroys its gloo process group, which joins gloo's worker thread while holding the GIL that thread
    waits for (a deadlock seen under load: the worker never exits)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_each_layout(run, kind, layouts: list[str], out_dir: Path, init_process_group) -> None:
    """A worker's main: ``init_process_group()``, then ``run(kind, layout, out_dir)`` for every layout, each
    followed by a barrier; the process group is destroyed (an unclean gloo exit aborts some runs) and the
    worker ends at once (`exit_now`)."""
    import torch.distributed as dist

    init_process_group()
    try:
        for layout in layouts:
            run(kind, layout, out_dir)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_now()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants: torchrun starts each worker in a session of its own."""
    import psutil

    try:
        parent = psutil.Process(pid)
        processes = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def run_two_processes(script: Path, *args: str, timeout: float = 180) -> None:
    """`torchrun --nproc_per_node 2 script *args` with the repo importable; fails with the workers' stderr."""
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(script),
        *map(str, args),
    ]
    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(launcher.pid)  # the launcher and its two workers (which hold the pipes open)
        launcher.communicate()
        raise
    assert launcher.returncode == 0, stderr[-4000:]
