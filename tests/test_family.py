"""The ResNet family by name (models.ARCHITECTURES): every member builds at a tiny size, trains a step, fine-tunes
(head replaced, backbone frozen) and gets its Grad-CAM on the last block of layer4; two representative members go
the whole way (train -> explain -> ONNX export checked against PyTorch -> serve); any other name is refused up front
with the list, and a --width an architecture cannot take is refused with the narrowest it can."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from safetensors.torch import save_file

import resnetlab
from conftest import write_class_folders
from resnetlab.cam import compute_cams, default_target_layer
from resnetlab.cli import main
from resnetlab.errors import ConfigError, ModelError
from resnetlab.models import (
    ARCHITECTURES,
    ModelSpec,
    backbone_frozen,
    build_model,
    check_arch,
    first_conv_name,
    head_module,
    head_name,
    load_matching,
    set_backbone_trainable,
)
from resnetlab.serve import create_app

SIZE = 16  # px: the small stem keeps it, so layer4 still has a 2 x 2 map
TINY = {"img_size": SIZE, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "lr": 0.05,
        "device": "cpu", "seed": 0}
DEEPEST = ("resnet152", "resnet152d")  # built and run forward only: a training step adds seconds, not coverage


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_member_trains_fine_tunes_and_explains(arch: str):
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, 3, stem="small", width=0.25))
    head = head_module(model)
    assert head is model.get_classifier() and head_name(model) == "fc" and head.out_features == 3
    x, y = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 2])
    assert model.forward_features(x).shape[-1] == SIZE // 8  # small stem: the stages see the full 16 px
    first = model.get_submodule(first_conv_name(model))
    assert first.stride == (1, 1) and first.kernel_size == (3, 3)
    if arch in DEEPEST:
        with torch.no_grad():
            assert model(x).shape == (2, 3)
    else:  # one SGD step: the loss is finite and the stem learns
        before = first.weight.detach().clone()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        assert torch.isfinite(loss) and not torch.equal(first.weight, before)

    # fine-tune: weights of the same network with another head (ImageNet's, here 10 classes) replace the backbone,
    # the head is re-initialised, and --freeze-backbone leaves only the head training
    donor = {k: v.clone() for k, v in model.state_dict().items()}
    donor["fc.weight"], donor["fc.bias"] = torch.randn(10, head.in_features), torch.randn(10)
    donor["layer4.0.conv1.weight"] += 1.0
    notes = load_matching(model, donor, "imagenet.pth")
    assert notes == ["classifier head re-initialised (its shape differs from the weights file)"]
    assert torch.equal(model.layer4[0].conv1.weight, donor["layer4.0.conv1.weight"])
    set_backbone_trainable(model, False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert backbone_frozen(model)

    # explain: the last block of the last stage, whatever the block type (basic, bottleneck, SE, grouped)
    assert default_target_layer(model) is model.layer4[-1]
    # one image, each class: a random network need not hold positive evidence for a given class, but for some
    cams = compute_cams(model, x[:1].expand(3, -1, -1, -1), [0, 1, 2], progress=False)
    assert cams.shape == (3, SIZE, SIZE) and cams.min() >= 0 and max(cam.max() - cam.min() for cam in cams) > 0.5


@pytest.mark.parametrize("arch", ["resnet18d", "seresnet50"])
def test_fine_tune_explain_export_and_serve_end_to_end(arch: str, tmp_path: Path, no_figures):
    data = write_class_folders(tmp_path / "toy", 8, seed=3)
    weights = tmp_path / f"{arch}.safetensors"  # "ImageNet" weights: the same network with a 10-class head
    donor = build_model(ModelSpec(arch, 10, stem="small", width=0.25)).state_dict()
    save_file({k: v.contiguous() for k, v in donor.items()}, str(weights))
    result = resnetlab.train(data=str(data), out=str(tmp_path / "run"), model=arch, epochs=1, pretrained=str(weights),
                             freeze_backbone=True, **TINY)
    checkpoint = result.run_dir / "best.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["model_spec"]["arch"] == arch and saved["model"]["fc.weight"].shape[0] == 3
    assert torch.equal(saved["model"]["layer4.0.conv1.weight"], donor["layer4.0.conv1.weight"])  # frozen

    image = sorted(data.rglob("*.png"))[0]
    explained = resnetlab.explain(checkpoint, [str(image)], out=tmp_path / "cams", workers=1)
    assert explained["layer"] == ("layer4.1" if arch == "resnet18d" else "layer4.2")  # layer4[-1]
    assert len(list((tmp_path / "cams").glob("*.png"))) >= 1

    exported = resnetlab.export(checkpoint, format="onnx", out=tmp_path / "model.onnx", check=False)
    assert exported["max_abs_diff"] < 1e-3  # onnxruntime's logits against PyTorch's, checked by export itself
    files = [str(p) for p in sorted(data.rglob("*.png"))[::6]]
    torch_probs = np.array([p.probabilities for p in resnetlab.load(checkpoint, device="cpu").predict(files)])
    onnx_classifier = resnetlab.load(tmp_path / "model.onnx")
    onnx_probs = np.array([p.probabilities for p in onnx_classifier.predict(files)])
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)

    with TestClient(create_app(onnx_classifier)) as client:  # serve the exported model
        response = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/png")})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == onnx_classifier.predict([str(image)])[0].label


def test_other_names_are_refused_up_front_with_the_list(tmp_path: Path, capsys):
    check_arch("resnet50.tv_in1k")  # a timm weights tag after a member's name
    with pytest.raises(ConfigError, match=r"unsupported model 'efficientnet_b0'; resnetlab supports the ResNet "
                                          r"family: resnet18, .*resnetrs50"):
        check_arch("efficientnet_b0")  # a timm model, but not a ResNet
    with pytest.raises(ConfigError, match=r"unknown model 'resnet19' \(did you mean resnet18"):
        check_arch("resnet19")
    data = write_class_folders(tmp_path / "toy", 2)
    assert main(["train", str(data), "--model", "vit_tiny_patch16_224", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert all(arch in err for arch in ARCHITECTURES) and not (tmp_path / "run").exists()


def test_width_where_the_architecture_allows_and_a_clear_refusal_where_not(tmp_path: Path, capsys):
    narrow = build_model(ModelSpec("resnext50_32x4d", 3, width=0.25))  # 32 groups of one channel in layer1
    assert narrow.layer1[0].conv2.groups == 32 and narrow.layer1[0].conv2.out_channels == 32
    with pytest.raises(ModelError, match=r"resnext50_32x4d cannot be made as narrow as --width 0.125: .*use --width "
                                         r"0.25 or more"):
        build_model(ModelSpec("resnext50_32x4d", 3, width=0.125))
    data = write_class_folders(tmp_path / "toy", 2)
    out = tmp_path / "run"
    assert main(["train", str(data), "--model", "resnext50_32x4d", "--width", "0.125", "--out", str(out)]) == 2
    assert "use --width 0.25 or more" in capsys.readouterr().err and not out.exists()  # before the run folder


def test_train_help_lists_the_family(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("resnet18/34/50/101/152", "resnet18d", "resnext50_32x4d", "wide_resnet50_2", "seresnet50",
                  "resnetrs50"):
        assert words in text, words
