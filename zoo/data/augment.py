"""timm's augmentations as recipe options, made exactly reproducible.

timm's RandAugment / AutoAugment / AugMix, ``RandomErasing`` and ``Mixup`` (and torchvision's TrivialAugment) draw
from the process-global random generators (``random``, ``numpy.random``, ``torch``), which differ between DataLoader
workers, processes and a resumed run. Here every call runs inside :func:`seeded_global_rngs` with a seed that is a
pure function of (run seed, epoch, image index) for per-image transforms and of the batch's own generator for batch
transforms, and the global generators are restored afterwards. So the same recipe and seed give the same augmented
batches with any number of workers or processes, and a run resumed mid-epoch replays them exactly.

Where each runs: per-image transforms (:class:`ImageAugment`) in the DataLoader workers, on uint8 images, before the
batch's crop and flip; batch transforms (:class:`BatchAugment`) in the training step, on the normalised batch: random
erasing, then Mixup / CutMix (which turn the labels into soft targets that carry the label smoothing).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import PIL
import torch

TRIVIAL_AUGMENT = "trivialaugment"


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Run the body with ``random``, ``numpy.random`` and torch's CPU generator seeded from ``seed``; restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def image_seed(run_seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch (independent of batch composition, workers and ranks)."""
    # shifted as a Python int: numpy < 2 cannot shift a uint64 by a Python int (it casts to float64)
    return int(np.random.SeedSequence([run_seed, epoch, index]).generate_state(1, np.uint64)[0]) >> 1


def _timm_auto_augment(name: str, img_size: int, mean: Sequence[float]):
    """timm's transform for an ``auto_augment`` string, with the hyper-parameters timm's own train transform uses."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    params = dict(translate_const=int(img_size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean))
    if name.startswith("rand"):
        return rand_augment_transform(name, params)
    if name.startswith("augmix"):
        return augment_and_mix_transform(name, dict(params, translate_pct=0.3))
    return auto_augment_transform(name, params)


class ImageAugment:
    """A per-image policy on uint8 (C, H, W): timm's ``auto_augment`` strings (``rand-m9-mstd0.5``,
    ``augmix-m5-w4-d2``, ``original``, ``v0``, ...) on PIL images, or ``trivialaugment`` (torchvision's
    TrivialAugmentWide) on tensors. Picklable, so DataLoader workers run it.

    Args:
        name: The policy.
        img_size: Image side (sets the translation range as timm does).
        mean: Per-channel mean of x / 255 (the fill colour of geometric ops).
    """

    def __init__(self, name: str, img_size: int, mean: Sequence[float]) -> None:
        self.name = name
        if name == TRIVIAL_AUGMENT:
            from torchvision.transforms import v2

            fill = [min(255, round(255 * m)) for m in mean]
            self.transform = v2.TrivialAugmentWide(fill=fill if len(fill) > 1 else fill[0])
        else:
            if "-inc1" in name and int(PIL.__version__.split(".")[0]) >= 13:
                # timm's increasing-severity posterize reaches 0 bits at full magnitude, which Pillow >= 13 rejects:
                # the run would fail at a random image mid-epoch, so refuse it before training starts
                raise ValueError(
                    f"{name!r}: timm's '-inc1' ops posterize to 0 bits, which Pillow {PIL.__version__} rejects; drop "
                    "'-inc1' (e.g. rand-m9-mstd0.5)"
                )
            try:
                self.transform = _timm_auto_augment(name, img_size, mean)
            except (AssertionError, KeyError, ValueError, IndexError) as e:
                raise ValueError(f"not a timm auto_augment policy: {name!r} ({e!r})") from e

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        with seeded_global_rngs(seed):
            if self.name == TRIVIAL_AUGMENT:
                return self.transform(image)
            from PIL import Image

            arr = image.numpy()
            pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
            out = np.array(self.transform(pil), dtype=np.uint8)  # a writable copy
            out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
            return torch.from_numpy(np.ascontiguousarray(out))


class BatchAugment:
    """timm's ``RandomErasing`` and ``Mixup`` / CutMix on a normalised float batch.

    Args:
        num_classes: Classes (Mixup's soft targets).
        label_smoothing: Folded into the soft targets when mixing (as timm's train script does).
        reprob: Random-erasing probability per image (0: off).
        remode: Erasing fill: ``pixel`` (per-pixel normal noise), ``rand`` (per-channel) or ``const`` (zero).
        mixup: Mixup alpha (0: off).
        cutmix: CutMix alpha (0: off).
        mix_prob: Probability of mixing a batch.
        switch_prob: With both on, the probability of CutMix instead of Mixup.
    """

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        reprob: float = 0.0,
        remode: str = "pixel",
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing

        self.erase = RandomErasing(probability=reprob, mode=remode, device="cpu") if reprob > 0 else None
        self.mix = (
            Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                prob=mix_prob,
                switch_prob=switch_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )  # fmt: skip
            if mixup > 0 or cutmix > 0
            else None
        )

    @property
    def soft_targets(self) -> bool:
        """Whether :meth:`__call__` returns soft (B, num_classes) targets instead of class indices."""
        return self.mix is not None

    @property
    def active(self) -> bool:
        return self.erase is not None or self.mix is not None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Erase and mix ``x`` (B, C, H, W) in place where the transforms do; returns ``(x, targets)``.

        The seed is drawn from ``generator`` after the batch's crops and flips, so turning these options on leaves
        those draws as they were."""
        if not self.active:
            return x, y
        if self.mix is not None and len(x) % 2:
            raise ValueError(f"Mixup / CutMix need an even batch, got {len(x)} (data.batch_size per process)")
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with seeded_global_rngs(seed):
            if self.erase is not None:
                x = self.erase(x)
            if self.mix is not None:
                x, y = self.mix(x, y)
        return x, y
