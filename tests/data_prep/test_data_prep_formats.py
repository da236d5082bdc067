"""data_prep.manifest and data_prep.formats: from CSV rows to image rows, every row accounted."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from data_prep import formats
from data_prep.config import BuildConfig
from data_prep.manifest import ManifestError, read_manifest
from simclr_med.data import schema
from simclr_med.errors import UserError

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,"
                   + ",".join(formats.CHEXPERT_OBSERVATIONS))


def chexpert_row(path: str, view: str = "Frontal", ap_pa: str = "AP", **values: str) -> str:
    """A CheXpert CSV row; `values` maps observation names (spaces as _) to cells."""
    cells = [values.get(name.replace(" ", "_"), "") for name in formats.CHEXPERT_OBSERVATIONS]
    return ",".join([path, "Female", "68", view, ap_pa if view == "Frontal" else "", *cells])


def _write(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _config(tmp_path, fmt: str = "chexpert", **kwargs) -> BuildConfig:
    values = dict(format=fmt, manifests=(str(tmp_path / "m.csv"),), image_root=str(tmp_path),
                  output_dir=str(tmp_path / "out"))
    return BuildConfig(**{**values, **kwargs})


def _read(config: BuildConfig):
    parser = formats.make_format(config)
    return parser, read_manifest(config.manifests, parser, config.split_column)


CHEXPERT_ROWS = [
    CHEXPERT_HEADER,
    chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
                 Atelectasis="1.0", Cardiomegaly="-1.0", Edema="0.0"),
    chexpert_row("CheXpert-v1.0-small/train/patient00001/study2/view1_lateral.jpg", view="Lateral",
                 Pleural_Effusion="1"),
    chexpert_row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", ap_pa="PA",
                 Consolidation="yes"),
    chexpert_row("CheXpert-v1.0-small/train/study1/view1_frontal.jpg"),
]


@pytest.mark.parametrize("policy, cardiomegaly", [("ignore", (0.0, 0.0)), ("ones", (1.0, 1.0)),
                                                  ("zeros", (0.0, 1.0))])
def test_chexpert_labels_views_and_uncertainty(tmp_path, policy, cardiomegaly):
    _write(tmp_path / "m.csv", CHEXPERT_ROWS)
    parser, parsed = _read(_config(tmp_path, uncertainty=policy))
    assert parser.task == schema.MULTILABEL and parser.names == formats.CHEXPERT_COMPETITION
    first, second = parsed.rows
    # Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion; blank = negative
    assert first.labels == (1.0, cardiomegaly[0], 0.0, 0.0, 0.0)
    assert first.label_mask == (1.0, cardiomegaly[1], 1.0, 1.0, 1.0)
    assert first.view == "frontal_lateral=Frontal;ap_pa=AP"
    assert second.view == "frontal_lateral=Lateral"
    assert second.labels == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert (first.patient_id, first.case_id) == ("patient00001", "patient00001")
    assert parsed.rows_in == 4
    assert [(s.reason, s.ref) for s in parsed.skips] == [("bad_label", "m.csv:4"),
                                                         ("missing_value", "m.csv:5")]


def test_chexpert_case_by_study_and_all_labels(tmp_path):
    _write(tmp_path / "m.csv", CHEXPERT_ROWS[:3])
    parser, parsed = _read(_config(tmp_path, case_key="study", labels="all"))
    assert len(parser.names) == 14
    assert [row.case_id for row in parsed.rows] == ["patient00001/study1", "patient00001/study2"]
    with pytest.raises(UserError, match="unknown label"):
        formats.make_format(_config(tmp_path, labels="Atelectasis,Nothing"))


def test_chexpert_study_cases_keep_each_patient_in_one_split(tmp_path):
    """--case_key=study: one case per study, but the patient is the patient folder, so all of a
    patient's studies land in one split, and in or out of each label fraction together."""
    import collections

    import numpy as np
    from PIL import Image

    from data_prep.build import build_dataset
    from simclr_med.data.reader import open_build, read_cases

    rng = np.random.default_rng(0)
    lines, studies = [CHEXPERT_HEADER], collections.defaultdict(set)
    for patient in range(1, 41):
        for study in range(1, rng.integers(3, 6)):  # 2-4 studies
            for view in ("frontal", "lateral")[:rng.integers(1, 3)]:
                path = (f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/"
                        f"view1_{view}.jpg")
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / path)
                lines.append(chexpert_row(path, view=view.title(),
                                          Edema=("1.0", "0.0", "-1.0", "")[rng.integers(4)]))
                studies[f"patient{patient:05d}"].add(f"patient{patient:05d}/study{study}")
    _write(tmp_path / "m.csv", lines)
    build_dataset(_config(tmp_path, case_key="study", val_fraction=0.2, test_fraction=0.3,
                          num_workers=1, progress=False))
    source = open_build(str(tmp_path / "out"))
    splits, found, ranks = collections.defaultdict(set), collections.defaultdict(set), {}
    for split in ("train", "validation", "test"):
        for case in read_cases(source, split):
            case_id = case["case_id"].numpy().decode()
            folders = {"/".join(i.decode().split("/")[2:4]) for i in case["image_id"].numpy()}
            assert folders == {case_id}, case_id
            patient = case_id.split("/")[0]  # the patient folder, whatever the record says
            assert case["patient_id"].numpy().decode() == patient, case_id
            splits[patient].add(split)
            found[patient].add(case_id)
            assert ranks.setdefault(patient, float(case["label_fraction_rank"])) == float(
                case["label_fraction_rank"]), patient
    assert found == studies  # every study is a case of its patient
    assert all(len(names) == 1 for names in splits.values()), {
        patient: names for patient, names in splits.items() if len(names) > 1}
    assert {name for names in splits.values() for name in names} == {"train", "validation",
                                                                      "test"}


