import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yelp_lora.data.rows import iter_texts
from yelp_lora.data.sampling import balanced_indices, sample_split, stratified_indices, train_val_split
from yelp_lora.data.sources import load_split
from yelp_lora.errors import DataError


def test_real_train_and_test_files_load_balanced(data_dir):
    train = load_split(str(data_dir), "train")
    test = load_split(str(data_dir), "test")
    assert len(train) == 1999 and train.label_counts() == [400, 400, 400, 400, 399]
    assert len(test) == 1000 and test.label_counts() == [200] * 5
    assert train.row_ids[0] == "train.csv:2"  # line 1 is the header
    assert not set(train.texts) & set(test.texts)


def test_a_single_file_serves_as_any_split(data_dir):
    split = load_split(str(data_dir / "test.csv"), "train")
    assert len(split) == 1000 and split.name == "train"


def _write_formats(tmp_path, rows):
    """The same rows as headered CSV, headerless stars CSV, JSONL (label and stars) and Parquet."""
    import csv

    with open(tmp_path / "headered.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    with open(tmp_path / "yelp_original.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([(label + 1, text) for label, text in rows])
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"label": l, "text": t}) + "\n" for l, t in rows))
    (tmp_path / "stars.jsonl").write_text("".join(json.dumps({"stars": l + 1, "text": t}) + "\n" for l, t in rows))
    pq.write_table(pa.table({"label": [l for l, _ in rows], "text": [t for _, t in rows]}), tmp_path / "rows.parquet")
    return ["headered.csv", "yelp_original.csv", "rows.jsonl", "stars.jsonl", "rows.parquet"]


