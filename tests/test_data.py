"""Tests for zoo.data (Fashion-MNIST, image folders, bundles, the batched pipeline). They need the real Fashion-MNIST
files and fail (never skip) when they are missing."""

import gzip

import pytest
import torch
import torch.nn.functional as F

import zoo.data.fashion_mnist as zd
from zoo.data.datasets import DataError, build_datasets
from zoo.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist, read_idx
from zoo.data.imagefolder import load_imagefolder
from zoo.data.pipeline import (
    IndexDataset,
    collate_batch,
    make_loader,
    measure_input_pipeline,
    normalize,
    random_crop_flip,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The ops here are tiny; on a loaded CPU intra-op threading makes them 10-50x slower (OpenMP barrier waits).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fm():
    # No skip on purpose: missing data must fail loudly, with DataError's instructions in the report.
    return load_fashion_mnist()


# ---------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------------------------------


def test_fashion_mnist_shapes_dtypes_labels(fm):
    assert fm["train_x"].shape == (60000, 1, 28, 28) and fm["train_x"].dtype == torch.uint8
    assert fm["test_x"].shape == (10000, 1, 28, 28) and fm["test_x"].dtype == torch.uint8
    assert fm["train_y"].shape == (60000,) and fm["train_y"].dtype == torch.int64
    assert fm["test_y"].shape == (10000,) and fm["test_y"].dtype == torch.int64
    for y in (fm["train_y"], fm["test_y"]):
        assert int(y.min()) == 0 and int(y.max()) == 9
    assert fm["train_y"].bincount().tolist() == [6000] * 10
    assert fm["test_y"].bincount().tolist() == [1000] * 10
    assert int(fm["train_x"].max()) == 255  # raw bytes, not normalized


def test_fashion_mnist_cached(fm):
    again = load_fashion_mnist()
    assert again["train_x"] is fm["train_x"]  # decoded once per process


def test_fashion_mnist_stats_match_constants(fm):
    x = fm["train_x"]
    n = x.numel()
    mean = x.sum(dtype=torch.int64).item() / n / 255  # exact integer sums: fast and no float accumulation error
    var = x.int().square().sum(dtype=torch.int64).item() / n / 255**2 - mean**2
    assert mean == pytest.approx(zd.FASHION_MNIST_MEAN[0], abs=1e-3)
    assert var**0.5 == pytest.approx(zd.FASHION_MNIST_STD[0], abs=1e-3)


def test_find_missing_explicit_path_names_path_and_apt(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_DATA", raising=False)
    calls = []

    def no_network(dest):
        calls.append(dest)
        raise DataError("network disabled in tests", path=dest)

    monkeypatch.setattr(zd, "_download", no_network)
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as info:
        find_fashion_mnist(missing)
    msg = str(info.value)
    assert str(missing) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "ZOO_DATA" in msg
    assert info.value.path == str(missing) and info.value.field == "data.path"
    assert isinstance(info.value, ValueError)
    assert calls == [missing]  # the download was attempted (and stubbed), i.e. no fallback to the system copy


def test_find_via_zoo_data_env(tmp_path, monkeypatch):
    src = find_fashion_mnist()
    sub = tmp_path / "fashion-mnist"
    sub.mkdir()
    for name in zd.FASHION_MNIST_FILES.values():
        (sub / name).symlink_to(src / name)
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    assert find_fashion_mnist() == sub
    assert find_fashion_mnist(sub) == sub


def test_read_idx_gz_and_raw_agree(tmp_path, fm):
    gz = find_fashion_mnist() / zd.FASHION_MNIST_FILES["test_y"]
    raw = tmp_path / "labels.idx"
    raw.write_bytes(gzip.decompress(gz.read_bytes()))
    a, b = read_idx(gz), read_idx(raw)
    assert a.dtype == torch.uint8 and a.shape == (10000,)
    assert torch.equal(a, b) and torch.equal(a.long(), fm["test_y"])


def test_read_idx_rejects_truncated_gz(tmp_path):
    data = (find_fashion_mnist() / zd.FASHION_MNIST_FILES["train_y"]).read_bytes()
    bad = tmp_path / "truncated-labels-idx1-ubyte.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        read_idx(bad)
    assert str(bad) in str(info.value) and info.value.path == str(bad)


def test_read_idx_rejects_truncated_raw_and_bad_header(tmp_path):
    payload = gzip.decompress((find_fashion_mnist() / zd.FASHION_MNIST_FILES["test_y"]).read_bytes())
    cases = {
        "short.idx": payload[:-1],  # one data byte missing
        "long.idx": payload + b"\0",  # trailing garbage
        "magic.idx": b"\1" + payload[1:],
        "dtype.idx": payload[:2] + b"\x0d" + payload[3:],  # float32 code
        "header.idx": payload[:6],
    }
    for name, content in cases.items():
        f = tmp_path / name
        f.write_bytes(content)
        with pytest.raises(DataError, match=name):
            read_idx(f)


# ---------------------------------------------------------------------------------------------------------------------
# build_datasets: classes, subsets, names
# ---------------------------------------------------------------------------------------------------------------------


def test_bundle_defaults(fm):
    b = build_datasets("fashion-mnist")
    assert (b.num_classes, b.in_chans, b.img_size) == (10, 1, 28)
    assert b.mean == (0.2860,) and b.std == (0.3530,)
    assert b.class_names[0] == "T-shirt/top" and len(b.class_names) == 10
    assert b.train_x.shape == (60000, 1, 28, 28) and b.test_y.shape == (10000,)


def test_classes_filter_and_remap(fm):
    b = build_datasets("fashion-mnist", classes=[7, 2, 9])
    assert b.num_classes == 3
    assert b.class_names == ["Sneaker", "Pullover", "Ankle boot"]
    assert b.train_y.bincount().tolist() == [6000, 6000, 6000]
    assert b.test_y.bincount().tolist() == [1000, 1000, 1000]
    for new, old in enumerate([7, 2, 9]):  # remapped in the given order, sample order preserved
        assert torch.equal(b.train_x[b.train_y == new], fm["train_x"][fm["train_y"] == old])
        assert torch.equal(b.test_x[b.test_y == new], fm["test_x"][fm["test_y"] == old])
    assert b.mean == zd.FASHION_MNIST_MEAN  # same normalization as the unfiltered data (transfer experiments)


def test_transfer_split_is_disjoint(fm):
    pre = build_datasets("fashion-mnist", classes=[0, 1, 2, 3, 4], train_subset=500)
    fine = build_datasets("fashion-mnist", classes=[5, 6, 7, 8, 9], train_subset=500)
    assert pre.num_classes == fine.num_classes == 5
    assert pre.train_y.bincount().tolist() == fine.train_y.bincount().tolist() == [100] * 5


def test_subset_deterministic_stratified(fm):
    a = build_datasets("fashion-mnist", train_subset=100, test_subset=30)
    b = build_datasets("fashion-mnist", train_subset=100, test_subset=30)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_y.bincount(minlength=10).tolist() == [10] * 10
    assert a.test_y.bincount(minlength=10).tolist() == [3] * 10
    tiny = build_datasets("fashion-mnist", train_subset=10)
    assert sorted(tiny.train_y.tolist()) == list(range(10))  # every class even at n == num_classes
    # a subset is a real sample (image matches its label) and smaller subsets are contained in larger ones
    big = build_datasets("fashion-mnist", train_subset=1000)
    rows = {bytes(x.flatten().tolist()): int(y) for x, y in zip(big.train_x, big.train_y)}
    for x, y in zip(a.train_x, a.train_y):
        assert rows[bytes(x.flatten().tolist())] == int(y)
    assert len(build_datasets("fashion-mnist", test_subset=10**6).test_y) == 10000  # oversized = all


def test_subset_is_not_the_first_rows(fm):
    a = build_datasets("fashion-mnist", train_subset=100)
    assert not torch.equal(a.train_x, fm["train_x"][:100])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "mnist"}, "data.name"),
        ({"name": "cifar10:foo"}, "data.name"),
        ({"name": "fashion-mnist", "classes": [0, 10]}, "data.classes"),
        ({"name": "fashion-mnist", "classes": [1, 1]}, "data.classes"),
        ({"name": "fashion-mnist", "classes": []}, "data.classes"),
        ({"name": "fashion-mnist", "train_subset": 0}, "data.train_subset"),
        ({"name": "fashion-mnist", "test_subset": -5}, "data.test_subset"),
        ({"name": "fashion-mnist", "img_size": 32}, "data.img_size"),
        ({"name": "fashion-mnist", "in_chans": 3}, "data.in_chans"),
        ({"name": "imagefolder:/nonexistent", "in_chans": 1}, "data.img_size"),
    ],
)
def test_build_datasets_bad_config(fm, kwargs, field):
    with pytest.raises(DataError) as info:
        build_datasets(**kwargs)
    assert info.value.field == field and field in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------------


