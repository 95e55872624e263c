"""The published zoo: every registered pretrained tag has a card folder laid out as its hub repo, every card loads
(timm's registry, local-dir:, and zoo.hub), and its accuracy is what the weights really give on the test set."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml

from zoo.data.datasets import build_datasets
from zoo.models.pretrained import MODEL_CARDS, PUBLISHED, card_folder
from zoo.training.evaluation import accuracy

# the zoo's own published tags (the ViT-Ti/S/B sizes also name timm's ImageNet weights, which have no card here)
TAGS = sorted(
    n for n in timm.list_models("zoo_*", pretrained=True)
    if "." in n and (timm.models.get_pretrained_cfg(n).hf_hub_id or "").startswith("growzoo/")
)  # fmt: skip
CARDS = sorted(p.name for p in MODEL_CARDS.iterdir() if p.is_dir()) if MODEL_CARDS.is_dir() else []


def test_registered_tags_and_cards_match():
    assert TAGS == sorted(PUBLISHED) == CARDS


@pytest.mark.parametrize("name", CARDS)
def test_card_folder_is_a_hub_repo(name):
    folder = card_folder(name)
    for f in ("README.md", "config.json", "model.safetensors", "recipe.yaml", "result.json"):
        assert (folder / f).is_file(), f
    assert (folder / "model.safetensors").stat().st_size < 8 * 2**20, "a few MB at most"
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "timm" and meta["model-index"][0]["name"] == name
    result = json.loads((folder / "result.json").read_text())
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(result["final_acc"])


@pytest.mark.parametrize("name", CARDS)
def test_card_accuracy_reproduces_on_the_test_set(name, fmnist):
    folder = card_folder(name)
    result = json.loads((folder / "result.json").read_text())
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    model = timm.create_model(name, pretrained=True).eval()
    via_dir = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    for a, b in zip(model.state_dict().values(), via_dir.state_dict().values()):
        assert torch.equal(a, b)
    bundle = build_datasets(recipe["data"]["name"], classes=recipe["data"].get("classes"))
    res = accuracy(model, bundle.test_x, bundle.test_y, bundle.mean, bundle.std)
    assert abs(res["acc"] - result["final_acc"]) * 100 <= 0.1, (res["acc"], result["final_acc"])


@pytest.mark.parametrize("name", CARDS)
def test_zoo_hub_loads_a_tag_with_its_published_weights(name):
    from zoo.hub import load_model

    published = timm.create_model(name, pretrained=True).state_dict()
    loaded = load_model(name).state_dict()
    assert all(torch.equal(published[k], v) for k, v in loaded.items())
    fresh = load_model(name.split(".")[0]).state_dict()  # the bare architecture name: untrained, as in timm
    assert not all(torch.equal(published[k], fresh[k]) for k in published)


def test_zoo_hub_refuses_an_unpublished_tag():
    from zoo.hub import ModelLoadError, load_model

    with pytest.raises(ModelLoadError, match="no published weights"):
        load_model("zoo_vit_micro_p7.fmnst")


@pytest.mark.parametrize("name", CARDS)
def test_card_usage_snippet_runs_as_written(name, fmnist):
    """The card's Python usage, executed as a user would paste it (the bundled folder standing in for the hub repo,
    a Fashion-MNIST test image as `image`): it must load, predict the image's class, and load again via zoo.hub."""
    from PIL import Image

    folder = card_folder(name)
    card = (folder / "README.md").read_text()
    code = card.split("## Usage", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert f"hf-hub:growzoo/{name}" in code
    code = code.replace(f"hf-hub:growzoo/{name}", f"local-dir:{folder}")
    bundle = build_datasets("fashion-mnist", test_subset=10)
    image = Image.fromarray(bundle.test_x[0, 0].numpy())  # uint8 H x W: a grey ("L") image
    scope = {"image": image}
    exec(compile(code, f"{name}/README.md", "exec"), scope)  # noqa: S102  (our own generated card)
    assert scope["pred"] in range(10) and scope["model"].num_classes == 10


def test_vit_sizes_name_timms_imagenet_weights_and_load_them():
    """zoo_vit_{tiny,small,base}_p16 with pretrained=True fetch timm's vit_*_patch16_224 weights (with network); here
    the same load runs from a local file of timm's format, and the outputs equal timm's model."""
    for name, timm_tag in (("zoo_vit_tiny_p16", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
                           ("zoo_vit_small_p16", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
                           ("zoo_vit_base_p16", "vit_base_patch16_224.augreg2_in21k_ft_in1k")):  # fmt: skip
        assert timm.models.get_pretrained_cfg(name).hf_hub_id == f"timm/{timm_tag}"
    import tempfile

    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224").eval()
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/model.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
        zoo_model = timm.create_model("zoo_vit_tiny_p16", pretrained=True, pretrained_cfg_overlay={"file": path})
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(zoo_model.eval()(x), ref(x), atol=1e-5, rtol=1e-5)
