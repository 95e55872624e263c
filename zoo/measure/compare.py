"""Side-by-side efficiency of a few models: parameters, forward FLOPs per image and inference throughput.

FLOPs come from the profiler's counter (``zoo.measure.flops.count_flops``: matmuls, CPU attention kernels included,
routed
blocks counted at the tokens they actually process). Throughput is timed round-robin with
``zoo.bench.runner.interleaved_times`` over ``zoo.measure.steps.infer_step_fn`` at one fixed batch: on a shared
machine, load drift
then hits every model alike, so the ratio is fair even when the absolute numbers are not.
"""

from __future__ import annotations

from torch import nn

from zoo.measure.flops import count_flops
from zoo.measure.steps import infer_step_fn, random_batch
from zoo.measure.stopwatch import interleaved_times, median, paired_speedup


def compare_models(
    models: dict[str, nn.Module],
    batch: int = 256,
    rounds: int = 10,
    warmup: int = 2,
    precision: str = "fp32",
    reference: str | None = None,
) -> dict[str, dict]:
    """Per model: ``params``, ``flops_per_img`` (forward), ``infer_batch_s`` (median) and ``infer_img_per_s``; with a
    ``reference`` (one of the names), also ``infer_speedup`` over it (the median per-round ratio, paired within each
    round) and ``infer_speedup_ci`` (its 95% interval, ``zoo.measure.stopwatch.paired_speedup``).

    The models are switched to eval mode in place (inference is what is measured).
    """
    if batch < 1 or rounds < 1:
        raise ValueError(f"need batch >= 1 and rounds >= 1, got batch={batch}, rounds={rounds}")
    if reference is not None and reference not in models:
        raise ValueError(f"compare_models: reference {reference!r} is not one of {sorted(models)}")
    out: dict[str, dict] = {}
    for name, model in models.items():
        x, _ = random_batch(model.eval(), 1)  # per-image FLOPs: a ViT's count is linear in the batch
        flops, _ = count_flops(model, x)
        out[name] = {"params": sum(p.numel() for p in model.parameters()), "flops_per_img": int(flops)}
    fns = {name: infer_step_fn(model, batch, precision) for name, model in models.items()}
    times = interleaved_times(fns, rounds=rounds, warmup=warmup)
    for name in models:
        t = median(times[name])
        out[name].update(batch=batch, rounds=rounds, precision=precision, infer_batch_s=t, infer_img_per_s=batch / t)
        if reference is not None:
            ratio, lo, hi = paired_speedup(times, reference, name)
            out[name].update(infer_speedup=ratio, infer_speedup_ci=[lo, hi])
    return out
