"""WebDataset tar shards: `resnetlab shards` writes them from a folder; train, check and evaluate read them back."""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, TOY_CLASSES, make_image, write_class_folders
from resnetlab.checkpoint import read_checkpoint
from resnetlab.cli import main
from resnetlab.data.sources import open_data
from resnetlab.errors import DataError

wds = pytest.importorskip("webdataset", reason="the shards extra: pip install 'resnetlab[shards]'")
CLASSES = sorted(TOY_CLASSES)


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_folder_to_shards_then_train_and_evaluate(tmp_path: Path, capsys, no_figures):
    data = tmp_path / "toy"
    write_class_folders(data / "train", 8, seed=1, ext="jpg")
    write_class_folders(data / "val", 3, seed=2)
    write_class_folders(data / "test", 3, seed=3)
    out = tmp_path / "shards"
    assert main(["shards", str(data), str(out), "--shard-size", "10"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {name: split["records"] for name, split in summary["splits"].items()} == {"train": 24, "val": 9, "test": 9}
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar", "train-000000.tar", "train-000001.tar",
                                                         "train-000002.tar", "val-000000.tar"]
    assert json.loads((out / "classes.json").read_text(encoding="utf-8")) == CLASSES
    assert (out / "classes.txt").read_text(encoding="utf-8").splitlines() == CLASSES

    first = members(out / "train-000000.tar")
    assert sorted(first)[:4] == ["00000000.cls", "00000000.jpg", "00000001.cls", "00000001.jpg"]
    assert len(first) == 20  # 10 records of two members
    source_files = sorted((data / "train" / CLASSES[0]).iterdir())
    assert first["00000000.jpg"] == source_files[0].read_bytes()  # the original JPEG bytes, not re-encoded
    labels = [int(members(out / f"train-00000{i}.tar")[f"{n:08d}.cls"]) for n in range(24) for i in (n // 10,)]
    assert labels == [0] * 8 + [1] * 8 + [2] * 8
    assert sorted(members(out / "val-000000.tar"))[:2] == ["00000000.cls", "00000000.png"]

    run = tmp_path / "run"
    train = ["--epochs", "1", "--img-size", "16", *FAST, "--batch-size", "16", "--lr", "0.05", "--out", str(run)]
    assert main(["train", str(out), *train]) == 0
    err = capsys.readouterr().err
    assert "resume is exact as for folders" in err
    assert read_checkpoint(run / "best.pt")["classes"] == CLASSES
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    assert json.dumps(report).count("train-000000.tar") == 0  # nothing skipped, so no shard is named

    assert main(["evaluate", str(run / "best.pt"), str(out), "--split", "test", "--no-progress"]) == 0
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["images"] == 9
    assert sorted(metrics["per_class"]) == CLASSES

    predictions = tmp_path / "predictions.csv"
    assert main(["predict", str(run / "best.pt"), str(out / "test-000000.tar"), "--out", str(predictions),
                 "--workers", "1", "--no-progress"]) == 0
    with open(predictions, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and all(row["label"] in CLASSES and not row["error"] for row in rows)
    assert sorted(Path(row["path"]).name for row in rows)[0] == "0000000_00000000.png"  # record 0, key 00000000

    vectors = tmp_path / "embeddings.npz"  # embed reads shards too, each record labelled by its class name
    assert main(["embed", str(run / "best.pt"), str(out / "val-000000.tar"), "--out", str(vectors),
                 "--workers", "1", "--no-progress"]) == 0
    with np.load(vectors) as saved:
        assert len(saved["paths"]) == 9 and sorted(set(saved["labels"].tolist())) == CLASSES

    explained = tmp_path / "explained"  # and explain: one heat map per record of the shard
    assert main(["explain", str(run / "best.pt"), str(out / "val-000000.tar"), "--out", str(explained),
                 "--workers", "1", "--no-progress"]) == 0
    with open(explained / "explain.csv", newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 9


def write_shard(path: Path, records: list[dict]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for record in records:
            sink.write(record)


def png_bytes(seed: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    make_image(np.random.default_rng(seed), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_records_are_skipped_and_named_and_brace_patterns_read(tmp_path: Path, capsys):
    out = tmp_path / "shards"
    out.mkdir()
    colours = list(TOY_CLASSES.values())[:2]
    good = [{"__key__": f"good{i}", "png": png_bytes(i, colours[i % 2]), "cls": str(i % 2)} for i in range(8)]
    write_shard(out / "train-000000.tar", good[:4] + [{"__key__": "broken", "png": b"not a png", "cls": "1"}])
    write_shard(out / "train-000001.tar", good[4:] + [{"__key__": "nolabel", "png": good[0]["png"]},
                                                       {"__key__": "badlabel", "png": good[1]["png"], "cls": "7"}])
    write_shard(out / "val-000000.tar", good[:4])
    (out / "classes.txt").write_text("cat\ndog\n", encoding="utf-8")

    source = open_data(str(out / "train-{000000..000001}.tar"))
    assert source.kind == "shards" and source.classes == ["cat", "dog"]
    assert len(source.splits["train"]) == 9 and len(source.splits["val"]) == 4  # val-*.tar found beside the pattern
    assert list(source.splits["train"].labels[:5]) == [0, 1, 0, 1, 1]
    notes = "\n".join(source.notes)
    assert "train-000001.tar key nolabel: no .cls member" in notes
    assert "train-000001.tar key badlabel: class index 7 is not in 0-1" in notes

    (out / "train-000002.tar").write_bytes((out / "train-000000.tar").read_bytes()[:3000])  # a truncated shard
    assert main(["check", str(out), "--no-near-dups", "--img-size", "16", "--workers", "1", "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "train-000000.tar key broken" in printed  # the undecodable image, named by its shard and key
    assert "key nolabel" in printed and "key badlabel" in printed
    assert re.search(r"train-000002.tar key \(after \d record\(s\)\): unreadable tar data, rest of the shard", printed)
    assert printed.count("leakage: the same image is in train") == 4  # val repeats 4 training records

    val = open_data(str(out / "val-000000.tar"))  # a lone val shard is the val split; its train siblings come along
    assert len(val.splits["val"]) == 4 and len(val.splits["train"]) == 9
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "test-000000.tar").write_bytes((out / "val-000000.tar").read_bytes())
    with pytest.raises(DataError, match="no train-\\*.tar shards"):  # as for a folder with test/ but no train/
        open_data(str(alone))
    with pytest.raises(DataError, match=r"train-000003.tar does not exist \(7 of the 10 files"):
        open_data(str(out / "train-{000000..000009}.tar"))
    assert main(["shards", str(out), str(out), "--shard-size", "4"]) == 1  # never into a folder holding shards
    assert "already holds shards" in capsys.readouterr().err


def test_cache_dir_holds_the_unpacked_copies_of_shards_and_hugging_face_sets(tmp_path: Path, capsys):
    """--cache-dir moves every copy resnetlab makes once (it used to move the decoded arrays only; shards and
    Hugging Face images went to $RESNETLAB_CACHE)."""
    data = tmp_path / "toy"
    write_class_folders(data / "train", 4, seed=1)
    out = tmp_path / "shards"
    assert main(["shards", str(data), str(out), "--shard-size", "10"]) == 0
    capsys.readouterr()
    chosen = tmp_path / "chosen cache"
    source = open_data(str(out), cache_dir=str(chosen))
    assert all(Path(p).is_relative_to(chosen / "shards") for p in source.splits["train"].paths)
    assert f"unpacked once to {chosen / 'shards'}" in " ".join(source.notes)
    assert main(["check", str(out), "--cache-dir", str(chosen / "check"), "--no-progress", "--no-near-dups"]) == 0
    assert list((chosen / "check" / "shards").iterdir())  # check's --cache-dir too
    datasets = pytest.importorskip("datasets", reason="the shards extra: pip install 'resnetlab[shards]'")
    table = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(i, (200, 30, 30)), "path": None}
                                                  for i in range(4)], "label": [0, 1, 0, 1]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.ClassLabel(names=["a", "b"])}))
    table.save_to_disk(str(tmp_path / "hf"))
    source = open_data(str(tmp_path / "hf"), cache_dir=str(chosen))
    assert all(Path(p).is_relative_to(chosen / "hf") for p in source.splits["train"].paths)


def test_hugging_face_save_to_disk_and_parquet_train_and_evaluate(tmp_path: Path, capsys, no_figures):
    datasets = pytest.importorskip("datasets", reason="the shards extra: pip install 'resnetlab[shards]'")
    names = ["zebra", "apple"]  # ClassLabel order, not sorted: the names are kept as the data set gives them
    colours = list(TOY_CLASSES.values())[:2]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=names)})

    def split(count: int, seed: int, missing: int | None = None) -> object:
        labels = [i % 2 for i in range(count)]
        images = [{"bytes": png_bytes(seed + i, colours[y]), "path": None} for i, y in enumerate(labels)]
        if missing is not None:
            labels[missing] = -1  # ClassLabel's "no label"
        return datasets.Dataset.from_dict({"img": images, "y": labels}, features=features)

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": split(16, 0, missing=3), "validation": split(6, 100),
                          "test": split(6, 200)}).save_to_disk(str(saved))
    source = open_data(str(saved))
    assert source.kind == "hugging face" and source.classes == names
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 15, "val": 6, "test": 6}
    assert any("split train row 3" in note and "label -1" in note for note in source.notes)
    assert list(source.splits["train"].labels[:4]) == [0, 1, 0, 0]  # row 3 left out

    run = tmp_path / "run"
    train = ["--epochs", "1", "--img-size", "16", *FAST, "--batch-size", "16", "--lr", "0.05", "--out", str(run)]
    assert main(["train", str(saved), *train]) == 0
    assert read_checkpoint(run / "best.pt")["classes"] == names
    assert main(["evaluate", str(run / "best.pt"), str(saved), "--split", "test", "--no-progress"]) == 0
    assert json.loads((run / "eval-test" / "metrics.json").read_text(encoding="utf-8"))["images"] == 6

    parquet = tmp_path / "pq"
    parquet.mkdir()
    split(8, 300).to_parquet(str(parquet / "train-00000-of-00001.parquet"))
    split(4, 400).to_parquet(str(parquet / "test-00000-of-00001.parquet"))
    source = open_data(str(parquet))
    assert source.classes == names  # the ClassLabel travels in the Parquet schema
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 8, "test": 4}
    capsys.readouterr()


def test_hugging_face_label_cells_floats_nans_and_lists():
    from resnetlab.data.hf import _label_value, _names_from_values

    assert [_label_value(v) for v in (2.0, float("nan"), None, 1, "cat")] == [2, None, None, 1, "cat"]
    assert _names_from_values({"train": {"label": [0.0, 2.0, float("nan")]}}, "label") == ["0", "1", "2"]
    with pytest.raises(DataError, match="holds lists"):
        _names_from_values({"train": {"label": [[0, 1], [1]]}}, "label")
