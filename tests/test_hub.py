"""ImageNet weights by name offline: a fake Hugging Face hub cache in timm's layout (models--timm--ARCH.TAG/refs/main,
snapshots/REV/model.safetensors), a RESNETLAB_WEIGHTS folder, and an injected reachability check. conftest points
HF_HUB_CACHE at an empty folder and sets HF_HUB_OFFLINE, so nothing here touches the network."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from resnetlab import hub
from resnetlab.errors import ModelError
from resnetlab.models import ModelSpec, available_weights, build_model, load_pretrained

REPO = "models--timm--resnet18.a1_in1k"  # timm's default tag for resnet18
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    """A full resnet18 state dict with random weights (ImageNet's 1,000-class head), as the hub would have it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(path))
    return path


def fill_cache(cache: Path, weights: Path, *, refs: bool = True) -> Path:
    """The files huggingface_hub writes for one download (blobs/ left out: snapshots hold the real file here)."""
    snapshot = cache / REPO / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(weights.read_bytes())
    if refs:
        (cache / REPO / "refs").mkdir()
        (cache / REPO / "refs" / "main").write_text(REVISION)
    return snapshot / "model.safetensors"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def test_pretrained_hub_loads_from_the_cache_when_offline(cache: Path, imagenet_like: Path):
    cached = fill_cache(cache, imagenet_like)
    state = hub.hub_state_dict("resnet18")  # HF_HUB_OFFLINE=1 (conftest): only the cache can answer
    expected = timm.models.load_state_dict(str(imagenet_like))
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    model = build_model(ModelSpec("resnet18", num_classes=3))
    notes = load_pretrained(model, "hub", ModelSpec("resnet18", num_classes=3))  # what --pretrained hub runs
    assert torch.equal(model.conv1.weight, expected["conv1.weight"])
    assert any("head re-initialised" in note for note in notes)
    assert available_weights("resnet18") == ("hub", f"ImageNet weights for resnet18 from the Hugging Face hub cache "
                                                    f"({cached})")


def test_a_cache_copied_without_its_refs_is_still_found(cache: Path, imagenet_like: Path):
    cached = fill_cache(cache, imagenet_like, refs=False)
    assert hub.cached_hub_weights("resnet18") == cached


def test_missing_weights_name_the_cache_folder_looked_in(cache: Path):
    with pytest.raises(ModelError) as caught:
        hub.hub_state_dict("resnet18")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE is set" in message and str(cache / REPO) in message and "--pretrained FILE" in message
    assert available_weights("resnet18") == (None, f"no ImageNet weights for resnet18 in RESNETLAB_WEIGHTS, the hub "
                                                   f"cache ({cache / REPO}) or online: trained from scratch")


def test_the_hf_home_and_default_cache_folders(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hub.hub_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"


def test_a_weights_folder_comes_first_and_only_files_named_after_the_arch(cache: Path, imagenet_like: Path,
                                                                        tmp_path: Path, monkeypatch):
    fill_cache(cache, imagenet_like)
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("RESNETLAB_WEIGHTS", str(folder))
    (folder / "resnet18d.safetensors").write_bytes(b"another network")
    (folder / "notes.txt").write_text("resnet18")
    assert available_weights("resnet18")[0] == "hub"  # neither file is resnet18's: the cache answers
    (folder / "resnet18.a1_in1k.pth").write_bytes(b"x")
    assert available_weights("resnet18") == (str(folder / "resnet18.a1_in1k.pth"), "ImageNet weights for resnet18: "
                                             f"{folder / 'resnet18.a1_in1k.pth'} (RESNETLAB_WEIGHTS)")
    (folder / "resnet18.safetensors").write_bytes(b"x")
    assert available_weights("resnet18")[0] == str(folder / "resnet18.safetensors")  # the exact name wins
    assert available_weights("resnet34")[0] is None


def test_online_is_asked_only_when_the_hub_is_allowed_and_nothing_is_local(cache: Path, monkeypatch):
    asked: list[bool] = []

    def online() -> bool:
        asked.append(True)
        return True

    assert available_weights("resnet18", online=online)[0] is None and not asked  # HF_HUB_OFFLINE=1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    value, reason = available_weights("resnet18", online=online)
    assert value == "hub" and asked and "downloaded from the Hugging Face hub" in reason
    assert available_weights("resnet18", online=lambda: False)[0] is None
    assert available_weights("resnet18.nope", online=online)[0] is None  # a tag timm does not have: no hub weights


def test_the_reachability_check_is_bounded_even_when_the_lookup_hangs(monkeypatch):
    def hang(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a name lookup that takes its time
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    started = time.perf_counter()
    assert hub._hub_reachable(0.2) is False
    assert time.perf_counter() - started < 1.5
    monkeypatch.undo()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port: refused at once
    assert hub._hub_reachable(1.0) is False
