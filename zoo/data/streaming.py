"""Streamed Hugging Face datasets (``data.name: hf:NAME`` with ``data.streaming: true``): examples read in order from
the hub or from local data files, never downloaded whole, never converted, never held in memory.

The map-style path (``zoo.data.hf_datasets``) needs the dataset on disk as Arrow files (a hub dataset is downloaded
and converted first); streaming is for data too large for the disk, or a first run before a download. The library
does the reading: ``datasets.load_dataset(..., streaming=True)`` (or ``Dataset.to_iterable_dataset`` for a
``save_to_disk`` folder), its shard-and-buffer ``shuffle``, ``set_epoch``, ``skip`` and ``take``. What it does not do
is written here, and why:

* **Exact sharding with equal shares.** ``datasets.distributed.split_dataset_by_node`` gives each process whole
  shards when their number divides by the world size (unequal counts: one rank runs out of batches first and the
  others hang in their next collective) and otherwise every example at ``i % world == rank``. Here every process
  reads the stream and keeps the examples at ``position % world == rank``, always: each example is seen once per
  epoch across processes, and every process makes the same number of steps. Reading is cheap beside decoding, and
  images are only decoded where they are kept.
* **Bitwise resume.** ``IterableDataset.state_dict`` loses the shuffle buffer on resume (its documentation says so).
  Here the epoch's order is a pure function of (seed, epoch) (``shuffle(seed).set_epoch(epoch)``), and a resumed run
  passes over the batches it already trained on without decoding them.
* **Augmentation draws** are a function of (seed, epoch, position in the stream), as the map-style path's are of
  (seed, epoch, index), so workers, ranks and resume points draw the same.

The order is not the map-style path's: a stream is shuffled by shard order and a buffer of ``data.shuffle_buffer``
examples, not by a permutation of the whole set, so the two paths give the same images and labels but not the same
batches (a test checks each property that does hold). Labels are not in memory, so class filters are not available
and a validation hold-out is the first ``data.val_split`` examples of the stream (not class-balanced).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from zoo.data.augment import image_seed
from zoo.data.decode import MODES, fit_image
from zoo.data.errors import DataError
from zoo.data.hf_datasets import EVAL_SPLITS, pick_columns
from zoo.data.workers import worker_context
from zoo.utils import held_locks

#: examples the shuffle buffer holds by default (``data.shuffle_buffer``): timm's and datasets' usual order of size
DEFAULT_SHUFFLE_BUFFER = 10_000


class StreamSource:
    """A streamed split: examples in the stream's order, decoded when a batch is built.

    Not an :class:`~zoo.data.sources.ImageSource`: there is no random access and no label tensor (asking for
    ``labels`` is an error that says so).

    Args:
        dataset: A ``datasets.IterableDataset`` whose image column is not decoded (``Image(decode=False)``).
        image_column: Its column of images.
        label_column: Its column of class indices.
        num_examples: How many examples it yields.
        in_chans: C of the decoded images.
        img_size: H == W of the decoded images.
        spec: The ``hf:`` name, for messages.
    """

    lazy = True
    streaming = True
    num_classes: int | None = None  # set once the classes are known: labels outside them are an error

    def __init__(self, dataset, image_column: str, label_column: str, num_examples: int, in_chans: int,
                 img_size: int, spec: str) -> None:  # fmt: skip
        self.dataset, self.image_column, self.label_column = dataset, image_column, label_column
        self.num_examples, self.in_chans, self.img_size, self.spec = num_examples, in_chans, img_size, spec

    def __len__(self) -> int:
        return self.num_examples

    @property
    def labels(self) -> torch.Tensor:
        raise DataError(f"hf:{self.spec} is streamed (data.streaming: true): its labels are read with its images, "
                        "not held in memory", field="data.streaming")  # fmt: skip

    @property
    def decoded_bytes(self) -> int:
        return len(self) * self.in_chans * self.img_size * self.img_size

    def head(self, n: int) -> StreamSource:
        """The first ``n`` examples (``IterableDataset.take``)."""
        n = min(n, len(self))
        return self._with(self.dataset.take(n), n)

    def tail(self, n: int) -> StreamSource:
        """Everything after the first ``n`` examples (``IterableDataset.skip``, which keeps the skipped examples out
        whatever the later shuffling)."""
        return self._with(self.dataset.skip(n), len(self) - n)

    def _with(self, dataset, num_examples: int) -> StreamSource:
        out = StreamSource(dataset, self.image_column, self.label_column, num_examples, self.in_chans, self.img_size,
                           self.spec)  # fmt: skip
        out.num_classes = self.num_classes
        return out

    def examples(self, seed: int | None, epoch: int, buffer: int) -> Iterator[tuple[dict, int]]:
        """``(image cell, label)`` in this epoch's order: the stream's own order when ``seed`` is None, else shuffled
        by ``datasets`` (shard order and a ``buffer``-example buffer, reseeded by ``set_epoch``)."""
        ds = self.dataset
        if seed is not None:
            ds = ds.shuffle(seed=seed, buffer_size=buffer)
            ds.set_epoch(epoch)
        for count, row in enumerate(ds):
            if count >= self.num_examples:  # a source that grew since it was counted: keep the epoch's length
                return
            label = row[self.label_column]
            top = self.num_classes if self.num_classes is not None else float("inf")
            if not isinstance(label, int) or not 0 <= label < top:
                raise DataError(f"data.label_column: hf:{self.spec} has label {label!r} in {self.label_column!r}; "
                                f"class indices in [0, {top}) expected", field="data.label_column")  # fmt: skip
            yield row[self.image_column], label

    def decode(self, cell) -> torch.Tensor:
        """One image cell (``{"bytes", "path"}``) as uint8 (C, H, W), by the datasets ``Image`` feature's decoder and
        the function every other path uses (``fit_image``)."""
        import datasets
        from PIL import Image

        try:
            return fit_image(datasets.Image().decode_example(cell), self.img_size, MODES[self.in_chans])
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            where = cell.get("path") if isinstance(cell, dict) else None
            raise DataError(f"hf:{self.spec}: cannot decode an image{f' ({where})' if where else ''}: {e}") from e


class StreamBatches(IterableDataset):
    """This process's batches of a :class:`StreamSource`, for a ``DataLoader(batch_size=None)``.

    Every process reads the whole stream and keeps the examples at ``position % world == rank`` (see the module
    docstring); each yields exactly ``len(self)`` batches, so processes stay in step.

    Args:
        source: The split.
        batch_size: Images per batch (per process).
        shuffle: Shuffle each epoch (by ``seed`` and the epoch), else the stream's order.
        seed: The run's seed (shuffling and the per-image augmentation draws).
        drop_last: Drop this process's last incomplete batch.
        rank: This process's index.
        world: Number of processes.
        augment: A per-image augmentation (``zoo.data.augment.ImageAugment``).
        buffer: The shuffle buffer, in examples.
    """

    def __init__(
        self,
        source: StreamSource,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int = 0,
        world: int = 1,
        augment=None,
        buffer: int = DEFAULT_SHUFFLE_BUFFER,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.source, self.batch_size, self.shuffle, self.seed = source, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world, self.augment, self.buffer = drop_last, rank, world, augment, buffer
        self.epoch, self.skipped = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, n: int) -> None:
        """Start the next iteration after this process's first ``n`` batches of the epoch (a resumed run): they are
        read past, not decoded."""
        self.skipped = n

    def __len__(self) -> int:
        # the smallest rank's share: every rank stops there, so all make the same number of steps
        share = len(self.source) // self.world if self.drop_last else -(-len(self.source) // self.world)
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = self.seed if self.shuffle else None
        limit, start = len(self), self.skipped * self.batch_size
        kept, pending, built = 0, [], self.skipped
        if built >= limit:
            return
        for position, (cell, label) in enumerate(self.source.examples(seed, self.epoch, self.buffer)):
            if position % self.world != self.rank:
                continue
            kept += 1
            if kept <= start:
                continue
            pending.append((position, cell, label))
            if len(pending) == self.batch_size:
                yield self._build(pending)
                pending, built = [], built + 1
                if built >= limit:
                    return
        if pending and not self.drop_last:
            yield self._build(pending)
        elif self.drop_last and built < limit:  # every process must make the same number of steps: stop loudly
            raise DataError(f"hf:{self.source.spec}: the stream ended after {kept} of this process's examples, short "
                            f"of the {len(self.source)} it was counted at", field="data.name")  # fmt: skip

    def _build(self, pending: list) -> tuple[torch.Tensor, torch.Tensor]:
        images = []
        for position, cell, _ in pending:
            img = self.source.decode(cell)
            if self.augment is not None:
                img = self.augment(img, image_seed(self.seed, self.epoch, position))
            images.append(img)
        return torch.stack(images), torch.tensor([label for *_, label in pending], dtype=torch.int64)


def make_stream_loader(
    source: StreamSource,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    *,
    rank: int = 0,
    world: int = 1,
    augment=None,
    buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> DataLoader:
    """A ``DataLoader`` over :class:`StreamBatches`, read and decoded in one worker process.

    One worker, always: ``datasets`` splits a stream's shards among DataLoader workers (with fewer shards than
    workers, the extra workers idle) and reseeds the shuffle buffer per worker, so the order would depend on the
    worker count, and even differ between the training process and one worker. One worker keeps it a function of
    (seed, epoch) and still decodes ahead of the training step. Data that needs more decoding cores is read faster
    as a downloaded dataset (``data.streaming: false``: memory-mapped Arrow, up to 4 workers)."""
    batches = StreamBatches(source, batch_size, shuffle, seed, drop_last, rank, world, augment, buffer)
    return DataLoader(
        batches,
        batch_size=None,
        num_workers=1,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # a worker per epoch: it carries that epoch and the batches to pass over
        prefetch_factor=2,
        worker_init_fn=held_locks.close_in_child,  # a killed run's worker must not keep its folder locked
        multiprocessing_context=worker_context(1),  # zoo.data.workers: why not fork
    )


# ------------------------------------------------------------------------------------------------- opening
def _open_split(spec: str, split: str):
    """The split as a ``datasets.IterableDataset`` and its size when known without reading it (else None)."""
    import datasets

    folder = Path(spec).expanduser()
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        saved = datasets.load_from_disk(str(folder))
        if isinstance(saved, datasets.Dataset) or split not in saved:
            raise ValueError(f"no {split!r} split")
        table = saved[split]  # shards of ~1k rows, so shuffling reorders shards as well as the buffer
        return table.to_iterable_dataset(num_shards=max(1, min(64, len(table) // 1024))), len(table)
    ds = datasets.load_dataset(str(folder) if folder.is_dir() else spec, split=split, streaming=True)
    info = ds.info.splits.get(split) if ds.info.splits else None  # a hub dataset card's dataset_info
    return ds, (info.num_examples if info is not None and info.num_examples else None)


def _stream_splits(spec: str) -> list[str]:
    import datasets

    folder = Path(spec).expanduser()
    if folder.is_dir() and (folder / "dataset_dict.json").is_file():
        return list(datasets.load_from_disk(str(folder)))
    return list(datasets.get_dataset_split_names(str(folder) if folder.is_dir() else spec))


def _count(ds, label_column: str, spec: str, split: str, progress: bool) -> tuple[int, int]:
    """Examples and the largest label of a stream whose size its metadata does not state: one pass over its labels
    (images are not decoded)."""
    n, top = 0, -1
    rows = ds.select_columns([label_column])
    for row in tqdm(rows, desc=f"count hf:{spec} {split}", unit="ex", disable=not progress, leave=False):
        n, top = n + 1, max(top, int(row[label_column]))
    return n, top


def open_hf_stream(
    spec: str,
    img_size: int,
    in_chans: int,
    image_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
) -> dict:
    """The train and eval splits of ``hf:SPEC`` as :class:`StreamSource` s.

    Their sizes come from the dataset's metadata (a hub dataset card's ``dataset_info``) or, when it has none (a
    folder of data files), from one pass over the label column; the classes from a ``ClassLabel`` feature or else
    that pass.

    Returns:
        ``{"train", "test"}`` sources, ``"classes"``, ``"eval_name"`` (the split evaluated on) and ``"counted"``
        (whether a counting pass was needed, for the start-up message).
    """
    import datasets

    if in_chans not in MODES:
        raise DataError(f"data.in_chans must be 1 or 3, got {in_chans!r}", field="data.in_chans")
    try:
        names = _stream_splits(spec)
        if "train" not in names:
            raise DataError(f"data.name: hf:{spec} has no 'train' split (splits: {', '.join(names)})",
                            field="data.name")  # fmt: skip
        eval_name = next((s for s in EVAL_SPLITS if s in names), None)
        if eval_name is None:
            raise DataError(f"data.name: hf:{spec} has no eval split ({' / '.join(EVAL_SPLITS)}; splits: "
                            f"{', '.join(names)})", field="data.name")  # fmt: skip
        streams = {"train": _open_split(spec, "train"), "test": _open_split(spec, eval_name)}
        for split, (ds, n) in streams.items():
            if ds.features is None:  # some file formats state their columns only in their rows: read the first
                streams[split] = ds._resolve_features(), n
        features = streams["train"][0].features
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as e:
        raise DataError(f"data.name: cannot stream hf:{spec} ({e}); a hub id is read over the network, a folder must "
                        "exist", field="data.name", path=spec) from e  # fmt: skip
    image_col, label_col = pick_columns(features, spec, image_column, label_column)
    class_names = getattr(features[label_col], "names", None)
    sources, counted, top = {}, False, -1
    for split, (ds, n) in streams.items():
        if n is None or not class_names:
            n, split_top = _count(ds, label_col, spec, split, progress)
            counted, top = True, max(top, split_top)
        ds = ds.cast_column(image_col, datasets.Image(decode=False))  # decoded where a batch is built, if kept
        sources[split] = StreamSource(ds, image_col, label_col, n, in_chans, img_size, spec)
    classes = list(class_names) if class_names else [str(i) for i in range(top + 1)]
    if not classes:
        raise DataError(f"data.label_column: hf:{spec} has no labels in {label_col!r}", field="data.label_column")
    for src in sources.values():
        src.num_classes = len(classes)
    return {**sources, "classes": classes, "eval_name": eval_name, "counted": counted}
