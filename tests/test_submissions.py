"""Submission files (pipeline/ensemble/submissions.py): the sample submission's format, the checks on a finished
submission, and the writer whose manifest keeps it from ever replacing a file the user made or edited.

Every test states exact values (ids, labels, probabilities, messages, bytes on disk, the manifest's content), so that
a changed operator, constant or message in the module fails at least one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core import io
from pipeline.data import Competition
from pipeline.ensemble.submissions import SubmissionError, SubmissionWriter, check_submission, submission_frame
from pipeline.store import StoreError
from pipeline.task.metrics import get_metric
from pipeline.task.tasks import Targets

CLASSES = ["cat", "dog", "owl"]
# rows in the order of SAMPLE_IDS; each row's largest probability picks a different class
PROBABILITIES = np.array(
    [
        [0.1, 0.2, 0.7],  # owl
        [0.6, 0.3, 0.1],  # cat
        [0.25, 0.5, 0.25],  # dog
        [0.2, 0.1, 0.7],  # owl
    ]
)
SAMPLE_IDS = ["img_9", "img_2", "img_5", "img_1"]  # not sorted: the sample's order must be kept
REFUSAL_TAIL = ": move it elsewhere, or pass FORCE=1 to replace it"


def exactly(message: str) -> str:
    """A ``match=`` pattern for the whole of ``message``."""
    return f"^{re.escape(message)}$"


# -- submission_frame -----------------------------------------------------------------------


def hand_made_competition(task: str, targets: Targets, sample: pd.DataFrame) -> Competition:
    """A competition with no images: submission_frame reads only its columns, task and targets."""
    return Competition(
        train=pd.DataFrame({"id": [], "label": []}),
        sample_submission=sample,
        targets=targets,
        train_paths=[],
        test_paths=[],
        id_column="id",
        target_column="label",
        task=task,
    )


def multiclass_competition(sample: pd.DataFrame) -> Competition:
    return hand_made_competition("multiclass", Targets(np.array([0, 1, 2]), list(CLASSES), list(CLASSES)), sample)


def binary_competition(sample: pd.DataFrame) -> Competition:
    # binary targets: columns [positive], labels [negative, positive]
    return hand_made_competition("binary", Targets(np.array([0, 1]), ["yes"], ["no", "yes"]), sample)


def label_sample() -> pd.DataFrame:
    return pd.DataFrame({"id": SAMPLE_IDS, "label": ["cat"] * len(SAMPLE_IDS)})


def test_label_sample_gets_the_argmax_class_names_in_the_sample_order():
    sample = label_sample()
    out = submission_frame(sample, multiclass_competition(sample), get_metric("accuracy"), PROBABILITIES)
    assert list(out.columns) == ["id", "label"]
    assert out["id"].tolist() == SAMPLE_IDS
    assert out["label"].tolist() == ["owl", "cat", "dog", "owl"]


def test_probability_sample_gets_each_class_probability_in_the_sample_column_order():
    # the sample's class columns in another order than train.csv's classes
    sample = pd.DataFrame({"id": SAMPLE_IDS, "owl": 0.0, "cat": 0.0, "dog": 0.0})
    out = submission_frame(sample, multiclass_competition(sample), get_metric("log_loss"), PROBABILITIES)
    assert list(out.columns) == ["id", "owl", "cat", "dog"]
    assert out["id"].tolist() == SAMPLE_IDS
    for k, name in enumerate(CLASSES):
        np.testing.assert_allclose(out[name].to_numpy(dtype=float), PROBABILITIES[:, k], rtol=0, atol=1e-12)


def test_binary_label_metric_labels_the_decided_prediction_not_the_raw_one():
    sample = label_sample()
    probability = np.array([0.6, 0.4, 0.7, 0.1])
    decided = np.array([0.2, 0.9, 0.7, 0.5])  # a tuned threshold moved rows 0, 1 and 3 across 0.5
    competition = binary_competition(sample)
    accuracy = get_metric("accuracy")
    assert submission_frame(sample, competition, accuracy, probability, decided)["label"].tolist() == [
        "no",
        "yes",
        "yes",
        "yes",
    ]
    # without a decided array the raw probabilities are labelled
    assert submission_frame(sample, competition, accuracy, probability)["label"].tolist() == ["yes", "no", "yes", "no"]


def test_binary_probability_metric_writes_the_positive_probability():
    sample = label_sample()
    probability = np.array([0.6, 0.4, 0.7, 0.1])
    out = submission_frame(
        sample, binary_competition(sample), get_metric("roc_auc"), probability, decided=np.array([0.0, 1.0, 0.0, 1.0])
    )
    assert out["id"].tolist() == SAMPLE_IDS
    np.testing.assert_allclose(out["label"].to_numpy(dtype=float), probability, rtol=0, atol=1e-12)


def test_binary_two_column_sample_gets_both_class_probabilities():
    sample = pd.DataFrame({"id": SAMPLE_IDS, "yes": 0.5, "no": 0.5})
    probability = np.array([0.6, 0.4, 0.7, 0.1])
    out = submission_frame(sample, binary_competition(sample), get_metric("roc_auc"), probability)
    assert list(out.columns) == ["id", "yes", "no"]
    np.testing.assert_allclose(out["yes"].to_numpy(dtype=float), probability, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["no"].to_numpy(dtype=float), 1.0 - probability, rtol=0, atol=1e-12)


def test_regression_sample_gets_the_predicted_values():
    sample = pd.DataFrame({"id": [3, 1, 2], "label": 0.0})
    targets = Targets(np.array([1.5, 2.5]), ["label"], [], value_range=(1.5, 2.5))
    competition = hand_made_competition("regression", targets, sample)
    out = submission_frame(sample, competition, get_metric("rmse"), np.array([[1.25], [-3.5], [7.0]]))
    assert out["id"].tolist() == [3, 1, 2]
    np.testing.assert_allclose(out["label"].to_numpy(dtype=float), [1.25, -3.5, 7.0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "columns, message",
    [
        (["id", "prediction"], "sample submission columns ['id', 'prediction'] fit none of the formats for this task"),
        (["id", "cat", "dog", "emu"], "column(s) ['emu'] not a class of train.csv; no column for class(es) ['owl']"),
        (["label", "id"], "sample submission's first column must be the id column 'id'; got ['label', 'id']"),
    ],
    ids=["unknown column", "other classes", "id not first"],
)
def test_sample_that_fits_no_format_raises_submission_error(columns, message):
    sample = pd.DataFrame({column: ["x"] * len(SAMPLE_IDS) for column in columns})
    with pytest.raises(SubmissionError, match=re.escape(message)) as caught:
        submission_frame(sample, multiclass_competition(sample), get_metric("log_loss"), PROBABILITIES)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_submission_frame_checks_its_result():
    # a NaN prediction makes a submission that check_submission refuses
    sample = pd.DataFrame({"id": SAMPLE_IDS, "cat": 0.0, "dog": 0.0, "owl": 0.0})
    broken = PROBABILITIES.copy()
    broken[2, 1] = np.nan
    with pytest.raises(SubmissionError, match=exactly("submission has NaN values")):
        submission_frame(sample, multiclass_competition(sample), get_metric("log_loss"), broken)


# -- check_submission -----------------------------------------------------------------------


def probability_table(ids=(1, 2, 3, 4), a=(0.1, 0.2, 0.3, 0.4), b=(0.9, 0.8, 0.7, 0.6)) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "a": list(a), "b": list(b)})


IDS_DIFFER = "submission ids differ from the sample submission's ids or order"


@pytest.mark.parametrize(
    "submission, message",
    [
        (
            pd.DataFrame({"id": [1, 2, 3, 4], "a": 0.5, "c": 0.5}),
            "submission columns ['id', 'a', 'c'] != sample's ['id', 'a', 'b']",
        ),
        (probability_table()[["id", "b", "a"]], "submission columns ['id', 'b', 'a'] != sample's ['id', 'a', 'b']"),
        (probability_table().iloc[:3], IDS_DIFFER),
        (probability_table(ids=(1, 2, 4, 3)), IDS_DIFFER),  # two ids in place, two swapped
        (probability_table(ids=(1, 2, 3, 5)), IDS_DIFFER),
        (probability_table(a=(0.1, np.nan, 0.3, 0.4)), "submission has NaN values"),
        (pd.DataFrame({"id": [1, 2, 3, 4], "a": ["x", "y", None, "x"], "b": 0.5}), "submission has NaN values"),
        (probability_table(b=(0.9, 0.8, np.inf, 0.6)), "submission has inf values"),
        (probability_table(a=(0.1, 0.2, 0.3, -np.inf)), "submission has inf values"),
    ],
    ids=[
        "other columns",
        "column order",
        "fewer rows",
        "ids reordered",
        "ids differ",
        "NaN",
        "NaN label",
        "inf",
        "-inf",
    ],
)
def test_check_submission_refuses(submission, message):
    with pytest.raises(SubmissionError, match=exactly(message)):
        check_submission(submission, probability_table(), "id")


def test_check_submission_passes_a_matching_numeric_submission():
    assert check_submission(probability_table(a=(0.0, 1.0, 0.5, 0.25)), probability_table(), "id") is None


def test_check_submission_passes_string_labels():
    labels = pd.DataFrame({"id": [1, 2, 3], "label": ["owl", "cat", "dog"]})
    assert check_submission(labels, pd.DataFrame({"id": [1, 2, 3], "label": ["cat"] * 3}), "id") is None


def test_check_submission_compares_ids_as_strings():
    as_strings = probability_table(ids=("1", "2", "3", "4"))
    assert check_submission(as_strings, probability_table(), "id") is None
    assert check_submission(probability_table(), as_strings, "id") is None


# -- SubmissionWriter -----------------------------------------------------------------------


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / ".written.json").read_text())


def frame(value: float) -> pd.DataFrame:
    return pd.DataFrame({"id": ["a", "b"], "label": [value, value + 1]})


def refusal(*reasons: str) -> str:
    return "; ".join(reasons) + REFUSAL_TAIL


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Not made yet: the writer creates it (and its parent)."""
    return tmp_path / "submissions" / "comp"