def test_missing_columns_are_named(tmp_path):
    _write(tmp_path / "m.csv", ["Path,Sex,Frontal/Lateral,Edema", "a,b,c,d"])
    with pytest.raises(ManifestError, match=r"m.csv: missing column\(s\) 'AP/PA', 'Atelectasis'"):
        _read(_config(tmp_path))
    _write(tmp_path / "m.csv", [])
    with pytest.raises(ManifestError, match="empty file"):
        _read(_config(tmp_path))
    with pytest.raises(ManifestError, match="not found"):
        _read(_config(tmp_path / "nowhere"))


NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"


def test_nih_findings_views_and_official_folders(tmp_path):
    folder = tmp_path / "images_002" / "images"
    folder.mkdir(parents=True)
    (folder / "00000001_000.png").write_bytes(b"")
    lines = [NIH_HEADER, "00000001_000.png,Cardiomegaly|Effusion,0,1,57,M,PA",
             "00000001_001.png,No Finding,1,1,58,M,AP",
             "00000002_000.png,Cardiomegaly|Flu,0,2,80,F,PA",
             "00000003_000.png,Hernia,0,,80,F,PA"]
    with gzip.open(tmp_path / "m.csv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    config = BuildConfig(format="nih", manifests=(str(tmp_path / "m.csv.gz"),),
                         image_root=str(tmp_path), output_dir=str(tmp_path / "out"))
    parser, parsed = _read(config)
    assert len(parser.names) == 14
    first, second = parsed.rows
    assert first.path == "images_002/images/00000001_000.png"
    assert second.path == "00000001_001.png"  # not present: found missing later
    positives = [name for name, value in zip(parser.names, first.labels) if value]
    assert positives == ["Cardiomegaly", "Effusion"] and not any(second.labels)
    assert (first.view, first.patient_id, first.case_id) == ("view_position=PA", "1", "1")
    assert [s.reason for s in parsed.skips] == ["bad_label", "missing_value"]


def test_ham10000_classes_and_unlabelled(tmp_path):
    (tmp_path / "HAM10000_images_part_2").mkdir()
    (tmp_path / "HAM10000_images_part_2" / "ISIC_1.jpg").write_bytes(b"")
    _write(tmp_path / "m.csv", ["lesion_id,image_id,dx,dx_type,age,sex,localization",
                                "HAM_1,ISIC_1,mel,histo,80,male,back",
                                "HAM_1,ISIC_2,,histo,80,male,back",
                                "HAM_2,ISIC_3,melanoma,histo,80,male,back"])
    parser, parsed = _read(_config(tmp_path, "ham10000"))
    assert parser.task == schema.MULTICLASS and parser.names == formats.HAM10000_CLASSES
    assert [(r.path, r.case_id, r.class_id) for r in parsed.rows] == [
        ("HAM10000_images_part_2/ISIC_1.jpg", "HAM_1", 4), ("ISIC_2.jpg", "HAM_1", -1)]
    assert [s.reason for s in parsed.skips] == ["bad_label"]


