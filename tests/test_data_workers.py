"""DataLoader workers start from a fork server (``zoo.data.workers``), not by forking the training process (which
can deadlock a new worker once that process runs threads); as under spawn, a worker imports the caller's script."""

import multiprocessing
import subprocess
import sys

import torch

from zoo.data.pipeline import make_loader
from zoo.data.workers import worker_context


def _images(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)


def test_loaders_with_workers_start_them_from_a_fork_server():
    assert "forkserver" in multiprocessing.get_all_start_methods(), "Linux has it: the suite runs there"
    loader = make_loader(*_images(), batch_size=4, shuffle=False, seed=0, drop_last=False, num_workers=1)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    assert sorted(int(i) for _, y in loader for i in y) == list(range(16)), "every image once, through the worker"
    in_process = make_loader(*_images(), batch_size=4, shuffle=False, seed=0, drop_last=False, num_workers=0)
    assert in_process.multiprocessing_context is None and worker_context(0) is None


_SCRIPT = """
import torch
from zoo.data.pipeline import make_loader


def main():
    with open({marker!r}, "a") as f:
        f.write("ran\\n")
    x, y = torch.zeros(16, 1, 2, 2, dtype=torch.uint8), torch.arange(16)
    loader = make_loader(x, y, batch_size=4, shuffle=True, seed=0, drop_last=False, num_workers=2)
    assert sorted(int(i) for _, yb in loader for i in yb) == list(range(16))


{call}
"""


def _run_script(tmp_path, call: str) -> tuple[subprocess.CompletedProcess, str]:
    marker = tmp_path / "ran.txt"
    script = tmp_path / "train_script.py"
    script.write_text(_SCRIPT.format(marker=str(marker), call=call))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    return done, marker.read_text() if marker.exists() else ""


def test_a_guarded_training_script_runs_its_main_once(tmp_path):
    """Workers import the caller's script as spawn does (``__mp_main__``): its guarded body runs only in the caller."""
    done, ran = _run_script(tmp_path, 'if __name__ == "__main__":\n    main()')
    assert done.returncode == 0, done.stderr
    assert ran == "ran\n"


def test_an_unguarded_training_script_is_told_the_idiom(tmp_path):
    """Without the guard the workers would re-run the script: Python refuses and names the idiom (as on macOS and
    Windows, and on Linux from Python 3.14); README's data section says so."""
    done, _ = _run_script(tmp_path, "main()")
    assert done.returncode != 0
    assert "if __name__ == '__main__'" in done.stderr