def _batch(c=2, b=64, h=12, w=10):
    # values >= 1 so zero borders are distinguishable; non-square to catch H/W mix-ups
    return torch.randint(1, 256, (b, c, h, w), generator=torch.Generator().manual_seed(123), dtype=torch.uint8)


def test_aug_identity():
    x = _batch()
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)


def test_aug_flip_only():
    x = _batch()
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=0, flip=True)
    same = [torch.equal(o, xi) for o, xi in zip(out, x)]
    mirrored = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    assert all(s != m for s, m in zip(same, mirrored))  # exactly one of the two per sample
    assert 10 < sum(mirrored) < 54  # p = 0.5 over 64 samples


def _crops(xi, pad):
    """All zero-padded crops of one image, keyed by offset (reference implementation)."""
    c, h, w = xi.shape
    p = F.pad(xi, (pad, pad, pad, pad))
    return {(dy, dx): p[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}


@pytest.mark.parametrize("flip", [False, True])
def test_aug_crop_is_shifted_copy(flip):
    x, pad = _batch(), 3
    out = random_crop_flip(x, torch.Generator().manual_seed(1), pad=pad, flip=flip)
    assert out.shape == x.shape and out.dtype == torch.uint8
    offsets, flips = set(), 0
    for o, xi in zip(out, x):
        hits = [(k, False) for k, v in _crops(xi, pad).items() if torch.equal(o, v)]
        if flip:
            hits += [(k, True) for k, v in _crops(xi.flip(-1), pad).items() if torch.equal(o, v)]
        assert len(hits) == 1, "output must be exactly one shifted (possibly mirrored) copy with zero borders"
        offsets.add(hits[0][0])
        flips += hits[0][1]
    assert len(offsets) > 15  # offsets vary per sample (49 possible)
    assert (0 < flips < 64) if flip else flips == 0


def test_aug_uses_only_the_generator():
    x = _batch(c=1)
    torch.manual_seed(0)
    a = random_crop_flip(x, torch.Generator().manual_seed(7), pad=2, flip=True)
    torch.manual_seed(1)  # global RNG must not matter
    b = random_crop_flip(x, torch.Generator().manual_seed(7), pad=2, flip=True)
    c = random_crop_flip(x, torch.Generator().manual_seed(8), pad=2, flip=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_normalize_values():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(2, 3, 1, 1)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for ch in range(3):
        expected = (torch.tensor([0.0, 0.2, 1.0]) - mean[ch]) / std[ch]
        torch.testing.assert_close(out[0, ch, 0], expected)
    torch.testing.assert_close(normalize(x[:, :1], (0.5,), (0.5,))[0, 0, 0], torch.tensor([-1.0, -0.6, 1.0]))
    assert x.dtype == torch.uint8 and int(x.max()) == 255  # input untouched


# ---------------------------------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------------------------------

COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255)}


