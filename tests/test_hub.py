"""Publishing: ``zoo export`` of a real (tiny) run, the generated model card, loading the folder back through timm's
``local-dir:`` and ``hf-hub:`` (a pre-populated hub cache, offline) and ``zoo.hub`` (no pickle, hashes verified), and
``zoo push`` refusing offline / without a token before any network call."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct

import huggingface_hub
import pytest
import timm
import torch
from conftest import tiny_recipe
from huggingface_hub import ModelCard, constants
from safetensors.torch import save_model

from zoo.cli.main import main
from zoo.hub import SOURCE_KEYS, ModelLoadError, load_folder, load_model, read_metadata
from zoo.publish.card import fenced, wilson_interval
from zoo.publish.export import export_run
from zoo.publish.run_history import structure_events
from zoo.training.recipe import recipe_from_dict
from zoo.training.trainer import train

REPO = "acme/zoo-tiny"
COMMIT = hashlib.sha1(b"zoo-tiny").hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fmnist):
    """8 steps with EMA, one depth-growth stage, staged unfreezing and an annealed routing capacity (seconds)."""
    recipe = tiny_recipe(
        train={"ema": 0.9},
        growth={"stages": [{"at": 0.5, "depth": 3}]},
        unfreeze={"mode": "stages", "stages": [{"at": 0.0, "trainable_from": 1}, {"at": 0.75, "trainable_from": 0}]},
        routing={"capacity": 0.5, "start": 1.0, "anneal": 0.5},
    )
    out = tmp_path_factory.mktemp("run") / "tiny"
    train(recipe_from_dict(recipe), out, progress=False)
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_run(run_dir, tmp_path_factory.mktemp("export") / "zoo-tiny", repo_id=REPO, profile_iters=2)


@pytest.fixture(scope="module")
def reference(run_dir):
    """The run's own model (the evaluated weights) and its outputs on a fixed batch."""
    model = load_folder(run_dir / "model").eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, model(x)


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection attempt is recorded and refused."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, no_network):
    """An empty hub cache in tmp_path with HF_HUB_OFFLINE=1 (env and the constants huggingface_hub read at import)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def populate_cache(cache, repo_id: str, folder, commit: str = COMMIT) -> None:
    """The hub cache layout: blobs by content hash, snapshots/<commit>/ symlinks to them, refs/main -> commit."""
    org, name = repo_id.split("/")
    root = cache / f"models--{org}--{name}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "blobs").mkdir()
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "README.md"):
        data = (folder / f).read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snap / f)


# ------------------------------------------------------------------------------------------------------------ card
def test_card_metadata_from_result_json(exported, run_dir):
    card = ModelCard.load(exported / "README.md")
    result = json.loads((run_dir / "result.json").read_text())
    assert card.data.library_name == "timm"
    assert card.data.pipeline_tag == "image-classification"
    assert {"timm", "token-routing", "progressive-growth", "gradual-unfreezing"} <= set(card.data.tags)
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    assert card.data.metrics == ["accuracy"]
    assert card.data.model_name == "zoo-tiny"
    (ev,) = card.data.eval_results
    assert (ev.metric_type, ev.dataset_type) == ("accuracy", "zalando-datasets/fashion_mnist")
    assert ev.metric_value == round(result["final_acc"], 4)
    assert card.data.base_model is None  # trained from scratch
    assert "model-index" in card.content.split("---")[1]


def test_card_body_sections(exported, run_dir):
    text = (exported / "README.md").read_text()
    body = text.split("\n---\n", 1)[1]
    usage = body.split("## Usage", 1)[1].split("##", 1)[0]
    assert usage.index("import zoo") < usage.index(f'timm.create_model("hf-hub:{REPO}", pretrained=True)')
    prof = json.loads((exported / "profile.json").read_text())
    eff = body.split("## Efficiency", 1)[1].split("\n## ", 1)[0]
    for needle in (
        "Parameters",
        "GFLOPs",
        "Training throughput",
        "Inference throughput",
        "Peak training memory",
        "MFU",
        "Hardware",
        f"{prof['train_img_per_s']:.0f} img/s",
        f"{prof['mfu'] * 100:.1f}%",
    ):
        assert needle in eff, needle
    assert f"{json.loads((run_dir / 'result.json').read_text())['final_acc'] * 100:.2f}%" in body
    recipe = (run_dir / "recipe.yaml").read_text()
    assert f"```yaml\n{recipe}```" in body  # verbatim
    assert (exported / "recipe.yaml").read_bytes() == (run_dir / "recipe.yaml").read_bytes()
    history = body.split("## Growth, unfreezing and routing history", 1)[1].split("\n## ", 1)[0]
    assert "growth stage 1: depth -> 3" in history and "| 4 | 50% |" in history
    assert "unfreeze: everything trains" in history and "capacity annealed from 1 to 0.5" in history
    assert "## Training cost" in body and "| Wall-clock |" in body and "| Device |" in body
    assert "## Limitations" in body
    assert "![Training curve](training_curve.png)" in body
    assert (exported / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_helpers():
    lo, hi = wilson_interval(0.9, 1000)
    assert 0.879 < lo < 0.881 and 0.916 < hi < 0.918  # 0.9 +- ~1.9 points
    assert fenced("a: 1  # ```x```\n").startswith("````\n")
    recipe = {"growth": {"stages": [{"at": 0.5, "depth": 4}]}, "unfreeze": None, "model": {"args": {"depth": 2}}}
    records = [
        {"step": 5, "event": {"trainable_from": 0, "growth_stage": 1}, "loss_before": 2.0},
        {"step": 6, "loss_after_event": 1.5},
        {"step": 6, "loss": 1.5},
    ]
    (ev,) = structure_events(records, recipe, {"model_args": {"depth": 4}}, 10)
    assert ev["changes"] == ["growth stage 1: depth -> 4 (zero)"] and ev["loss_after"] == 1.5 and ev["fraction"] == 0.5


# ------------------------------------------------------------------------------------------------------ the folder
def test_exported_files_hold_the_evaluated_weights(exported, run_dir):
    meta = read_metadata(exported / "model.safetensors")
    run_meta = read_metadata(run_dir / "model" / "model.safetensors")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert meta["weights_sha256"] == run_meta["weights_sha256"]  # EMA weights, exactly those evaluated
    assert meta["recipe_hash"] == manifest["recipe_hash"]
    assert meta["architecture"] == "zoo_vit_micro_p4" and meta["zoo_version"]
    cfg = json.loads((exported / "config.json").read_text())
    run_cfg = json.loads((run_dir / "model" / "config.json").read_text())
    assert cfg["model_args"] == run_cfg["model_args"]
    assert cfg["model_args"]["depth"] == 3 and cfg["model_args"]["routing"]["capacity"] == 0.5  # after growth
    assert cfg["num_classes"] == 10 and len(cfg["label_names"]) == 10
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["input_size"] == [1, 28, 28] and pcfg["mean"] == [0.286] and pcfg["std"] == [0.353]
    assert not set(SOURCE_KEYS) & set(pcfg)


def test_local_dir_loads_equal_to_run(exported, reference):
    x, ref = reference
    model = timm.create_model(f"local-dir:{exported}", pretrained=True)
    assert torch.equal(outputs(model, x), ref)
    assert torch.equal(outputs(load_model(f"local-dir:{exported}"), x), ref)
    assert model.pretrained_cfg["label_names"][0] == "T-shirt/top"


def test_hub_cache_offline_loads(exported, reference, offline_cache, no_network):
    populate_cache(offline_cache, REPO, exported)
    x, ref = reference
    model = timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert model.pretrained_cfg["source"] == "hf-hub"
    assert torch.equal(outputs(model, x), ref)
    assert torch.equal(outputs(load_model(f"hf-hub:{REPO}"), x), ref)
    assert torch.equal(outputs(load_model(f"hf-hub:{REPO}@{COMMIT}"), x), ref)
    assert no_network == []


def test_missing_repo_offline_is_a_clear_error(offline_cache, no_network):
    msg = r"hf-hub:acme/absent: <repo>: not in the local hub cache .*HF_HUB_OFFLINE is set"
    with pytest.raises(ModelLoadError, match=msg):
        load_model("hf-hub:acme/absent")
    assert no_network == []


def test_weights_hash_mismatch_detected(exported, tmp_path, capsys):
    folder = tmp_path / "corrupt"
    shutil.copytree(exported, folder)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]  # header length, then the JSON header, then the data section
    mid = (start + len(data)) // 2
    data[mid : mid + 4] = bytes(b ^ 0x5A for b in data[mid : mid + 4])
    path.write_bytes(bytes(data))
    timm.create_model(f"local-dir:{folder}", pretrained=True)  # timm loads it silently: the header is intact
    with pytest.raises(ModelLoadError, match=r"corrupt/model\.safetensors: weights_sha256: .*do not match"):
        load_folder(folder)
    assert main(["push", str(folder), REPO]) == 2
    assert "weights_sha256" in capsys.readouterr().err


def test_loader_reads_no_file_name_from_config(exported, reference, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    other = timm.create_model("zoo_vit_micro_p4", **json.loads((folder / "config.json").read_text())["model_args"])
    save_model(other, str(tmp_path / "evil.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights_file"] = "../evil.safetensors"
    cfg["pretrained_cfg"].update(file="../evil.safetensors", hf_hub_filename="../../evil.bin", url="file:///etc/passwd")
    (folder / "config.json").write_text(json.dumps(cfg))
    x, ref = reference
    model = load_folder(folder)
    assert torch.equal(outputs(model, x), ref)  # the folder's own model.safetensors, not the one the config names
    assert model.pretrained_cfg["file"] == str(folder) and "hf_hub_filename" not in model.pretrained_cfg
    assert "url" not in model.pretrained_cfg


# ------------------------------------------------------------------------------------------------------------- CLI
def test_push_refuses_offline_or_without_token(exported, monkeypatch, capsys, no_network):
    called = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: called.append(a))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda *a, **k: called.append(a))
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(exported), REPO]) == 2
    assert "HF_HUB_OFFLINE: offline mode is set" in capsys.readouterr().err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    # nor one saved by `hf auth login` (huggingface_hub reads the path into its constants at import)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(exported.parent / "no-saved-token"))
    assert main(["push", str(exported), REPO]) == 2
    assert "HF_TOKEN: no token: set HF_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    assert main(["push", str(exported), "acme/other-name"]) == 2  # the card's usage names another repo
    assert "re-run `zoo export" in capsys.readouterr().err
    assert called == [] and no_network == []


def test_push_uploads_through_hfapi(exported, monkeypatch, capsys, no_network):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            calls["create_repo"] = (repo_id, kw)

        def upload_folder(self, **kw):
            calls["upload_folder"] = kw
            return type("Info", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    assert main(["push", str(exported), REPO, "--private"]) == 0
    assert calls["token"] == "hf_dummy" and calls["create_repo"] == (
        REPO,
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    up = calls["upload_folder"]
    assert up["repo_id"] == REPO and up["folder_path"] == str(exported) and "README.md" in up["allow_patterns"]
    assert f"https://huggingface.co/{REPO}/commit/1" in capsys.readouterr().out
    assert no_network == []


def test_export_cli_and_input_errors(exported, run_dir, tmp_path, capsys):
    prof = str(exported / "profile.json")
    out = tmp_path / "cli"
    assert main(["export", str(run_dir), str(out), "--repo-id", REPO, "--profile-json", prof]) == 0
    assert (out / "README.md").read_text() == (exported / "README.md").read_text()
    assert main(["export", str(run_dir), str(out), "--profile-json", prof]) == 2  # not empty
    assert "OUT_DIR: exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(run_dir), str(out), "--force", "--profile-json", prof]) == 0
    assert 'hf-hub:ORG/NAME"' in (out / "README.md").read_text()
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "nope: <folder>: run folder not found" in capsys.readouterr().err
    assert main(["export", str(run_dir), str(run_dir / "model")]) == 2  # never overwrite the run's own folder

    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited, ignore=shutil.ignore_patterns("checkpoints"))
    (edited / "recipe.yaml").write_text((edited / "recipe.yaml").read_text().replace("lr: 0.003", "lr: 0.004"))
    assert main(["export", str(edited), str(tmp_path / "o")]) == 2
    assert "manifest.json: recipe_hash:" in capsys.readouterr().err

    bad = json.loads((exported / "profile.json").read_text())
    bad["params"] += 1
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["export", str(run_dir), str(tmp_path / "o"), "--profile-json", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: params:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_reexport_is_byte_identical(exported, run_dir, tmp_path):
    """Exporting the same run again (its profile passed back in, as `zoo export --profile-json` does) writes the same
    bytes in every file: re-publishing an unchanged model uploads nothing new. The weights file used to differ on
    every export (the safetensors writer orders its metadata by hash), so this fails without `make_reproducible`."""
    again = export_run(run_dir, tmp_path / "again", repo_id=REPO, profile_file=exported / "profile.json")
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert len(read_metadata(exported / "model.safetensors")) >= 3  # enough keys for a hash order to show
    for name in names:
        assert (again / name).read_bytes() == (exported / name).read_bytes(), name


def test_push_uses_the_saved_login_token_and_passes_revision_and_pr(
    exported, monkeypatch, capsys, no_network, tmp_path
):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            pass

        def create_branch(self, repo_id, **kw):
            calls["branch"] = kw["branch"]

        def upload_folder(self, **kw):
            calls["upload_folder"] = kw
            return type("Info", (), {"commit_url": "c", "pr_url": "https://huggingface.co/x/discussions/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    saved = tmp_path / "token"
    saved.write_text("hf_saved_by_login")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(saved))
    assert main(["push", str(exported), REPO, "--revision", "v2"]) == 0
    assert calls["token"] == "hf_saved_by_login" and calls["branch"] == "v2"
    assert calls["upload_folder"]["revision"] == "v2" and calls["upload_folder"]["create_pr"] is False
    assert main(["push", str(exported), REPO, "--create-pr"]) == 0
    assert calls["upload_folder"]["create_pr"] is True
    assert "discussions/1" in capsys.readouterr().out


def test_export_evaluates_per_class_and_agrees_with_the_run(exported, run_dir):
    per_class = json.loads((exported / "per_class.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    assert abs(per_class["acc"] - result["final_acc"]) < 1e-6  # the same weights on the same images
    assert sum(map(sum, per_class["matrix"])) == result["test_images"]
    assert [r["class"] for r in per_class["per_class"]][0] == "T-shirt/top"
    card = (exported / "README.md").read_text()
    assert "Evaluated again at export" in card and "| T-shirt/top |" in card
    assert (exported / "confusion_matrix.png").is_file() and "confusion_matrix.png" in card


def test_fine_tunes_of_published_models_name_their_hub_repo_as_base_model():
    from zoo.models.pretrained import published_repo_of

    repo = "growzoo/zoo_vit_micro_p7.fmnist"
    for source in ("zoo_vit_micro_p7.fmnist", "local-dir:model_cards/zoo_vit_micro_p7.fmnist",
                   "local-dir:/any/checkout/model_cards/zoo_vit_micro_p7.fmnist", f"hf-hub:{repo}@main"):  # fmt: skip
        assert published_repo_of(source) == repo, source
    for source in (None, "local-dir:runs/mine/model", "weights.safetensors", "zoo_vit_micro_p7"):
        assert published_repo_of(source) is None, source


def test_card_names_the_split_and_dataset_it_measured(tmp_path):
    from zoo.publish.card import _split_name, dataset_info

    val = {"name": "fashion-mnist", "val_split": 5000}
    info = dataset_info({"data": val}, {"test_images": 5000})
    assert (info["n_train"], info["n_test"]) == (55000, 5000)
    assert _split_name({"eval_split": "val"}, 5000) == "validation (5000 images)"
    assert _split_name({"eval_split": "test"}, None) == "test"
    hub = dataset_info({"data": {"name": "hf:org/flowers"}})
    assert hub["hub_id"] == "org/flowers" and "org/flowers" in hub["pretty"]
    local = dataset_info({"data": {"name": f"hf:{tmp_path}"}})
    assert local["hub_id"] is None and tmp_path.name in local["pretty"]