def test_write_creates_the_folder_writes_the_csv_and_records_its_hash(folder):
    writer = SubmissionWriter(folder)
    path = writer.write("mean.csv", frame(0.25))
    assert path == folder / "mean.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path), frame(0.25))
    assert manifest_of(folder) == {"mean.csv": io.file_sha256(path)}
    assert writer.written == ["mean.csv"]
    assert sorted(p.name for p in folder.iterdir()) == [".written.json", "mean.csv"]


def test_written_lists_names_in_write_order(folder):
    writer = SubmissionWriter(folder)
    for name in ["z.csv", "a.csv", "m.csv"]:
        writer.write(name, frame(1.0))
    assert writer.written == ["z.csv", "a.csv", "m.csv"]
    assert list(manifest_of(folder)) == ["a.csv", "m.csv", "z.csv"]  # the manifest file is sorted


def test_rewrites_its_own_unchanged_file(folder):
    SubmissionWriter(folder).write("mean.csv", frame(0.25))
    path = SubmissionWriter(folder).write("mean.csv", frame(7.5))
    pd.testing.assert_frame_equal(pd.read_csv(path), frame(7.5))
    assert manifest_of(folder) == {"mean.csv": io.file_sha256(path)}


def test_refuses_a_users_file_of_the_same_name_and_leaves_it_unchanged(folder):
    folder.mkdir(parents=True)
    user_file = folder / "mean.csv"
    user_file.write_bytes(b"my own,file\n1,2\n")
    with pytest.raises(StoreError, match="FORCE=1") as caught:
        SubmissionWriter(folder).write("mean.csv", frame(0.25))
    assert str(caught.value) == refusal(f"{user_file} exists and was not written by the pipeline")
    assert user_file.read_bytes() == b"my own,file\n1,2\n"
    assert sorted(p.name for p in folder.iterdir()) == ["mean.csv"]  # no manifest, no temporary file