GENERIC = ["file,study,subject,grade,a,b,position,official",
           "x/1.png,s1,u1,mild,1,0,AP,train",
           "x/2.png,s1,u1,severe,-1,,PA,Train",
           "x/3.png,s2,u2,none,0,1,,valid",
           "x/4.png,s3,u3,mild,1,1,PA,holdout",
           "x/5.png,s3,u3,mild,1",
           "x/6.png,s4,u4,mild,2,0,PA,test"]
GENERIC_COLUMNS = dict(image_column="file", case_column="study", patient_column="subject",
                       view_columns=("position",))


def test_generic_multiclass_sorted_or_given_classes(tmp_path):
    _write(tmp_path / "m.csv", GENERIC)
    parser, parsed = _read(_config(tmp_path, "generic", label_column="grade", **GENERIC_COLUMNS))
    assert parser.names == ("mild", "none", "severe")
    assert [r.class_id for r in parsed.rows] == [0, 2, 1, 0, 0]
    assert [s.reason for s in parsed.skips] == ["malformed_row"]
    assert parsed.rows[0].view == "position=AP" and parsed.rows[2].view == ""
    parser, parsed = _read(_config(tmp_path, "generic", label_column="grade",
                                   classes=("none", "mild"), **GENERIC_COLUMNS))
    assert [r.class_id for r in parsed.rows] == [1, 0, 1, 1]
    assert [s.reason for s in parsed.skips] == ["bad_label", "malformed_row"]


def test_generic_multilabel_blank_is_masked_and_split_column(tmp_path):
    _write(tmp_path / "m.csv", GENERIC)
    parser, parsed = _read(_config(tmp_path, "generic", label_columns=("a", "b"),
                                   split_column="official", uncertainty="ones", **GENERIC_COLUMNS))
    assert parser.task == schema.MULTILABEL and parser.names == ("a", "b")
    assert [(r.labels, r.label_mask, r.split) for r in parsed.rows] == [
        ((1.0, 0.0), (1.0, 1.0), "train"), ((1.0, 0.0), (1.0, 0.0), "train"),
        ((0.0, 1.0), (1.0, 1.0), "validation")]
    assert [(s.reason, s.ref) for s in parsed.skips] == [
        ("bad_split", "m.csv:5"), ("malformed_row", "m.csv:6"), ("bad_label", "m.csv:7")]
    assert parsed.rows_in == len(parsed.rows) + len(parsed.skips) == 6


def test_generic_config_errors(tmp_path):
    with pytest.raises(ValueError, match="case_column"):
        _config(tmp_path, "generic", label_column="grade")
    with pytest.raises(ValueError, match="exactly one"):
        _config(tmp_path, "generic", case_column="study")
    _write(tmp_path / "m.csv", ["file,study,grade", "a.png,s,"])
    with pytest.raises(ManifestError, match="has no values"):
        _read(_config(tmp_path, "generic", image_column="file", case_column="study",
                      label_column="grade"))


def test_view_strings_are_safe():
    assert formats.view_string([("a b", "x;y=z"), ("c", " "), ("d", "e")]) == "a_b=x_y_z;d=e"


@pytest.mark.subprocess
def test_chexpert_from_the_command_line_matches_the_library(tmp_path):
    """The CLI on a CheXpert-layout folder of JPEGs; a second process gives the same bytes."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from data_prep.build import build_dataset

    rng = np.random.default_rng(0)
    lines = [CHEXPERT_HEADER]
    for patient in range(1, 9):
        for study in range(1, 3):
            for view in ("frontal", "lateral"):
                path = (f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/"
                        f"view1_{view}.jpg")
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(tmp_path / path)
                lines.append(chexpert_row(path, view=view.title(), Edema=str(patient % 3 - 1)))
    _write(tmp_path / "m.csv", lines)
    command = [sys.executable, "-m", "data_prep.build", "--format=chexpert",
               f"--manifest={tmp_path / 'm.csv'}", f"--image_root={tmp_path}",
               f"--output_dir={tmp_path / 'cli'}", "--case_key=study", "--num_workers=2",
               "--uncertainty=ones", "--noprogress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    assert "32 manifest rows: 32 images written, 0 skipped" in result.stdout
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert sum(split["cases"] for split in report["splits"].values()) == 16
    build_dataset(_config(tmp_path, case_key="study", uncertainty="ones", num_workers=1,
                          progress=False, output_dir=str(tmp_path / "library")))
    outputs = sorted((tmp_path / "cli").glob("*.tfrecord")) + [tmp_path / "cli" / "dataset_info.json"]
    for output in outputs:
        assert output.read_bytes() == (tmp_path / "library" / output.name).read_bytes(), output.name

