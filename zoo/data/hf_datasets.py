"""Hugging Face ``datasets`` as a data source (``data.name: hf:NAME``): a hub dataset through the local cache, a folder
written by ``Dataset.save_to_disk``, or a local folder ``load_dataset`` understands (Parquet / Arrow / CSV files,
WebDataset tar shards ``train-00000.tar`` holding ``KEY.jpg`` + ``KEY.cls``, or an image folder through its
``imagefolder`` builder; such folders are converted once into Arrow files in the datasets cache).

The library is used for what it does well and no further: it resolves and caches the dataset, and keeps it as
memory-mapped Arrow files, so a dataset far larger than memory costs only the pages a batch touches. The splits become
:class:`~zoo.data.sources.LazySource` s whose items are row numbers; a batch reads its rows and decodes their image
cells with the same function as image files (``zoo.data.decode.fit_image``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from zoo.data.decode import MODES, fit_image
from zoo.data.errors import DataError
from zoo.data.sources import LazySource

# the eval split, in order of preference: held-out data first, the test split where there is no validation split
EVAL_SPLITS = ("validation", "valid", "val", "test")


def _decode_rows(rows: list, dataset, column: str, img_size: int, mode: str) -> list[torch.Tensor]:
    if not rows:
        return []
    cells = dataset[rows][column]  # one Arrow read for the batch; the Image feature decodes each cell to PIL
    return [fit_image(im, img_size, mode) for im in cells]


def _load(spec: str):
    """The ``DatasetDict`` behind ``hf:SPEC``: a ``save_to_disk`` folder, another local folder, or a hub id."""
    try:
        import datasets
    except ImportError as e:  # a dependency of growzoo; only a broken install lacks it
        raise DataError(f"data.name 'hf:{spec}' needs the Hugging Face datasets library ({e})") from e
    folder = Path(spec).expanduser()
    try:
        if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder) if folder.is_dir() else spec)
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as e:
        where = f"folder {folder}" if folder.is_dir() else f"hub dataset {spec!r} (offline: is it in the cache?)"
        raise DataError(f"data.name: cannot load hf:{spec}, the {where}: {e}", field="data.name", path=spec) from e
    if isinstance(loaded, datasets.Dataset):  # a single saved split: train on it, no eval split
        raise DataError(
            f"data.name: hf:{spec} is one split ({len(loaded)} rows); save a DatasetDict with 'train' and "
            f"'validation' or 'test' splits", field="data.name", path=spec,
        )  # fmt: skip
    return loaded


def pick_columns(features, spec: str, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    import datasets

    def first(kind, names):
        return next((c for c, f in features.items() if isinstance(f, kind)), None) or next(
            (c for c in names if c in features), None
        )

    image = image_column or first(datasets.Image, ("image", "img"))
    # "cls" is the WebDataset convention for a tar shard's class file (000123.cls beside 000123.jpg)
    label = label_column or first(datasets.ClassLabel, ("label", "labels", "cls"))
    for field, column in (("data.image_column", image), ("data.label_column", label)):
        if column is None or column not in features:
            raise DataError(
                f"{field}: hf:{spec} has no {'image' if 'image' in field else 'label'} column "
                f"{'' if column is None else repr(column) + ' '}(columns: {', '.join(features)}); name it with {field}",
                field=field,
            )
    if not isinstance(features[image], datasets.Image):
        raise DataError(f"data.image_column: column {image!r} of hf:{spec} is {features[image]}, not an Image",
                        field="data.image_column")  # fmt: skip
    return image, label


def open_hf_dataset(
    spec: str,
    img_size: int,
    in_chans: int,
    image_column: str | None = None,
    label_column: str | None = None,
) -> dict:
    """The train and eval splits of ``hf:SPEC`` as lazy sources.

    Args:
        spec: Hub id (``ORG/NAME``), a ``save_to_disk`` folder, or a folder of data files.
        img_size: Output side (short side resized, center-cropped).
        in_chans: 1 (grey) or 3 (RGB).
        image_column: The column of images (default: the first ``Image`` feature, else ``image`` / ``img``).
        label_column: The column of labels (default: the first ``ClassLabel`` feature, else ``label`` / ``labels`` /
            ``cls``).

    Returns:
        ``{"train", "test"}`` sources, ``"classes"`` (the ``ClassLabel`` names, else ``"0"``, ``"1"``, ...) and
        ``"eval_name"``, the split evaluated on.
    """
    if in_chans not in MODES:
        raise DataError(f"data.in_chans must be 1 or 3, got {in_chans!r}", field="data.in_chans")
    loaded = _load(spec)
    if "train" not in loaded:
        raise DataError(f"data.name: hf:{spec} has no 'train' split (splits: {', '.join(loaded)})", field="data.name")
    eval_name = next((s for s in EVAL_SPLITS if s in loaded), None)
    if eval_name is None:
        raise DataError(
            f"data.name: hf:{spec} has no eval split ({' / '.join(EVAL_SPLITS)}; splits: {', '.join(loaded)})",
            field="data.name",
        )
    train = loaded["train"]
    image_col, label_col = pick_columns(train.features, spec, image_column, label_column)
    label_feature = train.features[label_col]
    names = getattr(label_feature, "names", None)
    splits = {}
    for split, ds in (("train", train), ("test", loaded[eval_name])):
        if image_col not in ds.features or label_col not in ds.features:
            raise DataError(f"data.name: split {split!r} of hf:{spec} lacks column {image_col!r} or {label_col!r}",
                            field="data.name")  # fmt: skip
        # only the label column is read in full (a numpy column); images stay in the memory-mapped table
        labels = torch.from_numpy(np.asarray(ds.select_columns([label_col]).with_format("numpy")[:][label_col]))
        if labels.dim() != 1 or labels.dtype.is_floating_point or (len(labels) and int(labels.min()) < 0):
            raise DataError(f"data.label_column: {label_col!r} of hf:{spec} ({split}) must hold class indices >= 0",
                            field="data.label_column")  # fmt: skip
        decode = partial(_decode_rows, dataset=ds, column=image_col, img_size=img_size, mode=MODES[in_chans])
        splits[split] = LazySource(torch.arange(len(ds)), labels.long(), decode, in_chans, img_size)
    num_classes = len(names) if names else int(max(int(s.labels.max()) for s in splits.values() if len(s)) + 1)
    for split, src in splits.items():
        if len(src) and int(src.labels.max()) >= num_classes:
            raise DataError(f"data.label_column: hf:{spec} ({split}) has label {int(src.labels.max())} >= "
                            f"{num_classes} classes", field="data.label_column")  # fmt: skip
    classes = list(names) if names else [str(i) for i in range(num_classes)]
    return {**splits, "classes": classes, "eval_name": eval_name}