def test_every_format_reads_the_same_rows(tmp_path, data_dir):
    real = load_split(str(data_dir / "train.csv"), "train")
    rows = list(zip(real.labels[:30], real.texts[:30]))
    for name in _write_formats(tmp_path, rows):
        split = load_split(str(tmp_path / name), "train")
        assert list(zip(split.labels, split.texts)) == rows, name


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("label,text\n7,great food\n", "line 2: label 7 is out of range 0-4"),
        ("label,text\n2,\n", "line 2: empty text"),
        ("label,text\n2,   \n", "line 2: whitespace-only text"),
        ("label,text\npositive,nice\n", "line 2: label 'positive' is not an integer 0-4"),
        ("label,text\n1,a,b\n", "line 2: expected 2 fields, found 3"),
        ("\"6\",\"too many stars\"\n", "line 1: stars 6 is out of range 1-5"),
        ("label,review\n1,x\n", "line 1: header ['label', 'review'] has no 'text' column"),
        ("text,rating\n1,x\n", "has no 'label' (0-4) or 'stars' (1-5) column"),
        ("label,text\n1,\"never closed\n", "malformed CSV"),
        ("label,stars,text\n1,2,agrees\n4,1,disagrees\n", "line 3: label 4 and stars 1 disagree (label is stars - 1)"),
    ],
)
def test_bad_csv_rows_name_file_row_and_problem(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_split(str(path), "train")
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_undecodable_bytes_are_reported_per_row(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("label,text\n1,fine\n2,caf\xe9 ok\n".encode("latin-1"))
    with pytest.raises(DataError, match="line 3: text has bytes that are not valid UTF-8"):
        load_split(str(path), "train")


def test_unpaired_surrogates_are_reported_not_crashed_on(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"label": 1, "text": "fine"}\n{"label": 2, "text": "a\\ud800b"}\n')
    with pytest.raises(DataError, match=r"line 2: character 1 is an unpaired surrogate \('\\ud800'\)"):
        load_split(str(path), "train")


def test_skip_bad_rows_counts_and_keeps_the_good_ones(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("label,text\n1,good one\n9,bad label\n3,\n4,another good one\n4,another good one\n")
    split = load_split(str(path), "train", skip_bad_rows=True)
    assert split.texts == ["good one", "another good one"]
    assert len(split.skipped) == 2 and split.duplicates_dropped == 1
    assert "line 3" in split.skipped[0]


def test_jsonl_missing_column_and_bad_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "no label"}\n{not json}\n')
    with pytest.raises(DataError) as err:
        load_split(str(path), "train")
    message = str(err.value)
    assert "line 1: missing column 'label'" in message and "line 2: invalid JSON" in message


def test_missing_paths_and_directories_without_a_split(tmp_path):
    with pytest.raises(DataError, match="data path not found: ./nowhere.csv"):
        load_split("./nowhere.csv", "train")
    with pytest.raises(DataError, match="has no test split"):
        load_split(str(tmp_path), "test")


def test_auto_without_a_local_copy_says_where_it_looked(tmp_path, monkeypatch):
    import yelp_lora.data.sources as sources

    monkeypatch.delenv("YELP_LORA_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared beside it
    # A hub id no cache holds (yelp_review_full may be in a developer's), reached offline as 'auto' reaches its own.
    monkeypatch.setattr(sources, "DEFAULT_HUB_DATASET", "yelp-lora-tests/no-such-data-set")
    with pytest.raises(DataError) as refused:
        load_split("auto", "train")
    assert "data source 'yelp-lora-tests/no-such-data-set' is not a local file or directory" in str(refused.value)
    assert str(refused.value).endswith(
        f"a local copy is read from $YELP_LORA_DATA or ../shared/data/yelp_review_full beside the current directory ({tmp_path}), "
        "and neither is there"
    )


def test_validation_is_carved_from_train_stratified_and_seeded(data_dir):
    train = load_split(str(data_dir), "train")
    a_train, a_val = train_val_split(train, 400, 1000, seed=42)
    b_train, b_val = train_val_split(train, 400, 1000, seed=42)
    assert (len(a_train), len(a_val)) == (1000, 400)
    assert a_val.label_counts() == [80] * 5 and a_train.label_counts() == [200] * 5
    assert not set(a_train.row_ids) & set(a_val.row_ids)
    assert a_train.fingerprint() == b_train.fingerprint() and a_val.fingerprint() == b_val.fingerprint()
    c_train, _ = train_val_split(train, 400, 1000, seed=43)
    assert c_train.fingerprint() != a_train.fingerprint()
    # The validation set does not depend on how many training rows are drawn.
    _, d_val = train_val_split(train, 400, 500, seed=42)
    assert d_val.fingerprint() == a_val.fingerprint()


def test_stratified_sample_of_test(data_dir):
    test = load_split(str(data_dir), "test")
    sample = sample_split(test, 500, seed=42)
    assert len(sample) == 500 and sample.label_counts() == [100] * 5
    assert np.array_equal(stratified_indices(test.labels, 500, 42, what="test"), stratified_indices(test.labels, 500, 42, what="test"))


def test_a_sample_larger_than_its_rows_uses_them_all_and_says_so(data_dir, caplog):
    test = load_split(str(data_dir), "test")
    assert len(sample_split(test, 5000, seed=42)) == len(test) == 1000
    assert f"{test.source}: 5000 rows asked for, 1000 there: using all of them" in caplog.text
    caplog.clear()
    labels = [0] * 10 + [1] * 3
    assert len(balanced_indices(labels, 10, 0, what="few ones")) == 6
    assert "few ones: a balanced draw of 10 rows gets 6: the rarest label has 3 rows" in caplog.text
    caplog.clear()
    assert len(balanced_indices(labels, 7, 0, what="-")) == 6 and caplog.text == ""  # 3 per label is all it asks


def test_prediction_inputs(tmp_path):
    (tmp_path / "reviews.txt").write_text("first review\n\nsecond review\n")
    assert [row.text for row in iter_texts(tmp_path / "reviews.txt")] == ["first review", "second review"]
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n")
    assert list(iter_texts(tmp_path / "in.csv")) == [("line 2", "hello", None)]
    (tmp_path / "in.jsonl").write_text('{"text": "hi"}\n{"txt": 1}\n{not json\n{"text": "  "}\n')
    # A row's problem is reported with the row, for the caller's policy (stop, or write it with its error).
    assert [(row.where, row.problem) for row in iter_texts(tmp_path / "in.jsonl")] == [
        ("line 1", None),
        ("line 2", "expected an object with a 'text' field"),
        ("line 3", "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
        ("line 4", "whitespace-only text"),
    ]
    (tmp_path / "no-text.csv").write_text("id,review\n1,hello\n")
    with pytest.raises(DataError, match="cannot tell the columns"):
        list(iter_texts(tmp_path / "no-text.csv"))


def test_training_and_prediction_read_files_through_one_reader(tmp_path):
    """The same rows, in the same order, whichever stage reads the file; only a line break ends a JSONL row."""
    texts = ["fine\u2028with a line separator", "next\u0085row", "plain"]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"label": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    assert load_split(str(path), "train").texts == texts
    assert [row.text for row in iter_texts(path)] == texts


def test_a_relative_data_path_is_made_absolute_so_the_run_can_be_found_from_anywhere(data_dir, tmp_path, monkeypatch):
    from yelp_lora.data.sources import resolve_source

    (tmp_path / "reviews").symlink_to(data_dir)
    monkeypatch.chdir(tmp_path)
    assert resolve_source("reviews") == resolve_source("./reviews") == str(tmp_path / "reviews")
    monkeypatch.setenv("YELP_LORA_DATA", "reviews")
    assert resolve_source("auto") == str(tmp_path / "reviews")
    assert resolve_source("some_org/some_hub_set") == "some_org/some_hub_set"  # not a local path: a hub id


def test_training_rows_of_one_label_are_refused_and_missing_labels_named(tmp_path, caplog):
    import csv

    from support import shared_rows

    from yelp_lora.config import load_config
    from yelp_lora.data.mixing import training_rows

    def data_of(labels: set[int]) -> str:
        path = tmp_path / f"labels{''.join(map(str, sorted(labels)))}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            rows = [row for label in sorted(labels) for row in [r for r in shared_rows() if r[0] == label][:30]]
            csv.writer(handle).writerows([("label", "text"), *rows])
        return str(path)

    settings = {"data.extra_train": [], "data.val_samples": 10}
    with pytest.raises(DataError, match="are all strong_negative \\(label 0\\): a classifier needs rows of at least two labels"):
        training_rows(load_config(None, {**settings, "data.source": data_of({0})}).data, seed=0)
    training_rows(load_config(None, {**settings, "data.source": data_of({0, 4})}).data, seed=0)
    assert "hold no negative (1), neutral (2), positive (3) reviews: the adapter never sees one" in caplog.text


def test_a_text_repeated_with_another_label_is_named(tmp_path, caplog):
    path = tmp_path / "conflicts.csv"
    path.write_text("label,text\n1,same words\n3,same words\n1,same words\n2,other words\n", encoding="utf-8")
    split = load_split(str(path), "train")
    assert split.labels == [1, 3, 2] and split.duplicates_dropped == 1  # the exact repeat is dropped
    assert f"{path}: 1 row(s) repeat an earlier row's text with another label; both are kept" in caplog.text


def test_a_compressed_file_or_json_lines_named_csv_is_named_as_such(tmp_path):
    import gzip

    packed = tmp_path / "reviews.csv"
    packed.write_bytes(gzip.compress(b"label,text\n1,fine\n"))
    with pytest.raises(DataError, match=f"^{packed} is compressed \\(gzip\\): decompress it first$"):
        load_split(str(packed), "train")
    # Read as one text per line (predict --input), as JSON lines, or named for what it is.
    for name in ("reviews.txt", "reviews.jsonl", "reviews.csv.gz"):
        (tmp_path / name).write_bytes(packed.read_bytes())
        with pytest.raises(DataError, match=f"^{tmp_path / name} is compressed \\(gzip\\): decompress it first$"):
            list(iter_texts(tmp_path / name))
    lines = tmp_path / "rows.csv"
    lines.write_text('{"label": 0, "text": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"^{lines} looks like JSON lines: name it rows.jsonl$"):
        load_split(str(lines), "train")
