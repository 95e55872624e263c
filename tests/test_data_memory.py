"""The memory property of on-the-fly decoding: training from an image folder of N or 4N images takes the same peak
resident memory, where decoding the extra 3N images into memory would take 3N x 224 x 224 x 3 bytes (about 220 MB).

A generous bound, not a benchmark: the two peaks must differ by less than 10% of that decode cost. Each run is a real
``zoo train`` process of two steps, started from a wrapper that reports its children's peak RSS (``ru_maxrss`` of
``RUSAGE_CHILDREN``: the largest process, which is the trainer; DataLoader workers are smaller). The measured figures
are printed (``pytest -s``) and quoted in README.md's data section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from zoo.data.synthetic import link_image_folder, write_image_folder

N = 500
SIDE = 224
PEAK_RSS = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(rc)"
)


def peak_rss(folder: Path, tmp: Path, name: str) -> int:
    recipe = {
        "model": {"name": "zoo_vit_micro_p4", "args": {"img_size": SIDE, "in_chans": 3, "patch_size": 32}},
        "data": {"name": f"imagefolder:{folder}", "batch_size": 16, "cache": False, "num_workers": 2},
        "schedule": {"steps": 2},
        "train": {"log_every": 1},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "zoo.cli", "train", str(path), "--out",
           str(tmp / name), "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decoded on the fly" in done.stdout, done.stdout
    assert json.loads((tmp / name / "result.json").read_text())["steps"] == 2
    return int(done.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_folder(tmp_path):
    large = write_image_folder(tmp_path / "large", 4 * N, SIDE)
    small = link_image_folder(tmp_path / "small", large, N)  # the same first N images, as links
    rss_small = peak_rss(small, tmp_path, "small")
    rss_large = peak_rss(large, tmp_path, "large")
    decode_extra = 3 * N * SIDE * SIDE * 3
    print(
        f"\npeak RSS: {N} images {rss_small / 2**20:.1f} MiB, {4 * N} images {rss_large / 2**20:.1f} MiB "
        f"(difference {(rss_large - rss_small) / 2**20:+.1f} MiB; decoding the extra {3 * N} would take "
        f"{decode_extra / 2**20:.1f} MiB)"
    )
    assert abs(rss_large - rss_small) < 0.10 * decode_extra