def test_refuses_a_file_of_ours_the_user_edited(folder):
    path = SubmissionWriter(folder).write("mean.csv", frame(0.25))
    recorded = manifest_of(folder)
    path.write_bytes(b"edited\n")
    with pytest.raises(StoreError, match="changed since") as caught:
        SubmissionWriter(folder).write("mean.csv", frame(0.5))
    assert str(caught.value) == refusal(f"{path} changed since the pipeline wrote it")
    assert path.read_bytes() == b"edited\n"
    assert manifest_of(folder) == recorded


def test_force_replaces_a_users_file_and_an_edited_one(folder):
    SubmissionWriter(folder).write("ours.csv", frame(0.25))
    (folder / "ours.csv").write_bytes(b"edited\n")
    (folder / "mine.csv").write_bytes(b"user's\n")
    writer = SubmissionWriter(folder, force=True)
    writer.check(["ours.csv", "mine.csv"])
    for name in ["ours.csv", "mine.csv"]:
        path = writer.write(name, frame(2.0))
        pd.testing.assert_frame_equal(pd.read_csv(path), frame(2.0))
    assert manifest_of(folder) == {name: io.file_sha256(folder / name) for name in ["mine.csv", "ours.csv"]}


def test_a_pending_name_is_replaceable_whatever_its_content(folder):
    folder.mkdir(parents=True)
    (folder / "mean.csv").write_bytes(b"half of a killed run's file")
    (folder / ".written.json").write_text(json.dumps({"mean.csv": "pending"}))
    path = SubmissionWriter(folder).write("mean.csv", frame(0.25))
    pd.testing.assert_frame_equal(pd.read_csv(path), frame(0.25))
    assert manifest_of(folder) == {"mean.csv": io.file_sha256(path)}


