"""Data layouts: split folders, class folders, CSV; and the errors that name the line or folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import TOY_CLASSES, make_image, write_class_folders
from resnetlab.data.images import read_regular
from resnetlab.data.sources import DataError, open_data
from resnetlab.errors import ImageReadError


def test_split_folders_case_insensitive_and_sorted(split_folders: Path):
    source = open_data(str(split_folders))
    assert source.kind == "split folders"
    assert source.classes == sorted(TOY_CLASSES)
    assert len(source.splits["train"]) == 72 and len(source.splits["val"]) == 24
    assert source.val_name == "val"
    # labels follow the folder each file sits in
    for path, label in zip(source.splits["val"].paths, source.splits["val"].labels):
        assert Path(path).parent.name == source.classes[label]


def test_train_and_test_only_uses_test_for_validation(tmp_path: Path):
    write_class_folders(tmp_path / "train", 4)
    write_class_folders(tmp_path / "TEST", 2)
    source = open_data(str(tmp_path))
    assert source.val_name == "test"
    assert any("serves as the validation split" in n for n in source.notes)


def test_validation_alias_and_nested_images(tmp_path: Path):
    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "validation", 2)
    nested = tmp_path / "train" / "red" / "deeper" / "more"
    nested.mkdir(parents=True)
    make_image(np.random.default_rng(0), (1, 2, 3)).save(nested / "x.webp")
    (tmp_path / "train" / "red" / "notes.txt").write_text("not an image")
    source = open_data(str(tmp_path))
    assert set(source.splits) == {"train", "val"}
    assert sum(1 for p in source.splits["train"].paths if p.endswith("x.webp")) == 1
    assert not any(p.endswith(".txt") for p in source.splits["train"].paths)


def test_class_folders_stratified_split_is_reproducible(class_folders: Path):
    first = open_data(str(class_folders), val_split=0.25, seed=7)
    again = open_data(str(class_folders), val_split=0.25, seed=7)
    other = open_data(str(class_folders), val_split=0.25, seed=8)
    assert first.splits["val"].paths == again.splits["val"].paths
    assert first.splits["val"].paths != other.splits["val"].paths
    counts = np.bincount(first.splits["val"].labels)
    assert counts.tolist() == [5, 5, 5]  # 25 % of 20 per class
    assert not set(first.splits["val"].paths) & set(first.splits["train"].paths)
    from resnetlab.data.splits import select_split

    with pytest.raises(DataError, match=r"'test' is not in the data \(available: train, val\); a folder without a "
                                        r"test/ folder is split into train and val only: --split val scores"):
        select_split(first, "test")  # what `evaluate --split test` meets on class folders (the README's old line)


def test_single_class_is_an_error(tmp_path: Path):
    (tmp_path / "only").mkdir()
    make_image(np.random.default_rng(0), (1, 2, 3)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="only one class"):
        open_data(str(tmp_path))


def test_val_class_unknown_to_train_is_named(tmp_path: Path):
    write_class_folders(tmp_path / "train", 2)
    write_class_folders(tmp_path / "val", 1)
    (tmp_path / "val" / "zebra").mkdir()
    make_image(np.random.default_rng(0), (1, 2, 3)).save(tmp_path / "val" / "zebra" / "z.png")
    with pytest.raises(DataError, match="zebra"):
        open_data(str(tmp_path))


def test_unknown_name_lists_builtins(tmp_path: Path):
    with pytest.raises(DataError, match="fashion-mnist"):
        open_data(str(tmp_path / "nope"))


def test_csv_with_split_column(csv_dataset: Path):
    source = open_data(str(csv_dataset))
    assert source.kind == "csv"
    assert len(source.splits["train"]) == 48 and len(source.splits["val"]) == 12
    assert all(Path(p).is_file() for p in source.splits["train"].paths)
    assert source.splits["val"].origins[0].startswith("labels.csv line ")


def test_csv_without_split_column_is_split_for_you(tmp_path: Path, csv_dataset: Path):
    rows = list(csv.reader(open(csv_dataset, encoding="utf-8")))
    plain = csv_dataset.parent / "plain.csv"
    with open(plain, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([r[:2] for r in rows])
    source = open_data(str(plain), val_split=0.2, seed=0)
    assert len(source.splits["train"]) + len(source.splits["val"]) == 60
    assert np.bincount(source.splits["val"].labels).tolist() == [4, 4, 4]


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.png,x\n", r"line 1: missing column\(s\) path"),
        ("path,label\nimages/red_0.jpg,\n", "line 2: empty label"),
        ("path,label\nimages/red_0.jpg,red\nimages/nothere.jpg,blue sky\n", "line 3: images/nothere.jpg"),
        ("path,label,split\nimages/red_0.jpg,red,train\nimages/red_1.jpg,blue sky,train\n"
         "images/red_2.jpg,purple,val\n", "line 4: label 'purple'"),
        ("path,label,split\nimages/red_0.jpg,red,holdout\n", "line 2: split 'holdout'"),
        ("", "is empty"),
    ],
)
def test_csv_mistakes_name_the_line(csv_dataset: Path, text: str, message: str):
    bad = _write_csv(csv_dataset.parent / "bad.csv", text)
    with pytest.raises(DataError, match=message):
        open_data(str(bad))


def test_a_broken_link_is_named_as_one(tmp_path: Path):
    data = write_class_folders(tmp_path / "data", 3)
    link = data / "red" / "gone.png"
    link.symlink_to(tmp_path / "nowhere.png")
    source = open_data(str(data), val_split=0.3, seed=0)
    assert (f"warning: {link}: a broken link (to {tmp_path / 'nowhere.png'}, which does not exist), not read"
            in source.notes)
    with pytest.raises(ImageReadError) as err:
        read_regular(link)
    assert str(err.value) == f"{link}: a broken link (to {tmp_path / 'nowhere.png'}, which does not exist)"


def test_nfc_and_nfd_spellings_of_a_class_are_one_class(tmp_path: Path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"  # print alike: typed vs. as macOS stores file names
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for i, name in enumerate([nfc, nfd, "dog", "dog"]):
        (data / name).mkdir(parents=True, exist_ok=True)
        make_image(rng, (200, 40, 40)).save(data / name / f"{i}.png")
    source = open_data(str(data), val_split=0.5, seed=0)
    assert source.classes == [nfc, "dog"]
    assert source.class_counts("train")[nfc] + source.class_counts("val")[nfc] == 2
    assert (f"1 class name(s) in {data} are written in more than one Unicode form (NFC and NFD, which look alike) "
            f"and were merged into one class each: '{nfc}'") in source.notes
    rows = "".join(f"{name}/{i}.png,{name}\n" for i, name in enumerate([nfc, nfd, "dog", "dog"]))
    csv_path = _write_csv(data / "labels.csv", "path,label\n" + rows)
    source = open_data(str(csv_path), val_split=0.5, seed=0)
    assert source.classes == [nfc, "dog"]
    assert (f"1 class name(s) in {csv_path} are written in more than one Unicode form (NFC and NFD, which look "
            f"alike) and were merged into one class each: '{nfc}'") in source.notes


def test_nfc_and_nfd_spellings_of_a_label_are_one_label_in_a_multilabel_csv(tmp_path: Path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        make_image(rng, (200, 40, 40)).save(data / f"{i}.png")
    labels = [f"{nfc}|dog", nfd, f"dog|{nfd}", f"{nfc}|{nfd}", "dog", nfc]  # row 3: both spellings in one cell
    rows = "".join(f"{i}.png,{cell},{'val' if i % 3 == 0 else 'train'}\n" for i, cell in enumerate(labels))
    csv_path = _write_csv(data / "labels.csv", "path,labels,split\n" + rows)
    source = open_data(str(csv_path), val_split=0.5, seed=0)
    assert source.task == "multilabel" and source.classes == [nfc, "dog"]
    assert source.splits["val"].labels.tolist() == [[1, 1], [1, 0]]  # rows 0 and 3: café counted once in row 3
    assert (f"1 class name(s) in {csv_path} are written in more than one Unicode form (NFC and NFD, which look "
            f"alike) and were merged into one class each: '{nfc}'") in source.notes
    columns = _write_csv(data / "columns.csv", f"path,{nfc},{nfd}\n0.png,1,0\n")  # two columns, one name
    with pytest.raises(DataError, match="appear more than once .names compared in Unicode NFC"):
        open_data(str(columns))


def test_csv_saved_by_a_spreadsheet_with_semicolons_or_tabs_and_windows_paths_is_read(csv_dataset: Path):
    """A ';'-separated "CSV" (spreadsheets in many locales), a .tsv and paths written with backslashes (a CSV made on
    Windows) read as the comma-separated original does, each way named in the notes."""
    rows = list(csv.reader(open(csv_dataset, encoding="utf-8")))
    expected = open_data(str(csv_dataset))
    for name, delimiter, said in (("semi.csv", ";", "fields separated by ';'"),
                                  ("tabs.tsv", "\t", "fields separated by tabs")):
        other = csv_dataset.parent / name
        with open(other, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, delimiter=delimiter).writerows([rows[0], *[[r[0].replace("/", "\\"), *r[1:]]
                                                                           for r in rows[1:]]])
        source = open_data(str(other))
        assert {k: v.paths for k, v in source.splits.items()} == {k: v.paths for k, v in expected.splits.items()}
        assert source.classes == expected.classes and f"{name}: {said}" in " ".join(source.notes)
        assert f"{name}: read '\\' in 60 path(s) as a folder separator" in " ".join(source.notes)
    (csv_dataset.parent / "notes.txt").write_text("path,label\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"is not a .csv \(or .tsv\) file"):
        open_data(str(csv_dataset.parent / "notes.txt"))


def test_csv_columns_spelt_filename_and_class_are_read_as_path_and_label(tmp_path: Path, csv_dataset: Path):
    rows = list(csv.reader(open(csv_dataset, encoding="utf-8")))
    kaggle = csv_dataset.parent / "kaggle.csv"
    with open(kaggle, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["Filename", "Class", "split"], *rows[1:]])
    source = open_data(str(kaggle))
    assert len(source.splits["train"]) == 48 and sorted(source.classes) == sorted(TOY_CLASSES)
    assert "kaggle.csv: read column 'Filename' as path, 'Class' as label" in source.notes
    both = csv_dataset.parent / "both.csv"  # two spellings of the path: which one is meant is not guessed
    with open(both, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["image", "filename", "class"], *[[r[0], r[0], r[1]] for r in rows[1:]]])
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) path; found columns \['image', 'filename', "
                                        r"'class'\]; expected 'path,label' \(or one of filename, image"):
        open_data(str(both))
