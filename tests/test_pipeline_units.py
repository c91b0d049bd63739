"""The pipeline step's parts, without a PACS: series rules, output identity, retry, outbox, URLs, command.

What needs a real PACS (storing, de-duplication, outages, refusals) is in
``tests/pipeline_orthanc_scenarios.py``, run by ``tests/test_pipeline_orthanc.py``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import socket
import sys
import time
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).parent))
from _fake_pacs import object_with_identity  # noqa: E402

from medcam_monai.bundle import BUNDLES_DIR
from medcam_monai.pipeline import (
    PASSWORD_ENV,
    DicomWebPacs,
    DimsePacs,
    NoMatchingSeriesError,
    Outbox,
    PacsAuthError,
    PacsRejectedError,
    PacsUnavailableError,
    RetryPolicy,
    SeriesRules,
    StudyInputError,
    add_pipeline_parser,
    build_pipeline_parser,
    group_series,
    output_identity,
    parse_override,
    parse_pacs_url,
    rules_for_bundle,
    run_pipeline,
    select_series,
    studies_from_folder,
    volume_problem,
)
from medcam_monai.bundle import root_cause as _root_cause
from medcam_monai.pipeline.identity import DEFAULT_UID_ROOT

torch.set_num_threads(1)

CT5N = Path(get_testdata_file("dicomdirtests/98892001/CT5N"))
SCOUT = CT5N.parent / "CT2N"
OTHER_PATIENT = CT5N.parents[1] / "77654033"  # brain CT (irregular gaps) + CR study
CT_RULES = SeriesRules(modality=("CT",), exclude_series_description="localizer")


def headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]


def one_series(folder: Path):
    (series,) = next(iter(group_series(headers(folder)).values()))
    return series


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


# -- series rules ---------------------------------------------------------------------------------------
def test_rules_validate_with_precise_messages():
    with pytest.raises(ValueError, match="modality is empty"):
        SeriesRules(modality=())
    with pytest.raises(ValueError, match=r"series_description is not a valid regular expression"):
        SeriesRules(modality="CT", series_description="([")
    with pytest.raises(ValueError, match="min_slices must be an integer >= 2"):
        SeriesRules(modality="CT", min_slices=1)
    with pytest.raises(ValueError, match=r"Unknown series_selection key\(s\) \['modalities'\] in x.json"):
        SeriesRules.from_dict({"modalities": ["CT"]}, source="x.json")
    with pytest.raises(ValueError, match="needs \"modality\""):
        SeriesRules.from_dict({"body_part": "ABDOMEN"})
    assert SeriesRules.from_dict({"modality": "ct", "body_part": ["abdomen"]}).modality == ("CT",)


def test_rules_come_from_the_bundle_config(tmp_path):
    rules = rules_for_bundle(BUNDLES_DIR / "kidney_ct_unet3d")
    if "series_selection" not in json.loads((BUNDLES_DIR / "kidney_ct_unet3d/configs/inference.json").read_text()):
        assert rules.modality == ("CT",) and "network_data_format" in rules.source
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text(json.dumps({"series_selection": {"modality": ["MR"], "min_slices": 10}}))
    rules = rules_for_bundle(bundle)
    assert rules.modality == ("MR",) and rules.min_slices == 10 and rules.source.endswith("inference.json")
    (bundle / "configs" / "inference.json").write_text("{}")
    with pytest.raises(ValueError, match="does not say which series it accepts"):
        rules_for_bundle(bundle)


def test_selection_takes_the_ct_volume_and_says_why_not_the_others():
    study = group_series(headers(CT5N) + headers(SCOUT))
    (series,) = study.values()
    assert [s.description for s in select_series(series, CT_RULES)] == ["SmartScore - Gated 0.5 sec"]
    with pytest.raises(NoMatchingSeriesError) as e:
        select_series(series, SeriesRules(modality="CT", series_description="kidney|renal"))
    assert "'SmartScore - Gated 0.5 sec' does not match /kidney|renal/" in str(e.value)
    assert "'Scout' does not match" in str(e.value) and len(e.value.rejected) == 2
    with pytest.raises(NoMatchingSeriesError, match="Scout.*matches the rules but is not a volume: it has 2 slice"):
        select_series([s for s in series if s.description == "Scout"], CT_RULES)
    with pytest.raises(NoMatchingSeriesError, match=r"matches the exclusion /scout\|smartscore/"):
        select_series(series, SeriesRules(modality="CT", exclude_series_description="scout|smartscore"))


def test_body_part_rule():
    studies = studies_from_folder(OTHER_PATIENT)
    brain = next(s for st in studies for s in st.series if s.modality == "CT")
    assert brain.body_part == "HEAD"
    with pytest.raises(NoMatchingSeriesError, match="body part HEAD is not one of \\['ABDOMEN'\\]"):
        select_series([brain], SeriesRules(modality="CT", body_part=["abdomen"]))
    ct = one_series(CT5N)  # no BodyPartExamined
    assert select_series([ct], SeriesRules(modality="CT", body_part=["ABDOMEN"])) == [ct]
    with pytest.raises(NoMatchingSeriesError, match="no BodyPartExamined"):
        select_series([ct], SeriesRules(modality="CT", body_part=["ABDOMEN"], allow_missing_body_part=False))


def test_not_a_volume_reasons():
    ct = one_series(CT5N)
    assert volume_problem(ct) is None
    derived = one_series(CT5N)
    for ds in derived.headers:
        ds.SOPClassUID = pydicom.uid.ParametricMapStorage  # modality stays CT: the SOP class decides
    assert "Parametric Map Storage, not a CT/MR/PET image volume" in volume_problem(derived)
    stacked = one_series(CT5N)
    stacked.headers[1].ImagePositionPatient = list(stacked.headers[0].ImagePositionPatient)
    assert "share a position" in volume_problem(stacked)
    tilted = one_series(CT5N)
    tilted.headers[2].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    assert "different orientations" in volume_problem(tilted)
    single = one_series(CT5N)
    single.headers = single.headers[:1]
    assert "single image of 1 frame" in volume_problem(single)
    cr = next(s for st in studies_from_folder(OTHER_PATIENT) for s in st.series if s.modality == "CR")
    assert "Computed Radiography Image Storage, not a CT/MR/PET" in volume_problem(cr)


def test_folder_input_groups_studies_and_links_only_the_series(tmp_path):
    studies = studies_from_folder(OTHER_PATIENT)
    assert sorted(len(s.series) for s in studies) == [1, 3]  # a brain CT study and a 3-series CR study
    folder = tmp_path / "in"
    shutil.copytree(CT5N, folder / "a")
    shutil.copytree(SCOUT, folder / "b")
    (folder / "notes.txt").write_text("not DICOM")
    (study,) = studies_from_folder(folder)
    ct = next(s for s in study.series if s.description.startswith("SmartScore"))
    linked = study.fetch(ct, tmp_path / "series")
    assert len(list(linked.iterdir())) == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("x")
    with pytest.raises(StudyInputError, match="No DICOM instances in"):
        studies_from_folder(empty)
    with pytest.raises(StudyInputError, match="is not a folder"):
        studies_from_folder(tmp_path / "missing")


# -- identity ----------------------------------------------------------------------------------------------
def test_output_identity_is_deterministic_and_specific():
    a = output_identity("1.2.3", "kidney", "0.1.0", "dicom_seg/BINARY", 901)
    assert a == output_identity("1.2.3", "kidney", "0.1.0", "dicom_seg/BINARY", 901)
    others = [output_identity("1.2.4", "kidney", "0.1.0", "dicom_seg/BINARY", 901),
              output_identity("1.2.3", "kidney", "0.2.0", "dicom_seg/BINARY", 901),
              output_identity("1.2.3", "liver", "0.1.0", "dicom_seg/BINARY", 901),
              output_identity("1.2.3", "kidney", "0.1.0", "dicom_seg/LABELMAP", 901)]
    uids = {a.series_instance_uid, a.sop_instance_uid} | {u for o in others for u in (o.series_instance_uid, o.sop_instance_uid)}
    assert len(uids) == 10
    assert all(pydicom.uid.UID(u).is_valid and u.startswith(DEFAULT_UID_ROOT) for u in uids)
    assert output_identity("1.2.3", "k", "1", "pm", 902, uid_root="1.2.999.").sop_instance_uid.startswith("1.2.999.")
    with pytest.raises(ValueError, match="uid_root must be digits and dots"):
        output_identity("1.2.3", "k", "1", "pm", 902, uid_root="1.2.abc")
    with pytest.raises(ValueError, match="non-empty bundle_version"):
        output_identity("1.2.3", "k", "", "pm", 902)


# -- retry ---------------------------------------------------------------------------------------------------
def test_retry_backs_off_then_succeeds_or_reports():
    slept = []
    policy = RetryPolicy(attempts=4, delay=1.0, factor=2.0, max_delay=3.0, sleep=slept.append)
    assert policy.waits() == [1.0, 2.0, 3.0]
    calls = iter([PacsUnavailableError("down"), PacsUnavailableError("down"), "ok"])

    def flaky():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert policy.call(flaky, "store x") == "ok" and slept == [1.0, 2.0]
    slept.clear()
    with pytest.raises(PacsUnavailableError, match=r"down \(gave up after 4 attempt\(s\)"):
        policy.call(lambda: (_ for _ in ()).throw(PacsUnavailableError("down")), "store x")
    assert slept == [1.0, 2.0, 3.0]
    for error in (PacsAuthError("no"), PacsRejectedError("no")):  # retrying cannot help: at once
        slept.clear()
        with pytest.raises(type(error)):
            policy.call(lambda e=error: (_ for _ in ()).throw(e), "store x")
        assert slept == []
    with pytest.raises(ValueError, match="attempts must be an integer >= 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="max_delay"):
        RetryPolicy(delay=5, max_delay=1)


# -- outbox ---------------------------------------------------------------------------------------------------
def test_outbox_keeps_files_until_stored_and_sets_rejected_aside(tmp_path):
    box = Outbox(tmp_path / "work", keep_sent=True)
    for name in ("1.2.3.4", "1.2.3.5"):
        (tmp_path / name).write_bytes(b"x")
        box.add("1.2.3", name, tmp_path / name)
    (box.root / "1.2.3" / ".1.2.3.6.dcm.part").write_bytes(b"half")  # an interrupted write
    assert [p.name for p in box.pending("1.2.3")] == ["1.2.3.4.dcm", "1.2.3.5.dcm"] and box.studies() == ["1.2.3"]
    kept = box.mark_stored(box.pending("1.2.3")[0])
    assert kept == tmp_path / "work" / "sent" / "1.2.3" / "1.2.3.4.dcm" and kept.is_file()
    rejected = box.mark_rejected(box.pending("1.2.3")[0], "SOP class refused: use BINARY")
    assert rejected.with_suffix(".txt").read_text().startswith("SOP class refused")
    assert box.pending("1.2.3") == [] and box.studies() == []
    with pytest.raises(ValueError, match="is not a DICOM UID"):
        box.path_for("../etc", "1.2")


# -- PACS URLs and clients --------------------------------------------------------------------------------------
def test_pacs_urls():
    assert parse_pacs_url("http://127.0.0.1:8042/dicom-web/").url == "http://127.0.0.1:8042/dicom-web"
    a = parse_pacs_url("dimse://ORTHANC@127.0.0.1:4242")
    assert (a.protocol, a.ae_title, a.port) == ("dimse", "ORTHANC", 4242)
    for bad, match in (("http://u:p@pacs/dicom-web", "do not put credentials in the URL"),
                       ("dimse://127.0.0.1:4242", "needs the PACS AE title"),
                       ("dimse://ORTHANC@127.0.0.1", "needs a host and port"),
                       ("ftp://pacs", "scheme must be http"), ("", "empty")):
        with pytest.raises(ValueError, match=match):
            parse_pacs_url(bad)
    with pytest.raises(ValueError, match="both a PACS user and a password"):
        DicomWebPacs("http://127.0.0.1:1/dicom-web", user="u")


def test_a_pacs_that_does_not_answer_fails_fast_and_clearly():
    port = closed_port()
    web = DicomWebPacs(f"http://127.0.0.1:{port}/dicom-web", timeout=5)
    start = time.monotonic()
    with pytest.raises(PacsUnavailableError, match=r"does not answer \(connection refused\)"):
        web.has_instance("1.2", "1.3", "1.4")
    assert time.monotonic() - start < 3  # dicomweb-client's own hidden retries are off
    with pytest.raises(PacsUnavailableError, match="does not answer"):
        DimsePacs("127.0.0.1", port, "PACS", timeout=5).has_instance("1.2", "1.3", "1.4")


# -- the command --------------------------------------------------------------------------------------------------
def test_overrides_and_parser_wiring():
    assert parse_override("explain_class=1") == ("explain_class", 1)
    assert parse_override("pixels=image") == ("pixels", "image")
    assert parse_override("roi_size=[64, 64, 32]") == ("roi_size", [64, 64, 32])
    with pytest.raises(ValueError, match="key=value"):
        parse_override("explain_class")
    parser = argparse.ArgumentParser(prog="medcam-monai")
    add_pipeline_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pipeline", "kidney_ct_unet3d", "/data/study", "--pacs", "http://pacs/dicom-web"])
    assert args.func is run_pipeline and args.studies == ["/data/study"] and args.seg_type == "BINARY"


def _fake_weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save({}, path)  # never loaded: these runs stop before the model
    return path


def _run(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    code = run_pipeline(build_pipeline_parser().parse_args(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_bad_command_exits_2_with_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    base = ["kidney_ct_unet3d", str(CT5N), "--work-dir", str(tmp_path / "w")]
    cases = [
        (base + ["--pacs", "http://127.0.0.1:1/dicom-web", "--weights", str(tmp_path / "none.pt")], "No weights at"),
        (base + ["--pacs", "http://127.0.0.1:1/dicom-web", "--pacs-user", "u"], f"needs a password: set ${PASSWORD_ENV}"),
        (base + ["--pacs", "pacs:4242"], "scheme must be http"),
        (base + ["--pacs", "dimse://P@127.0.0.1:1", "--weights", str(_fake_weights(tmp_path)), "--rules", "{\"modality\": []}"],
         "modality is empty"),
        (["kidney_ct_unet3d", "--pacs", "dimse://P@127.0.0.1:1", "--weights", str(_fake_weights(tmp_path)),
          "--work-dir", str(tmp_path / "w2")], "Nothing to do"),
    ]
    for argv, message in cases:
        code, lines, err = _run(argv, capsys)
        assert code == 2 and lines == [] and message in err, (argv, err)


def test_no_matching_series_is_a_clear_json_line_and_exit_0(tmp_path, capsys):
    argv = ["kidney_ct_unet3d", str(OTHER_PATIENT / "CR1"), "--pacs", f"dimse://P@127.0.0.1:{closed_port()}",
            "--weights", str(_fake_weights(tmp_path)), "--work-dir", str(tmp_path / "w")]
    code, (record,), err = _run(argv, capsys)
    assert code == 0 and record["status"] == "no_matching_series"
    assert "modality CR is not one of ['CT']" in record["error"] and "modality CR" in err
    assert json.loads((tmp_path / "w" / "pipeline.jsonl").read_text()) == record


def test_results_wait_in_the_outbox_while_the_pacs_does_not_answer(tmp_path, capsys):
    work = tmp_path / "w"
    box = Outbox(work)
    for i, folder in enumerate((CT5N, OTHER_PATIENT / "CT2")):  # objects of two studies, left by an earlier run
        src = sorted(folder.iterdir())[0]
        identity = output_identity(f"1.2.{i}", "kidney_ct_unet3d", "0.1.0", "parametric_map", 902)
        box.add(str(pydicom.dcmread(src).StudyInstanceUID), identity.sop_instance_uid,
                object_with_identity(src, identity, tmp_path / f"obj{i}.dcm"))
    argv = ["kidney_ct_unet3d", "--pacs", f"http://127.0.0.1:{closed_port()}/dicom-web", "--weights", str(_fake_weights(tmp_path)),
            "--work-dir", str(work), "--retries", "3", "--retry-delay", "0.05"]
    code, records, err = _run(argv, capsys)
    assert code == 1 and [r["status"] for r in records] == ["pending", "pending"]
    assert all(r["source"] == "outbox" for r in records)
    assert "does not answer (connection refused)" in records[0]["error"] and "gave up after 3 attempt(s)" in records[0]["error"]
    # backoff for the first study only: once the PACS is known down, each later call gets one try
    assert err.count("retrying in") == 2 and "gave up after 1 attempt(s)" in records[1]["error"]
    assert sum(len(box.pending(s)) for s in box.studies()) == 2  # nothing lost


def test_one_run_per_work_dir(tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    with open(work / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345")
        held.flush()
        argv = ["kidney_ct_unet3d", str(OTHER_PATIENT / "CR1"), "--pacs", "dimse://P@127.0.0.1:1",
                "--weights", str(_fake_weights(tmp_path)), "--work-dir", str(work)]
        code, lines, err = _run(argv, capsys)
    assert code == 2 and "Another pipeline run (pid 12345)" in err


def test_bundle_errors_are_reported_by_their_cause():
    try:
        try:
            raise ValueError("series has irregular gaps")
        except ValueError as inner:
            raise RuntimeError("applying transform <LoadDicomd>") from inner
    except RuntimeError as wrapped:
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression") from wrapped
        except RuntimeError as outer:
            assert str(_root_cause(outer)) == "series has irregular gaps"
