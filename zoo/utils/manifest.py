"""Run manifests: everything about the software and machine that could change a benchmark number.

A manifest is written next to every run. The bench harness compares the manifests of the runs it aggregates with
:func:`compare_manifests` and refuses to put side by side runs that differ in anything but the arm (and per-run
fields such as the seed), because a "speedup" measured across two torch versions or thread settings is not a speedup
of the method.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_IGNORE",
    "PACKAGES",
    "collect_manifest",
    "compare_manifests",
    "git_state",
    "manifest_diff",
    "recipe_hash",
    "write_json_atomic",
]

# distributions whose versions are recorded; "growzoo" is this package (import name ``zoo``)
PACKAGES: tuple[str, ...] = (
    "growzoo",
    "torch",
    "timm",
    "accelerate",
    "safetensors",
    "huggingface_hub",
    "numpy",
    "scipy",
)
# import names for the fallback when a distribution has no metadata (e.g. a source checkout on sys.path)
_IMPORT_NAMES = {"growzoo": "zoo"}
# thread-count environment variables change CPU throughput as much as torch.set_num_threads does
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# fields that legitimately differ between the runs of one comparison
DEFAULT_IGNORE: tuple[str, ...] = ("seed", "created_at", "arm", "recipe_hash")


def _json_default(obj: Any) -> Any:
    """JSON fallback for the few non-JSON types that show up in recipes and results.

    Anything else raises ``TypeError``: falling back to ``str()`` would hash object reprs containing memory
    addresses, giving a recipe hash that changes from run to run without anyone noticing.
    """
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    # numpy / torch scalars and arrays, without importing either
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def recipe_hash(recipe: Mapping[str, Any] | None) -> str | None:
    """Short stable hash of a recipe: sha256 of its canonical JSON (sorted keys, compact), first 16 hex digits.

    Args:
        recipe: A JSON-like mapping, or ``None``.

    Returns:
        16 lowercase hex characters, or ``None`` when ``recipe`` is ``None``.
    """
    if recipe is None:
        return None
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def package_version(dist: str) -> str | None:
    """Installed version of a distribution; falls back to the module's ``__version__``, else ``None``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    try:
        module = __import__(_IMPORT_NAMES.get(dist, dist))
    except Exception:  # an optional package failing to import must not break manifest collection
        return None
    version = getattr(module, "__version__", None)
    return str(version) if version is not None else None


def _cpu_model() -> str | None:
    """CPU model name from /proc/cpuinfo (Linux x86), else ``platform.processor()``, else ``None``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_affinity() -> int | None:
    """Number of CPUs this process may run on (cgroups/taskset can make it smaller than ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _torch_info() -> dict[str, Any]:
    """Torch thread settings and GPU names; tolerant of torch being absent."""
    try:
        import torch
    except ImportError:
        return {"num_threads": None, "num_interop_threads": None, "gpus": []}
    gpus: list[str] = []
    try:
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver should not stop a CPU run from recording its manifest
        gpus = []
    return {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "gpus": gpus,
    }


def cpu_capability() -> str | None:
    """torch's CPU kernel level (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...): fp32 matmuls run several times faster
    with AVX-512 and bf16 is native there (on AVX2 it is ~40x slower than fp32), so timings from machines of different
    capability are not comparable."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """The machine a measurement runs on: CPU model, capability, cores, torch threads, GPUs and platform."""
    t = _torch_info()
    return {
        "cpu_model": _cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": _cpu_affinity(),
        "gpus": t["gpus"],
        "torch_threads": {"num_threads": t["num_threads"], "num_interop_threads": t["num_interop_threads"]},
        "platform": platform.platform(),
    }


# the folder holding the `zoo` package: a git checkout in development, site-packages after a wheel install
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _git(args: list[str], cwd: str | os.PathLike) -> str | None:
    """Run a read-only git command; ``None`` if git is missing, not a repo, or anything else goes wrong."""
    try:
        proc = subprocess.run(
            # a repository's own config can name programs that `git status` runs (core.fsmonitor, hooks): turn
            # them off, and take no optional locks (a read-only query must not write the index)
            ["git", "--no-optional-locks", "-c", "core.fsmonitor=false", "-c", f"core.hooksPath={os.devnull}", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(cwd: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """Commit sha and dirty flag of the git repository containing ``cwd`` (default: the checkout the zoo package
    runs from, which is the code a run's numbers depend on; not the working directory, which may be anyone's
    repository, with a config that names programs to run).

    "Dirty" means tracked files differ from HEAD; untracked files are ignored (run outputs, scratch files) since
    they rarely affect what was run and would make every working tree look dirty.

    Returns:
        ``(sha, dirty)``, or ``(None, None)`` outside a repository or without git.
    """
    cwd = PACKAGE_ROOT if cwd is None else cwd
    sha = _git(["rev-parse", "HEAD"], cwd)
    if sha is None:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return sha.strip(), (None if status is None else bool(status.strip()))


def collect_manifest(
    recipe: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect the environment of the current run.

    Args:
        recipe: The training recipe; only its :func:`recipe_hash` is stored.
        seed: The run's seed.
        extra: Additional top-level fields (e.g. ``{"arm": "grow"}``). They may not shadow collected fields, so a
            caller cannot accidentally overwrite e.g. the recorded torch version.

    Returns:
        A JSON-serializable dict with keys ``seed``, ``recipe_hash``, ``created_at`` (UTC ISO 8601), ``versions``
        (distribution -> version or ``None``), ``python``, ``platform``, ``machine``, ``torch_threads``
        (``num_threads``, ``num_interop_threads``), ``thread_env`` (OMP/MKL/OpenBLAS env vars or ``None``),
        ``cpu_model``, ``cpu_capability``, ``cpu_count``, ``cpu_affinity``, ``gpus`` (list of names), ``git_sha``,
        ``git_dirty``, plus the ``extra`` fields.

    Raises:
        ValueError: If an ``extra`` key collides with a collected field.
    """
    torch_info = _torch_info()
    sha, dirty = git_state()
    manifest: dict[str, Any] = {
        "seed": seed,
        "recipe_hash": recipe_hash(recipe),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {dist: package_version(dist) for dist in PACKAGES},
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": {
            "num_threads": torch_info["num_threads"],
            "num_interop_threads": torch_info["num_interop_threads"],
        },
        "thread_env": {name: os.environ.get(name) for name in _THREAD_ENV},
        "cpu_model": _cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": _cpu_affinity(),
        "gpus": torch_info["gpus"],
        "git_sha": sha,
        "git_dirty": dirty,
    }
    for key, value in (extra or {}).items():
        if key in manifest:
            raise ValueError(f"extra field {key!r} would overwrite a collected manifest field")
        manifest[key] = value
    return manifest


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b.c": leaf}``; lists and other values are leaves."""
    if isinstance(obj, Mapping) and obj:
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: obj}