def test_the_name_is_pending_in_the_manifest_while_its_file_is_written(folder):
    seen = []

    def write_and_look(tmp: Path) -> None:
        seen.append(manifest_of(folder))
        tmp.write_text("id,label\na,1\n")

    SubmissionWriter(folder).write("first.csv", frame(0.0))
    writer = SubmissionWriter(folder)
    path = writer.write_with("second.csv", write_and_look)
    assert seen == [{"first.csv": io.file_sha256(folder / "first.csv"), "second.csv": "pending"}]
    assert path.read_text() == "id,label\na,1\n"
    assert manifest_of(folder)["second.csv"] == io.file_sha256(path)


def test_a_writer_killed_mid_write_leaves_a_pending_name_the_next_run_replaces(folder):
    def crash(tmp: Path) -> None:
        tmp.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SubmissionWriter(folder).write_with("mean.csv", crash)
    assert manifest_of(folder) == {"mean.csv": "pending"}
    assert not (folder / "mean.csv").exists()
    (folder / "mean.csv").write_text("the rename happened, the hash was never recorded")
    path = SubmissionWriter(folder).write("mean.csv", frame(3.0))
    assert manifest_of(folder) == {"mean.csv": io.file_sha256(path)}


def test_the_first_manifest_format_lists_names_without_hashes(folder):
    folder.mkdir(parents=True)
    (folder / "mean.csv").write_bytes(b"written by an old version")
    (folder / ".written.json").write_text(json.dumps(["mean.csv", 7]))
    writer = SubmissionWriter(folder)
    assert writer.manifest == {"mean.csv": None, "7": None}
    path = writer.write("mean.csv", frame(0.25))
    pd.testing.assert_frame_equal(pd.read_csv(path), frame(0.25))
    assert manifest_of(folder) == {"7": None, "mean.csv": io.file_sha256(path)}


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00"], ids=["not JSON", "not text"])
def test_a_damaged_manifest_stops_the_writer(folder, content):
    folder.mkdir(parents=True)
    manifest = folder / ".written.json"
    manifest.write_bytes(content)
    with pytest.raises(StoreError, match="damaged") as caught:
        SubmissionWriter(folder)
    message = str(caught.value)
    assert message.startswith(f"{manifest} is damaged (")
    assert message.endswith("); check the folder's files by hand, then delete it or pass FORCE=1")
    assert manifest.read_bytes() == content


def test_a_manifest_that_is_neither_list_nor_dict_stops_the_writer(folder):
    folder.mkdir(parents=True)
    manifest = folder / ".written.json"
    manifest.write_text("42")
    with pytest.raises(StoreError, match="not a manifest") as caught:
        SubmissionWriter(folder)
    assert str(caught.value) == f"{manifest} is not a manifest; delete it or pass FORCE=1"