def _make_imagefolder(root, val_name="val"):
    from PIL import Image

    for split, n in (("train", 3), (val_name, 1)):
        for cls, color in COLORS.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 7 * i, 30), color).save(d / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("ignored: not an image")
    return root


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_imagefolder_load(tmp_path, val_name):
    root = _make_imagefolder(tmp_path / "ds", val_name)
    d = load_imagefolder(root, img_size=16, in_chans=3)
    assert d["classes"] == ["cat", "dog"]
    assert d["train_x"].shape == (6, 3, 16, 16) and d["train_x"].dtype == torch.uint8
    assert d["test_x"].shape == (2, 3, 16, 16)
    assert d["train_y"].tolist() == [0, 0, 0, 1, 1, 1] and d["train_y"].dtype == torch.int64
    assert d["test_y"].tolist() == [0, 1]
    assert d["train_x"][0, :, 5, 5].tolist() == [255, 0, 0]  # cat is red
    assert d["train_x"][3, :, 5, 5].tolist() == [0, 0, 255]  # dog is blue
    gray = load_imagefolder(root, img_size=8, in_chans=1)
    assert gray["train_x"].shape == (6, 1, 8, 8)
    assert gray["train_x"][0].unique().tolist() == [76]  # PIL "L" of pure red


def test_imagefolder_bundle(tmp_path):
    root = _make_imagefolder(tmp_path / "ds")
    b = build_datasets(f"imagefolder:{root}", img_size=16, in_chans=3, classes=[1])
    assert (b.num_classes, b.in_chans, b.img_size, b.class_names) == (1, 3, 16, ["dog"])
    assert b.train_y.tolist() == [0, 0, 0]
    # stats come from the full train split (3 red + 3 blue images)
    assert b.mean == pytest.approx((0.5, 0.0, 0.5), abs=1e-6) and b.std == pytest.approx((0.5, 0.0, 0.5), abs=1e-3)
    b2 = build_datasets("imagefolder:", path=root, img_size=16, in_chans=1)
    assert b2.num_classes == 2 and len(b2.mean) == 1


def test_imagefolder_corrupt_image(tmp_path):
    root = _make_imagefolder(tmp_path / "ds")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes())
    with pytest.raises(DataError) as info:
        load_imagefolder(root, img_size=16, in_chans=3)
    assert str(bad) in str(info.value) and info.value.path == str(bad)


