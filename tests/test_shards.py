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
    assert len(first) == 30  # 10 records of three members: image, class and where it came from
    train = {k: v for i in range(3) for k, v in members(out / f"train-00000{i}.tar").items()}
    source_files = sorted((data / "train" / CLASSES[0]).iterdir())
    assert train["00000000.jpg"] == source_files[0].read_bytes()  # the original JPEG bytes, not re-encoded
    assert [int(train[f"{n:08d}.cls"]) for n in range(24)] == [0] * 8 + [1] * 8 + [2] * 8  # key: source position
    assert json.loads(train["00000000.json"]) == {"source": str(source_files[0])}
    opened = open_data(str(out)).splits["train"]  # messages name a record's shard, key and original file
    origin = r".*#\d{8}\.jpg \(train-00000\d\.tar key \d{8} = " + re.escape(str(data / "train")) + r"/.*\.jpg\)"
    assert re.fullmatch(origin, opened.describe(0))
    assert len({int(v) for k, v in first.items() if k.endswith(".cls")}) == 3  # but each shard mixes the classes
    assert sorted(members(out / "val-000000.tar"))[:3] == ["00000000.cls", "00000000.json", "00000000.png"]

    run = tmp_path / "run"
    train = ["--epochs", "1", "--img-size", "16", *FAST, "--batch-size", "16", "--lr", "0.05", "--out", str(run)]
    assert main(["train", str(out), *train]) == 0
    err = capsys.readouterr().err
    assert "records read in place from 5 tar file(s)" in err
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
    assert sorted(rows, key=lambda row: row["path"])[0]["path"] == f"{out / 'test-000000.tar'}#00000000.png"

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
    with tarfile.open(out / "val-000001.tar", "w") as tar:  # members named in capitals, as some tools write them
        for name, data in (("UPPER.PNG", good[0]["png"]), ("UPPER.CLS", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (out / "classes.txt").write_text("cat\ndog\n", encoding="utf-8")

    source = open_data(str(out / "train-{000000..000001}.tar"))
    assert source.kind == "shards" and source.classes == ["cat", "dog"]
    assert len(source.splits["train"]) == 9 and len(source.splits["val"]) == 5  # val-*.tar found beside the pattern
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
    assert printed.count("leakage: the same image is in train") == 5  # val repeats 4 training records, UPPER one

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


def test_cache_dir_holds_the_shard_indexes_and_hugging_face_images(tmp_path: Path, capsys):
    """--cache-dir moves everything resnetlab keeps once (it used to move the decoded arrays only; shards' and
    Hugging Face's went to $RESNETLAB_CACHE). Shards leave their images in the tar files: only an index is kept."""
    data = tmp_path / "toy"
    write_class_folders(data / "train", 4, seed=1)
    out = tmp_path / "shards"
    assert main(["shards", str(data), str(out), "--shard-size", "10"]) == 0
    capsys.readouterr()
    chosen = tmp_path / "chosen cache"
    source = open_data(str(out), cache_dir=str(chosen))
    assert all(re.fullmatch(re.escape(str(out)) + r"/train-00000\d\.tar#\d{8}\.png", p)
               for p in source.splits["train"].paths)
    assert {p.suffix for p in (chosen / "shards").iterdir()} == {".json"}  # member indexes, not the images
    assert f"index kept in {chosen / 'shards'}, no copy of the images" in " ".join(source.notes)
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


def stream_batches(split, *, workers: int, rank: int = 0, world_size: int = 1, buffer: int = 10):
    import torch

    from resnetlab.data.loaders import Order
    from resnetlab.data.shardstream import ShardStreamBatches

    return ShardStreamBatches(split, 16, workers=workers, batch_size=8, device=torch.device("cpu"), mean=[0.5] * 3,
                              std=[0.5] * 3, buffer=buffer,
                              order=Order(shuffle=True, seed=0, drop_last=True, rank=rank, world_size=world_size))


def test_the_shard_stream_splits_by_rank_then_worker_and_reads_sorted_shards_at_random():
    from resnetlab.data.shardstream import stream_parts, unmixed
    from resnetlab.data.splits import SplitData

    shards = [f"s{i}.tar" for i in range(9)]
    parts = [p for rank in (0, 1) for p in stream_parts(shards, seed=0, epoch=1, rank=rank, world_size=2, workers=2)]
    whole = [s for p in parts for s in p.whole]
    assert len(whole) == len(set(whole)) == 8 and [len(p.whole) for p in parts] == [2, 2, 2, 2]  # disjoint, even
    assert len({p.striped for p in parts}) == 1 and len(parts[0].striped) == 1  # the ninth: read by all four,
    assert [(p.every, p.which) for p in parts] == [(4, 0), (4, 1), (4, 2), (4, 3)]  # each keeping its own records
    assert sorted([*whole, *parts[0].striped]) == shards
    assert stream_parts(shards, seed=0, epoch=2, rank=0, world_size=2, workers=2) != parts[:2]  # a new order
    few = [p for rank in (0, 1) for p in stream_parts(shards[:3], seed=0, epoch=1, rank=rank, world_size=2, workers=2)]
    assert all(not p.whole and len(p.striped) == 3 for p in few)

    labels = np.repeat([0, 1, 2], 40)  # shards written class by class, as a folder lists its files
    by_class = SplitData("train", labels, [f"x{i}" for i in range(120)],
                         shards={f"s{k}.tar": list(range(k * 20, k * 20 + 20)) for k in range(6)})
    assert "hold sorted classes (the median shard's most common class is 100% of it, against 33%" in unmixed(by_class)
    mixed = by_class.subset(np.random.default_rng(0).permutation(120))
    mixed.shards = {f"s{k}.tar": list(range(k * 20, k * 20 + 20)) for k in range(6)}
    assert unmixed(mixed) is None


def test_training_streams_from_the_tar_files_in_sequence(tmp_path: Path, capsys, no_figures):
    """--loader stream on shards reads each shard front to back through a shuffle buffer: an epoch visits each
    record at most once, two processes see disjoint records in the same number of steps, a resumed epoch replays
    the same batches from its step, and an undecodable record is skipped and named by its shard and key."""
    data = tmp_path / "toy"
    write_class_folders(data / "train", 20, seed=1, ext="jpg")
    write_class_folders(data / "val", 3, seed=2)
    out = tmp_path / "shards"
    assert main(["shards", str(data), str(out), "--shard-size", "7"]) == 0  # 60 records in 9 shards (8 x 7, 4)
    capsys.readouterr()
    split = open_data(str(out)).splits["train"]
    assert sorted(len(p) for p in split.shards.values()) == [4] + [7] * 8
    for workers in (0, 2):
        batches = stream_batches(split, workers=workers)
        full = [index.tolist() for _, _, index in batches.epoch(2)]
        seen = [i for index in full for i in index]
        assert len(full) == 7 and len(seen) == 56  # 7 steps of 8
        # one reader: no record twice; two: reader 0 makes 4 of the 7 batches from its half of the records (4 shards
        # and every other record of the ninth), so it starts its share over for its last 2
        assert len(set(seen)) == (56 if workers == 0 else 54)
        assert [index.tolist() for _, _, index in batches.epoch(2, start_step=3)] == full[3:]
        assert [index.tolist() for _, _, index in batches.epoch(3)] != full
    ranks = [[i for _, _, index in stream_batches(split, workers=2, rank=r, world_size=2).epoch(1)
              for i in index.tolist()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 24 and not set(ranks[0]) & set(ranks[1])  # 3 steps each, disjoint

    with wds.TarWriter(str(out / "train-000009.tar")) as sink:  # a record whose image cannot be decoded
        sink.write({"__key__": "broken", "png": b"not a png", "cls": "1"})
    run = tmp_path / "run"
    train = ["--epochs", "2", "--img-size", "16", *FAST, "--batch-size", "16", "--lr", "0.05", "--out", str(run),
             "--loader", "stream", "--workers", "2"]
    assert main(["train", str(out), *train]) == 0
    err = capsys.readouterr().err
    assert "data path: streamed from 10 tar shard(s) in sequence: each process reads its own shards" in err
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    assert [(e["path"], e["split"]) for e in report["skipped"]] == [
        (f"{out / 'train-000009.tar'}#broken.png (train-000009.tar key broken)", "train")]

    import shutil

    stopped = tmp_path / "stopped"  # stopped mid-epoch, then resumed as it was run and with other workers
    assert main(["train", str(out), *train[:-6], "--out", str(stopped), "--loader", "stream", "--workers", "2",
                 "--stop-after-steps", "4"]) == 0
    shutil.copytree(stopped, tmp_path / "other")
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "step 1" in err and "the epoch goes on exactly as it would have (1 process x 2 " \
        "readers, batch 16)" in err
    assert main(["train", "--resume", str(tmp_path / "other"), "--workers", "1", "--no-progress"]) == 0
    assert "was read by 1 process x 2 readers, batch 16 and is now read by 1 process x 1 reader, batch 16" in \
        capsys.readouterr().err


def test_shards_keep_16_bit_pictures_and_leave_out_files_that_are_no_images(tmp_path: Path, capsys):
    """A 16-bit TIFF is re-encoded as training reads it (rescaled; it used to be clipped to a white square), and a
    zero-byte or fake JPEG/PNG is named and left out rather than copied into a shard."""
    from PIL import Image

    data = tmp_path / "toy"
    write_class_folders(data, 6, seed=1)
    first = data / CLASSES[0]
    ramp = 1000 + np.arange(32 * 32).reshape(32, 32) * 60  # 16-bit values, all above 255
    Image.fromarray(ramp.astype(np.uint16)).save(first / "deep.tif")
    (first / "fake.png").write_bytes(b"not a png")
    (first / "empty.jpg").write_bytes(b"")
    out = tmp_path / "shards"
    assert main(["shards", str(data), str(out), "--shard-size", "100"]) == 1  # something was skipped
    summary = json.loads(capsys.readouterr().out)
    skipped = {Path(item["path"]).name: item["reason"] for split in summary["splits"].values()
               for item in split["skipped"]}
    assert set(skipped) == {"fake.png", "empty.jpg"}
    assert "not an image" in skipped["fake.png"] and "empty file (0 bytes)" in skipped["empty.jpg"]
    pictures = [np.asarray(Image.open(io.BytesIO(data))) for tar in out.glob("*.tar")
                for name, data in members(tar).items() if name.endswith(".png")]
    assert len(pictures) == 19 and all(np.ptp(picture) > 0 for picture in pictures)  # 18 toys and the TIFF


def test_a_small_share_of_a_shard_split_is_read_at_random_and_a_large_one_in_sequence():
    from resnetlab.data.splits import SplitData

    split = SplitData("train", np.zeros(100, dtype=np.int64), [f"s.tar#{i}.png" for i in range(100)],
                      shards={"s.tar": list(range(50)), "t.tar": list(range(50, 100))})
    held = split.subset(np.arange(100) % 10 != 0)  # a validation hold-out: the rest keeps its shards, renumbered
    assert held.shards == {"s.tar": list(range(45)), "t.tar": list(range(45, 90))}
    assert split.subset(np.arange(0, 100, 10)).shards is None  # a race's slice: read by offset