def test_check_names_every_problem_file_at_once_and_writes_nothing(folder):
    SubmissionWriter(folder).write("edited.csv", frame(0.25))
    (folder / "edited.csv").write_bytes(b"edited\n")
    (folder / "a.csv").write_bytes(b"user a\n")
    (folder / "b.csv").write_bytes(b"user b\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    writer = SubmissionWriter(folder)
    with pytest.raises(StoreError) as caught:
        writer.check(["a.csv", "new.csv", "edited.csv", "b.csv"])
    assert str(caught.value) == refusal(
        f"{folder / 'a.csv'} exists and was not written by the pipeline",
        f"{folder / 'edited.csv'} changed since the pipeline wrote it",
        f"{folder / 'b.csv'} exists and was not written by the pipeline",
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert writer.written == []


def test_check_passes_names_that_are_free_or_ours(folder):
    SubmissionWriter(folder).write("ours.csv", frame(0.25))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert SubmissionWriter(folder).check(["ours.csv", "new.csv"]) is None
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def earlier_run(folder: Path) -> None:
    """An earlier run's files, one of them since edited, one deleted, plus the user's own files and a dead writer's
    temporary file."""
    writer = SubmissionWriter(folder)
    for name in ["old_cv0.81.csv", "edited_cv0.80.csv", "deleted.csv", "kept.csv"]:
        writer.write(name, frame(0.5))
    writer.finish()
    (folder / "edited_cv0.80.csv").write_bytes(b"the user's notes\n")
    (folder / "deleted.csv").unlink()
    (folder / "mine.csv").write_bytes(b"user's\n")
    (folder / ".hidden").write_bytes(b"user's dotfile\n")
    (folder / "notes.tmp").write_bytes(b"user's tmp without a dot\n")
    (folder / ".old_cv0.81.csv.k3j2x9.tmp").write_bytes(b"half written")


def test_finish_leaves_this_run_only(folder):
    earlier_run(folder)
    writer = SubmissionWriter(folder)
    # out of order, so that the manifest's sorting shows
    for name in ["z_new.csv", "kept.csv", "a_new.csv"]:
        writer.write(name, frame(1.5))
    writer.finish()
    assert sorted(p.name for p in folder.iterdir()) == [
        ".hidden",
        ".written.json",
        "a_new.csv",
        "edited_cv0.80.csv",
        "kept.csv",
        "mine.csv",
        "notes.tmp",
        "z_new.csv",
    ]
    assert (folder / "edited_cv0.80.csv").read_bytes() == b"the user's notes\n"
    assert (folder / "mine.csv").read_bytes() == b"user's\n"
    assert (folder / ".hidden").read_bytes() == b"user's dotfile\n"
    manifest = manifest_of(folder)
    assert list(manifest) == ["a_new.csv", "kept.csv", "z_new.csv"]
    assert manifest == {name: io.file_sha256(folder / name) for name in ["a_new.csv", "kept.csv", "z_new.csv"]}
    for name in ["z_new.csv", "kept.csv", "a_new.csv"]:
        pd.testing.assert_frame_equal(pd.read_csv(folder / name), frame(1.5))
    assert writer.written == ["z_new.csv", "kept.csv", "a_new.csv"]


def test_finish_with_force_also_removes_an_edited_earlier_file(folder):
    earlier_run(folder)
    writer = SubmissionWriter(folder, force=True)
    writer.write("new.csv", frame(1.5))
    writer.finish()
    assert sorted(p.name for p in folder.iterdir()) == [".hidden", ".written.json", "mine.csv", "new.csv", "notes.tmp"]
    assert manifest_of(folder) == {"new.csv": io.file_sha256(folder / "new.csv")}


def test_finish_of_a_run_that_wrote_nothing_empties_the_manifest(folder):
    earlier_run(folder)
    SubmissionWriter(folder).finish()
    assert sorted(p.name for p in folder.iterdir()) == [
        ".hidden",
        ".written.json",
        "edited_cv0.80.csv",
        "mine.csv",
        "notes.tmp",
    ]
    assert manifest_of(folder) == {}
