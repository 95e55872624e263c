"""Speed suites: ``precision`` (fp32 vs bf16 train step) and ``overhead`` (zoo vs timm ViT step time, and the input
pipeline's headroom over training)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, run_arms
from zoo.data.datasets import build_datasets
from zoo.data.pipeline import measure_input_pipeline
from zoo.data.synthetic import write_image_folder
from zoo.measure.steps import seeded_model, train_step_fn
from zoo.measure.stopwatch import interleaved_times, median, speedup


# ---------------------------------------------------------------------------------------------------- precision
@suite("precision")
def precision_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """fp32 vs bf16 train step: ViT-S/16 at batch 16 (where bf16 pays on this CPU) and the CPU-sized micro model."""
    rounds = 8 if quick else 15  # 3 rounds proved too noisy here (1.63x vs 1.71x from 10 rounds, same machine)
    res: dict = {}
    for label, name, batch in [("small_p16_b16", "zoo_vit_small_p16", 16), ("micro_p4_b128", "zoo_vit_micro_p4", 128)]:
        fns = {p: train_step_fn(seeded_model(name), batch, p) for p in ("fp32", "bf16")}
        t = interleaved_times(fns, rounds=rounds, warmup=1, progress=f"precision {label}")
        res[label] = {
            "fp32_s": median(t["fp32"]),
            "bf16_s": median(t["bf16"]),
            "bf16_speedup": speedup(t, "fp32", "bf16"),
        }
    res["bf16_speedup"] = res["small_p16_b16"]["bf16_speedup"]
    if not quick:
        arms = [Arm("fp32", "fmnist_micro_dense", ["train.precision=fp32"]),
                Arm("bf16", "fmnist_micro_dense", ["train.precision=bf16"])]  # fmt: skip
        records = run_arms(arms, seeds, out / "runs", extra_overrides=overrides, allow_mismatch=allow_mismatch)
        res.update(arms_report(records, "fp32", out))
    return res


# ----------------------------------------------------------------------------------------------------- overhead
@suite("overhead")
def overhead_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Zoo dense ViT vs timm's VisionTransformer of the same shape: train step time ratio (zoo / timm)."""
    rounds = 5 if quick else 15
    configs = [("small_p16_b8", "zoo_vit_small_p16", "vit_small_patch16_224", {}, 8)]
    if not quick:
        configs.append(("micro_p4_b128", "zoo_vit_micro_p4", "vit_small_patch16_224",
                        dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6,
                             num_heads=3), 128))  # fmt: skip
    res: dict = {}
    for label, zoo_name, timm_name, timm_kwargs, batch in configs:
        zm, tm = seeded_model(zoo_name), seeded_model(timm_name, **timm_kwargs)
        tm.model_args = zm.model_args  # the step builder reads the input shape from model_args
        fns = {"zoo": train_step_fn(zm, batch), "timm": train_step_fn(tm, batch)}
        t = interleaved_times(fns, rounds=rounds, warmup=2, progress=f"overhead {label}")
        res[label] = {
            "zoo_s": median(t["zoo"]),
            "timm_s": median(t["timm"]),
            "step_time_ratio": speedup(t, "timm", "zoo") ** -1,
        }
    res["step_time_ratio"] = res["small_p16_b8"]["step_time_ratio"]
    res.update(_input_pipeline_headroom(rounds))
    res.update(_streaming_headroom(rounds, out))
    return res


def _input_pipeline_headroom(rounds: int) -> dict:
    """Is the input pipeline a bottleneck? Its images/s (loader + augmentation + normalisation, full Fashion-MNIST)
    against the training images/s of the default model at the default batch."""

    bundle = build_datasets("fashion-mnist")
    pipe = measure_input_pipeline(bundle, batch_size=128, batches=100)
    t = interleaved_times({"train": train_step_fn(seeded_model("zoo_vit_micro_p7"), 128)}, rounds=rounds, warmup=2)
    train_ips = 128 / median(t["train"])
    return {"input_pipeline_img_per_s": pipe, "default_train_img_per_s": train_ips, "input_headroom": pipe / train_ips}


def _streaming_headroom(rounds: int, out: Path) -> dict:
    """The same question for images decoded on the fly: a generated folder of 256 px JPEGs (decoded, resized to
    224 px, in DataLoader workers), against the training images/s of ViT-Ti/16 at 224 px, batch 32. On a machine of
    few cores the workers share them with training, so a headroom well above 1 is what keeps the step fed. The same
    folder is also read as a streamed Hugging Face dataset (``hf:FOLDER`` with ``streaming=True``: the ``imagefolder``
    builder, read in order and decoded in one worker)."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        folder = write_image_folder(Path(tmp) / "folder", 512, 256)
        bundle = build_datasets(f"imagefolder:{folder}", img_size=224, in_chans=3, cache=False, progress=False)
        pipe = measure_input_pipeline(bundle, batch_size=32, batches=30, pad=0, flip=True)
        stream = build_datasets(f"hf:{folder}", img_size=224, in_chans=3, streaming=True, progress=False)
        stream_pipe = measure_input_pipeline(stream, batch_size=32, batches=30, pad=0, flip=True)
    t = interleaved_times({"train": train_step_fn(seeded_model("zoo_vit_tiny_p16"), 32)}, rounds=rounds, warmup=2)
    train_ips = 32 / median(t["train"])
    return {
        "streaming_pipeline_img_per_s": pipe,
        "streaming_train_img_per_s": train_ips,
        "streaming_headroom": pipe / train_ips,
        "hf_stream_pipeline_img_per_s": stream_pipe,
        "hf_stream_headroom": stream_pipe / train_ips,
    }