def _equal(x: Any, y: Any) -> bool:
    """Equality that treats NaN as equal to NaN (a field that is NaN in both manifests did not change)."""
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)


def _ignored(path: str, ignore: Iterable[str]) -> bool:
    """A path is ignored if it, or one of its ancestors, is listed (``"versions"`` ignores ``"versions.torch"``)."""
    return any(path == ig or path.startswith(ig + ".") for ig in ignore)


def manifest_diff(
    a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORE
) -> dict[str, tuple[Any, Any]]:
    """Differing fields of two manifests with both values, for error messages.

    Returns:
        ``{dotted_path: (value_in_a, value_in_b)}``; a field missing on one side has the value ``None`` there.
    """
    ignore = tuple(ignore)
    fa, fb = _flatten(a), _flatten(b)
    diff: dict[str, tuple[Any, Any]] = {}
    for path in sorted(set(fa) | set(fb)):
        if _ignored(path, ignore):
            continue
        missing = object()
        va, vb = fa.get(path, missing), fb.get(path, missing)
        if va is missing or vb is missing or not _equal(va, vb):
            diff[path] = (None if va is missing else va, None if vb is missing else vb)
    return diff


def compare_manifests(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORE) -> list[str]:
    """Dotted paths of the fields in which two manifests differ.

    Args:
        a: First manifest.
        b: Second manifest.
        ignore: Paths (or ancestor paths) that may differ, by default the seed, timestamp, arm and recipe hash.

    Returns:
        Sorted list of dotted paths such as ``["torch_threads.num_threads", "versions.torch"]``; empty when the
        runs are comparable. Keys present on only one side count as differences.
    """
    return list(manifest_diff(a, b, ignore))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON so that ``path`` holds either its old content or the complete new content, never a
    partial file.

    The object is serialized first (a serialization error touches nothing), written to a temporary file in the
    same directory (``os.replace`` is only atomic within one filesystem), fsynced, then renamed over ``path``; the
    directory is fsynced too so the rename survives a power cut. On any error the temporary file is removed. The
    parent directory is created if needed. NaN/inf are written as ``NaN``/``Infinity`` (Python's json reads them).

    Args:
        path: Target file.
        obj: JSON-serializable object (``Path``, sets and numpy values are converted).
        indent: ``json.dumps`` indent.

    Returns:
        The target path.
    """
    target = Path(path)
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; keep the mode of the file being replaced, else a normal 0644
        os.chmod(tmp_name, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory entry (not supported on every OS/filesystem)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


if __name__ == "__main__":  # pragma: no cover - handy for eyeballing a manifest
    json.dump(collect_manifest(), sys.stdout, indent=2)
    sys.stdout.write("\n")
