"""Models: stems, heads, width, pretrained local weights (torchvision and timm names), freezing, balance, norm."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import resnetlab
import resnetlab.training.run
from conftest import write_class_folders
from resnetlab.cli import main
from resnetlab.config import TrainConfig
from resnetlab.data.loaders import Batches, Order
from resnetlab.models import ModelError, ModelSpec, build_model, load_pretrained, set_backbone_trainable
from resnetlab.training.setup import class_balance

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "lr": 0.05}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_family_builds_with_our_head_and_both_stems(arch: str):
    # quarter width: the stems and the head are what is tested (tests/test_family.py runs every member)
    for stem, size, expected_side in (("small", 32, 4), ("standard", 64, 2)):
        model = build_model(ModelSpec(arch, 7, stem=stem, width=0.25)).eval()
        with torch.no_grad():
            features = model.forward_features(torch.zeros(1, 3, size, size))
            logits = model(torch.zeros(2, 3, size, size))
        assert logits.shape == (2, 7)
        assert features.shape[-1] == expected_side, f"{arch} {stem}: {tuple(features.shape)}"
    small = build_model(ModelSpec(arch, 7, stem="small", width=0.25))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)


def test_mlp_head_and_width():
    model = build_model(ModelSpec("resnet18", 5, head="mlp", hidden=64, dropout=0.3, width=0.5))
    layers = list(model.fc)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert layers[0].in_features == 256 and layers[0].out_features == 64 and layers[2].p == 0.3
    assert layers[3].out_features == 5 and model.layer1[0].conv1.out_channels == 32


def _torchvision_weights(path: Path, classes: int = 1000) -> dict:
    donor = torchvision.models.resnet18(num_classes=classes)  # torchvision's own parameter names
    state = donor.state_dict()
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_torchvision_file_loads_and_head_is_reinitialised(tmp_path: Path, suffix: str):
    state = _torchvision_weights(tmp_path / f"resnet18{suffix}")
    spec = ModelSpec("resnet18", 3, stem="standard")
    model = build_model(spec)
    notes = load_pretrained(model, str(tmp_path / f"resnet18{suffix}"), spec)
    own = model.state_dict()
    assert torch.equal(own["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert torch.equal(own["conv1.weight"], state["conv1.weight"])
    assert own["fc.weight"].shape == (3, 512)
    assert any("head re-initialised" in n for n in notes)


def test_pretrained_small_stem_reinitialises_conv1_only(tmp_path: Path):
    state = _torchvision_weights(tmp_path / "r18.pth")
    spec = ModelSpec("resnet18", 3, stem="small")
    model = build_model(spec)
    notes = load_pretrained(model, str(tmp_path / "r18.pth"), spec)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert any("first conv" in n for n in notes)


def test_pretrained_for_another_architecture_is_refused(tmp_path: Path):
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    spec = ModelSpec("resnet18", 3)
    with pytest.raises(ModelError, match="another architecture"):
        load_pretrained(build_model(spec), str(tmp_path / "r50.pth"), spec)
    with pytest.raises(ModelError, match="not found"):
        load_pretrained(build_model(spec), str(tmp_path / "missing.pth"), spec)


def test_frozen_backbone_trains_only_the_head_then_unfreezes(tmp_path: Path, no_figures):
    data = write_class_folders(tmp_path / "toy", 16, seed=5)
    weights = tmp_path / "start.safetensors"
    spec = ModelSpec("resnet18", 3, stem="small", width=0.25)
    start = build_model(spec).state_dict()
    save_file({k: v.contiguous() for k, v in start.items()}, str(weights))
    frozen = resnetlab.train(data=str(data), out=str(tmp_path / "frozen"), epochs=1, pretrained=str(weights),
                             freeze_backbone=True, **TINY)
    after = torch.load(tmp_path / "frozen" / "last.pt", weights_only=True)["model"]
    assert torch.equal(after["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])
    assert torch.equal(after["bn1.running_mean"], start["bn1.running_mean"]), "frozen BatchNorm keeps its statistics"
    assert not torch.equal(after["fc.weight"], start["fc.weight"])
    assert frozen.epochs_done == 1

    resnetlab.train(data=str(data), out=str(tmp_path / "later"), epochs=2, pretrained=str(weights),
                    freeze_backbone=True, unfreeze_at=2, **TINY)
    later = torch.load(tmp_path / "later" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(later["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"]), "unfrozen at epoch 2"


def test_set_backbone_trainable_leaves_the_mlp_head_trainable():
    model = build_model(ModelSpec("resnet18", 4, head="mlp", hidden=8, width=0.25))
    set_backbone_trainable(model, False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.0.weight", "fc.0.bias", "fc.3.weight", "fc.3.bias"}


def test_stem_is_small_at_64px_and_below(tmp_path: Path, no_figures):
    data = write_class_folders(tmp_path / "toy", 8, seed=2)
    for size, stem in ((16, "small"), (72, "standard")):
        settings = dict(TINY, img_size=size)
        resnetlab.train(data=str(data), out=str(tmp_path / f"s{size}"), epochs=1, **settings)
        saved = torch.load(tmp_path / f"s{size}" / "best.pt", weights_only=True)
        assert saved["model_spec"]["stem"] == stem


def test_class_balance_is_inverse_frequency_and_the_sampler_draws_classes_evenly():
    labels = torch.tensor([0] * 30 + [1] * 30 + [2] * 6)
    cpu = torch.device("cpu")
    weights, sampling = class_balance(TrainConfig(data="x", balance="weights"), labels, 3, cpu)
    assert sampling is None
    assert weights.tolist() == pytest.approx([66 / (3 * 30), 66 / (3 * 30), 66 / (3 * 6)])  # n / (K * count)
    assert (weights * torch.tensor([30.0, 30.0, 6.0])).tolist() == pytest.approx([22.0] * 3)  # equal total weight
    tempered, _ = class_balance(TrainConfig(data="x", balance="sqrt"), labels, 3, cpu)
    assert tempered[2] / tempered[0] == pytest.approx(5 ** 0.5)  # 5:1 classes -> sqrt(5):1 weights
    assert float((tempered * torch.tensor([30.0, 30.0, 6.0])).sum()) == pytest.approx(66.0)  # average image: 1
    absent, _ = class_balance(TrainConfig(data="x", balance="weights"), labels, 4, cpu)  # a class with no image
    assert torch.isfinite(absent).all()
    no_weights, sampling = class_balance(TrainConfig(data="x", balance="sampler"), labels, 3, cpu)
    assert no_weights is None and sampling.tolist() == pytest.approx([1 / 30] * 60 + [1 / 6] * 6)
    assert class_balance(TrainConfig(data="x"), labels, 3, cpu) == (None, None)

    images = torch.zeros(66, 3, 8, 8, dtype=torch.uint8)
    batches = {name: Batches(images, labels, batch_size=11, device=cpu, mean=[0.5] * 3, std=[0.25] * 3,
                             order=Order(shuffle=True, sample_weights=weights_, seed=0))
               for name, weights_ in (("sampler", sampling), ("shuffle", None))}
    share = {}
    for name, source in batches.items():
        drawn = torch.cat([y for epoch in range(1, 6) for _, y, _ in source.epoch(epoch)])
        assert len(drawn) == 5 * 66
        share[name] = (torch.bincount(drawn, minlength=3) / len(drawn)).tolist()
    assert share["shuffle"] == pytest.approx([30 / 66, 30 / 66, 6 / 66])  # every image once an epoch
    assert all(0.25 < s < 0.42 for s in share["sampler"]), share  # about a third each, the rare class included


def test_balance_reaches_the_training_loss_and_batches_and_dataset_norm(tmp_path: Path, capsys, monkeypatch,
                                                                        no_figures):
    root = tmp_path / "skewed"
    write_class_folders(root, 30, seed=1)
    for extra in sorted((root / "red").iterdir())[6:]:
        extra.unlink()  # red: 6 images, the others 30
    seen: dict[str, dict] = {}
    build_objective = resnetlab.training.run.build_objective

    def recording_objective(cfg, num_classes, class_weights):  # noqa: ANN001, ANN202
        objective = build_objective(cfg, num_classes, class_weights)
        record = seen[cfg.balance] = {"weights": class_weights, "labels": [], "loss": objective.train}
        objective.train = lambda logits, y: record["labels"].append(y) or record["loss"](logits, y)
        return objective

    monkeypatch.setattr(resnetlab.training.run, "build_objective", recording_objective)
    for balance in ("weights", "sampler"):
        assert main(["train", str(root), "--balance", balance, "--norm", "dataset", "--epochs", "1", "--out",
                     str(tmp_path / balance), "--img-size", "16", "--width", "0.25", "--batch-size", "16",
                     "--no-progress", "--workers", "1", "--val-split", "0.2"]) == 0
        printed = capsys.readouterr().err
        assert "red=5" in printed or "red=4" in printed, "class counts are printed at the start"
        saved = torch.load(tmp_path / balance / "best.pt", weights_only=True)
        assert saved["mean"] != [0.485, 0.456, 0.406] and all(0 < s < 1 for s in saved["std"])
    with open(tmp_path / "weights" / "split.csv", newline="", encoding="utf-8") as handle:
        train = [row["label"] for row in csv.DictReader(handle) if row["split"] == "train"]
    counts = torch.tensor([float(train.count(name)) for name in ("blue sky", "green léaf", "red")])
    weights = seen["weights"]["weights"]  # the training loss weighs each class by its inverse frequency
    assert weights.tolist() == pytest.approx((counts.sum() / (3 * counts)).tolist())
    assert torch.equal(seen["weights"]["loss"].weight, weights)
    assert seen["sampler"]["weights"] is None and seen["sampler"]["loss"].weight is None
    # the sampler draws the rare class about as often as the others: far more than its 1 image in 11
    drawn = torch.bincount(torch.cat(seen["sampler"]["labels"]), minlength=3)
    assert drawn[2] > 2 * counts[2] * drawn.sum() / counts.sum(), (drawn, counts)
    rows = list(csv.DictReader((tmp_path / "sampler" / "metrics.csv").read_text(encoding="utf-8").splitlines()))
    assert len(rows) == 1


def test_bare_state_dict_of_a_narrow_model_is_rebuilt(tmp_path: Path):
    from resnetlab.checkpoint import load_model

    spec = ModelSpec("resnet18", 3, stem="small", width=0.25)
    original = build_model(spec).eval()
    torch.save(original.state_dict(), tmp_path / "notebook.pth")
    model, meta = load_model(tmp_path / "notebook.pth", arch="resnet18", classes=["a", "b", "c"], img_size=16)
    assert meta.spec.width == 0.25 and meta.spec.stem == "small"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


@pytest.mark.parametrize("width", [0.3, 0.1])
def test_bare_state_dict_of_an_odd_width_is_rebuilt(tmp_path: Path, width: float):
    from resnetlab.checkpoint import load_model

    # 0.3 -> stages 19-38-77-154: the first block alone (19/64) would rebuild 76 channels in layer3
    spec = ModelSpec("resnet18", 3, stem="small", width=width)
    original = build_model(spec).eval()
    torch.save(original.state_dict(), tmp_path / "notebook.pth")
    model, meta = load_model(tmp_path / "notebook.pth", arch="resnet18", classes=["a", "b", "c"], img_size=16)
    assert meta.spec.width == pytest.approx(width)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in
                                                                   original.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_unwrap_reaches_the_network_under_any_wrapper_nesting():
    from resnetlab.models import TTAModel, backbone_frozen, unwrap

    network = build_model(ModelSpec("resnet18", 3, width=0.25))
    wrapped = torch.compile(torch.nn.DataParallel(TTAModel(torch.nn.DataParallel(network), "flip")))
    assert unwrap(wrapped) is network and unwrap(network) is network
    set_backbone_trainable(network, False)
    assert backbone_frozen(wrapped)  # read through every wrapper