def test_imagefolder_missing_or_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no train") as info:
        load_imagefolder(empty, img_size=16, in_chans=1)
    assert str(empty) in info.value.path
    (empty / "train" / "cat").mkdir(parents=True)  # class folder without images
    with pytest.raises(DataError, match="holds no images") as info:
        load_imagefolder(empty, img_size=16, in_chans=1)
    assert info.value.path == str(empty / "train" / "cat")
    missing = tmp_path / "missing"
    with pytest.raises(DataError) as info:
        load_imagefolder(missing, img_size=16, in_chans=1)
    assert info.value.path == str(missing)
    with pytest.raises(DataError) as info:
        load_imagefolder(empty, img_size=16, in_chans=2)
    assert info.value.field == "data.in_chans"


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


class _CountingDataset(IndexDataset):
    def __init__(self, x, y):
        super().__init__(x, y)
        self.single = self.batched = 0

    def __getitem__(self, i):
        self.single += 1
        return super().__getitem__(i)

    def __getitems__(self, indices):
        self.batched += 1
        return super().__getitems__(indices)


def test_dataloader_uses_getitems(fm):
    x = fm["train_x"][:1000]
    ds = _CountingDataset(x, torch.arange(1000))
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, collate_fn=collate_batch)
    seen = []
    for xb, ib in loader:
        assert xb.shape[1:] == (1, 28, 28) and xb.dtype == torch.uint8
        assert torch.equal(xb, x[ib])
        seen.append(ib)
    assert ds.batched == len(loader) == 8 and ds.single == 0
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(1000))
    # collate_batch also handles plain per-sample lists
    xb, yb = collate_batch([ds[0], ds[1]])
    assert torch.equal(xb, x[:2]) and yb.tolist() == [0, 1]


def test_make_loader_batches(fm):
    x, y = fm["test_x"][:1000], fm["test_y"][:1000]
    plain = list(make_loader(x, y, 256, shuffle=False, seed=0, drop_last=False))
    assert [len(b[0]) for b in plain] == [256, 256, 256, 232]
    assert torch.equal(torch.cat([b[0] for b in plain]), x) and torch.equal(torch.cat([b[1] for b in plain]), y)
    assert len(list(make_loader(x, y, 256, shuffle=False, seed=0, drop_last=True))) == 3
    idx = torch.arange(1000)
    a = [b[1] for b in make_loader(x, idx, 100, shuffle=True, seed=3, drop_last=False)]
    b = [b[1] for b in make_loader(x, idx, 100, shuffle=True, seed=3, drop_last=False)]
    c = [b[1] for b in make_loader(x, idx, 100, shuffle=True, seed=4, drop_last=False)]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not torch.equal(a[0], c[0])
    assert torch.equal(torch.cat(a).sort().values, idx)


def test_make_loader_through_accelerate(fm):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    x = fm["test_x"][:500]
    idx = torch.arange(500)
    try:
        acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=0))
        loader = acc.prepare(make_loader(x, idx, 64, shuffle=True, seed=0, drop_last=True))
        got = []
        for xb, ib in loader:
            assert torch.equal(xb, x[ib])
            got.append(ib)
        assert len(got) == 7 and len(torch.cat(got).unique()) == 448
    finally:
        AcceleratorState._reset_state(True)  # don't leak the singleton into other test modules


def test_measure_input_pipeline(fm):
    b = build_datasets("fashion-mnist", train_subset=200)
    assert measure_input_pipeline(b, batch_size=64, batches=5) > 0  # 3 batches/epoch: exercises the loader restart
    tiny = build_datasets("fashion-mnist", train_subset=50)
    assert measure_input_pipeline(tiny, batch_size=64, batches=2) > 0  # fewer images than one batch


def test_download_checks_the_official_content_sha256(tmp_path, monkeypatch, fmnist):
    """The system copy's decompressed content is the official one; a download whose content differs (tampered, or
    a different file of the right shape) is refused and leaves no file behind."""
    system = zd.FASHION_MNIST_SYSTEM_DIR
    for name, digest in zd.FASHION_MNIST_SHA256.items():
        assert zd.content_sha256(system / name) == digest, name

    def serve(url, timeout):  # the official bytes, except one flipped label in the training labels
        name = url.rsplit("/", 1)[-1]
        data = (system / name).read_bytes()
        if name == "train-labels-idx1-ubyte.gz":
            raw = bytearray(gzip.decompress(data))
            raw[-1] = (raw[-1] + 1) % 10
            data = gzip.compress(bytes(raw))

        class Response:
            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def read(self):
                return data

        return Response()

    monkeypatch.setattr(zd.urllib.request, "urlopen", serve)
    with pytest.raises(DataError, match="sha256"):
        zd._download(tmp_path)
    assert not (tmp_path / "train-labels-idx1-ubyte.gz").exists()
    assert not list(tmp_path.glob("*.part"))
