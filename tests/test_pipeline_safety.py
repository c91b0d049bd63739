"""The pipeline step with hostile input and faults (issue 14): nothing deleted outside the work folder,
no PACS password in the bundle's environment, private password files, a corrupt outbox file set
aside, outputs whose identity covers everything that changes them, leftovers of a killed run removed.

Each test is named after the finding it guards; each fails on the code before the fix. What needs a
real PACS (timeouts, HTTP 5xx, a full disk, two runs at once, SIGKILL at random points) is in
``tests/pipeline_orthanc_scenarios.py`` and ``tests/pipeline_orthanc_faults.py``.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).parent))
from _fake_pacs import FakeDicomWeb, object_with_identity  # noqa: E402

from medcam_monai.pipeline import PASSWORD_ENV, Outbox, build_pipeline_parser, run_pipeline  # noqa: E402

torch.set_num_threads(1)

CT5N = Path(get_testdata_file("dicomdirtests/98892001/CT5N"))
STUDY = str(pydicom.dcmread(next(CT5N.iterdir()), stop_before_pixels=True).StudyInstanceUID)
SERIES = str(pydicom.dcmread(next(CT5N.iterdir()), stop_before_pixels=True).SeriesInstanceUID)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_weights(tmp_path: Path) -> Path:
    path = tmp_path / "fake.pt"
    torch.save({}, path)  # fails at loading: these runs need the bundle to start, not to finish
    return path


def random_weights(tmp_path: Path) -> Path:
    """A state dict of the kidney bundle's own network (its config's ``network_def``), untrained."""
    from monai.bundle import ConfigParser

    from medcam_monai.bundle import BUNDLES_DIR

    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / "kidney_ct_unet3d" / "configs" / "inference.json"))
    torch.manual_seed(0)
    path = tmp_path / "random.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def run(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    code = run_pipeline(build_pipeline_parser().parse_args(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def hostile_datasets(series_uid: str) -> list[pydicom.Dataset]:
    """CT5N's five slices with ``series_uid`` as their SeriesInstanceUID (no validation: an attacker's tool)."""
    out = []
    for f in sorted(CT5N.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        out.append(ds)
    return out


def outside_sentinel(tmp_path: Path) -> Path:
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    (sentinel / "precious.txt").write_text("not the pipeline's")
    return sentinel


def hostile_series_uids(tmp_path: Path, sentinel: Path) -> list[str]:
    # the work folder is tmp_path/w: scratch/<study>/../../.. is tmp_path
    return [str(sentinel), "../../../" + sentinel.name]


# -- 1. path safety ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_hostile_series_uid_in_a_folder_deletes_nothing_outside_the_work_folder(tmp_path, capsys, form):
    sentinel = outside_sentinel(tmp_path)
    uid = dict(zip(["absolute", "relative"], hostile_series_uids(tmp_path, sentinel), strict=True))[form]
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, ds in enumerate(hostile_datasets(uid)):
        ds.save_as(folder / f"{i}.dcm")
    work = tmp_path / "w"
    code, (record,), _ = run([
        "kidney_ct_unet3d", str(folder), "--pacs", f"dimse://P@127.0.0.1:{closed_port()}", "--retries", "1",
        "--weights", str(fake_weights(tmp_path)), "--work-dir", str(work)], capsys)
    assert (sentinel / "precious.txt").read_text() == "not the pipeline's"
    assert record["status"] == "no_matching_series" and code == 0, record
    assert "is not a DICOM UID" in record["error"] and "SeriesInstanceUID" in record["error"]
    assert not (work / "scratch").exists() and not list((work / "outbox").rglob("*"))


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_hostile_series_uid_from_dicomweb_deletes_nothing_outside_the_work_folder(tmp_path, capsys, form):
    sentinel = outside_sentinel(tmp_path)
    uid = dict(zip(["absolute", "relative"], hostile_series_uids(tmp_path, sentinel), strict=True))[form]
    work = tmp_path / "w"
    with FakeDicomWeb(hostile_datasets(uid)) as server:
        code, (record,), _ = run([
            "kidney_ct_unet3d", STUDY, "--pacs", server.url, "--retries", "1", "--timeout", "5",
            "--weights", str(fake_weights(tmp_path)), "--work-dir", str(work)], capsys)
        assert not any("/series/" in r and "/instances" not in r for r in server.requests)  # never fetched
    assert (sentinel / "precious.txt").read_text() == "not the pipeline's"
    assert record["status"] == "no_matching_series" and record["source"].startswith("dicomweb "), record
    assert "is not a DICOM UID" in record["error"]


def test_dicomweb_instance_file_names_never_come_from_the_server(tmp_path):
    from medcam_monai.pipeline import DicomWebPacs

    datasets = hostile_datasets(SERIES)
    datasets[0].SOPInstanceUID = "../../escaped"
    folder = tmp_path / "a" / "b" / "series"
    with FakeDicomWeb(datasets) as server:
        paths = DicomWebPacs(server.url, timeout=5).retrieve_series(STUDY, SERIES, folder)
    assert not (tmp_path / "a" / "escaped.dcm").exists() and not list(tmp_path.rglob("escaped*"))
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}.dcm" for i in range(5)] == [p.name for p in paths]


def test_dicomweb_instances_of_another_series_are_refused(tmp_path):
    from medcam_monai.pipeline import DicomWebPacs, PacsRejectedError

    datasets = hostile_datasets(SERIES)
    datasets[2].SeriesInstanceUID = "1.2.3.4"
    with FakeDicomWeb(datasets, whole_study_for_series=True) as server:
        with pytest.raises(PacsRejectedError, match="instance of series '1.2.3.4'"):
            DicomWebPacs(server.url, timeout=5).retrieve_series(STUDY, SERIES, tmp_path / "s")


def test_hostile_study_uid_in_a_folder_is_reported_and_the_others_go_on(tmp_path, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, ds in enumerate(hostile_datasets(SERIES)):
        ds.StudyInstanceUID = "../../outside"
        ds.save_as(folder / f"{i}.dcm")
    code, records, _ = run([
        "kidney_ct_unet3d", str(folder), str(CT5N.parents[1] / "77654033" / "CR1"), "--pacs", f"dimse://P@127.0.0.1:{closed_port()}",
        "--retries", "1", "--weights", str(fake_weights(tmp_path)), "--work-dir", str(tmp_path / "w")], capsys)
    assert code == 1 and [r["status"] for r in records] == ["failed", "no_matching_series"], records
    assert "StudyInstanceUID '../../outside' is not a DICOM UID" in records[0]["error"]


def test_deletions_are_refused_outside_their_folder(tmp_path):
    from medcam_monai.pipeline.paths import check_uid, remove_file, remove_tree

    root, outside = tmp_path / "work", outside_sentinel(tmp_path)
    (root / "a").mkdir(parents=True)
    (root / "link").symlink_to(outside)  # a link planted in the work folder
    for path in (outside, root / ".." / "outside", root, root / "link" / "precious.txt"):
        with pytest.raises(PermissionError, match="is not inside"):
            remove_tree(path, root) if path.name != "precious.txt" else remove_file(path, root)
    remove_tree(root / "link", root)  # the link goes, its target stays
    assert not (root / "link").exists() and (outside / "precious.txt").is_file()
    remove_tree(root / "a", root)
    assert not (root / "a").exists()
    for bad in ("../x", "/etc", "1.2.3/4", "1." + "2" * 70, "", "1..2"):
        with pytest.raises(ValueError, match="is not a DICOM UID"):
            check_uid(bad)


# -- 3. credentials ----------------------------------------------------------------------------------------------
def test_pacs_password_is_not_in_the_environment_of_bundle_expressions(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-pacs-password")
    leak = tmp_path / "leak.txt"
    spy = (f"$open({str(leak)!r}, 'w').write(repr(os.environ.get('MEDCAM_PACS_PASSWORD')) + ' ' + "
           "repr(__import__('subprocess').run(['sh', '-c', 'echo -n \"$MEDCAM_PACS_PASSWORD\"'], capture_output=True, "
           "text=True).stdout))")
    code, (record,), _ = run([
        "kidney_ct_unet3d", str(CT5N), "--pacs", f"http://127.0.0.1:{closed_port()}/dicom-web", "--pacs-user", "medcam",
        "--retries", "1", "--weights", str(fake_weights(tmp_path)), "--work-dir", str(tmp_path / "w"),
        "--override", "initialize=" + json.dumps(["$monai.utils.set_determinism(seed=0)", spy]),
    ], capsys)
    assert leak.is_file(), record  # the bundle's expressions ran
    assert leak.read_text() == "None ''"
    assert "s3cret" not in json.dumps(record)


def test_pacs_password_file_must_be_private(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    secret = tmp_path / "pacs.pw"
    secret.write_text("s3cret\n")
    argv = ["kidney_ct_unet3d", str(CT5N.parents[1] / "77654033" / "CR1"), "--pacs", f"http://127.0.0.1:{closed_port()}/dicom-web",
            "--pacs-user", "medcam", "--pacs-password-file", str(secret), "--retries", "1",
            "--weights", str(fake_weights(tmp_path)), "--work-dir", str(tmp_path / "w")]
    for mode in (0o644, 0o640, 0o604, 0o660):
        secret.chmod(mode)
        code, lines, err = run(argv, capsys)
        assert code == 2 and lines == [], err
        assert f"mode {mode:04o}" in err and f"chmod 600 '{secret}'" in err
    secret.chmod(0o600)
    code, (record,), err = run(argv, capsys)
    assert code == 0 and record["status"] == "no_matching_series", err


# -- 5. a corrupt outbox file -----------------------------------------------------------------------------------------
def test_corrupt_outbox_file_is_quarantined_and_the_run_goes_on(tmp_path, capsys):
    from medcam_monai.pipeline import output_identity

    work = tmp_path / "w"
    box = Outbox(work)
    good = output_identity(SERIES, "kidney_ct_unet3d", "0.1.0", "parametric_map", 902)
    box.add(STUDY, good.sop_instance_uid, object_with_identity(sorted(CT5N.iterdir())[0], good, tmp_path / "good.dcm"))
    bad_study = "1.2.826.0.1.3680043.8.498.1"
    (tmp_path / "1.2.3.4").write_bytes(b"not DICOM at all")
    box.add(bad_study, "1.2.3.4", tmp_path / "1.2.3.4")
    cut = output_identity(SERIES, "kidney_ct_unet3d", "0.1.0", "dicom_seg/BINARY", 901)  # a file cut short in its pixels
    ds = pydicom.dcmread(object_with_identity(sorted(CT5N.iterdir())[1], cut, tmp_path / "cut.dcm"))
    ds.StudyInstanceUID = bad_study
    ds.save_as(tmp_path / "cut.dcm")
    (tmp_path / "1.2.3.5").write_bytes((tmp_path / "cut.dcm").read_bytes()[:-100])
    box.add(bad_study, "1.2.3.5", tmp_path / "1.2.3.5")
    argv = ["kidney_ct_unet3d", str(CT5N.parents[1] / "77654033" / "CR1"), "--pacs", f"dimse://P@127.0.0.1:{closed_port()}",
            "--retries", "1", "--weights", str(fake_weights(tmp_path)), "--work-dir", str(work)]
    code, records, err = run(argv, capsys)
    assert code == 1, err
    by_study = {r["study_instance_uid"]: r for r in records}
    assert by_study[bad_study]["status"] == "failed"
    for name in ("1.2.3.4", "1.2.3.5"):
        kept = work / "rejected" / bad_study / f"{name}.dcm"
        assert kept.is_file() and "not a readable DICOM file" in kept.with_suffix(".txt").read_text()
    assert by_study[STUDY]["status"] == "pending"  # the good one waits for the PACS, untouched
    assert [p.name for p in box.pending(STUDY)] == [f"{good.sop_instance_uid}.dcm"] and box.pending(bad_study) == []
    assert [r["status"] for r in records if r["source"] != "outbox"] == ["no_matching_series"]  # the night went on
    assert len((work / "pipeline.jsonl").read_text().splitlines()) == 3
    # the next night: nothing left to trip over
    code, records, err = run(argv, capsys)
    assert [r["status"] for r in records if r["study_instance_uid"] == bad_study] == []


# -- 9. the outputs' identity ------------------------------------------------------------------------------------------
def test_output_identity_covers_everything_that_changes_the_output(tmp_path):
    from medcam_monai.bundle import BUNDLES_DIR
    from medcam_monai.pipeline import BundleRunner

    bundle = tmp_path / "kidney_ct_unet3d"
    shutil.copytree(BUNDLES_DIR / "kidney_ct_unet3d", bundle, ignore=shutil.ignore_patterns("models", "standin_data", "eval"))
    weights = fake_weights(tmp_path)

    def uids(**kwargs) -> set[str]:
        runner = BundleRunner(kwargs.pop("bundle", bundle), weights=kwargs.pop("weights", weights), **kwargs)
        return {u for i in runner.identities(SERIES) for u in (i.series_instance_uid, i.sop_instance_uid)}

    base = uids(overrides={"explain_class": 1, "pixels": "image"})
    assert base == uids(overrides={"pixels": "image", "explain_class": 1})  # same settings, same UIDs
    other_weights = tmp_path / "other.pt"
    torch.save({"w": torch.ones(1)}, other_weights)
    variants = {
        "another class": uids(overrides={"explain_class": 2, "pixels": "image"}),
        "another pixel set": uids(overrides={"explain_class": 1, "pixels": "predicted"}),
        "LABELMAP": uids(overrides={"explain_class": 1, "pixels": "image"}, seg_type="LABELMAP"),
        "other weights": uids(overrides={"explain_class": 1, "pixels": "image"}, weights=other_weights),
    }
    config = bundle / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"normalize": "max"', '"normalize": "minmax"'))  # explainer settings
    variants["explainer settings"] = uids(overrides={"explain_class": 1, "pixels": "image"})
    meta = bundle / "configs" / "metadata.json"
    meta.write_text(meta.read_text().replace('"version": "0.1.0"', '"version": "0.1.1"'))
    variants["bundle version"] = uids(overrides={"explain_class": 1, "pixels": "image"})
    for what, got in variants.items():
        assert not got & base, f"{what} kept the same output UIDs"
    runner = BundleRunner(bundle, weights=weights, overrides={"explain_class": 2})
    assert runner.settings["overrides"] == {"explain_class": 2} and len(runner.settings["weights_sha256"]) == 64


def test_rerun_with_another_class_runs_the_model_instead_of_already_stored(tmp_path, capsys):
    """Results of explain_class=1 wait in the outbox; a run for class 2 must explain, one for class 1 must not."""
    work, weights = tmp_path / "w", random_weights(tmp_path)
    base = ["kidney_ct_unet3d", str(CT5N), "--pacs", f"dimse://P@127.0.0.1:{closed_port()}", "--retries", "1",
            "--weights", str(weights), "--work-dir", str(work), "--override", "pixels=image"]
    code, (first,), err = run(base + ["--override", "explain_class=1"], capsys)
    assert [s["inference"] for s in first["series"]] == ["ran"] and first["status"] == "pending", err
    code, (again,), _ = run(base + ["--override", "explain_class=1"], capsys)
    assert [s["inference"] for s in again["series"]][0] == "skipped: results waiting in outbox"
    code, (other,), _ = run(base + ["--override", "explain_class=2"], capsys)
    assert [s["inference"] for s in other["series"]][0] == "ran", other
    uids = lambda r: {o["sop_instance_uid"] for s in r["series"] for o in s.get("outputs", []) if s["series_instance_uid"]}  # noqa: E731
    assert not uids(first) & uids(other) and len(uids(other)) == 2
    assert other["output_settings"]["overrides"] == {"explain_class": 2, "pixels": "image"}
    assert len(list((work / "outbox" / STUDY).glob("*.dcm"))) == 4  # both classes' results wait, none overwritten


# -- the writers take the identity's UIDs -----------------------------------------------------------------------------
def test_writers_are_given_the_identity_and_nothing_is_restamped(tmp_path, capsys, monkeypatch):
    """The step hands the DICOM writers the identity's UIDs and queues their files as written."""
    from medcam_monai.io import writers as io_writers

    calls = []

    def recording(writer):
        def write(explanation, source, path, **kwargs):
            calls.append((writer.name, kwargs.get("series_instance_uid"), kwargs.get("sop_instance_uid"), kwargs.get("series_number")))
            return writer(explanation, source, path, **kwargs)
        return write

    for name in ("dicom_seg", "parametric_map"):
        monkeypatch.setitem(io_writers.WRITERS, name, recording(io_writers.WRITERS[name]))
    work = tmp_path / "w"
    code, (record,), err = run(["kidney_ct_unet3d", str(CT5N), "--pacs", f"dimse://P@127.0.0.1:{closed_port()}", "--retries", "1",
                                "--weights", str(random_weights(tmp_path)), "--work-dir", str(work), "--override", "pixels=image"], capsys)
    assert [s["inference"] for s in record["series"]] == ["ran"], err
    outputs = {o["kind"]: o for s in record["series"] for o in s["outputs"]}
    assert sorted(calls) == sorted(
        (k.split("/")[0], o["series_instance_uid"], o["sop_instance_uid"], 901 if k.startswith("dicom_seg") else 902)
        for k, o in outputs.items())
    for o in outputs.values():
        ds = pydicom.dcmread(work / "outbox" / STUDY / f"{o['sop_instance_uid']}.dcm", stop_before_pixels=True)
        assert ds.SeriesInstanceUID == o["series_instance_uid"]


def test_an_output_without_its_identity_is_refused(tmp_path):
    """A written object whose UIDs are not the ones the writer was given could never be found in the PACS
    again (it would be stored every night): it is refused, not queued."""
    from medcam_monai.pipeline import PipelineError, output_identity
    from medcam_monai.pipeline.step import PipelineStep

    src = sorted(CT5N.iterdir())[0]
    identity = output_identity(SERIES, "k", "1", "parametric_map", 902)
    with pytest.raises(PipelineError, match="wrote other UIDs"):
        PipelineStep._checked_identity(src, identity)
    right = object_with_identity(src, identity, tmp_path / "x.dcm")
    assert PipelineStep._checked_identity(right, identity) == right


# -- a killed run's leftovers ---------------------------------------------------------------------------------------
def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path, capsys):
    work = tmp_path / "w"
    left = work / "scratch" / STUDY / SERIES / "source"
    left.mkdir(parents=True)
    (left / "00000.dcm").symlink_to(sorted(CT5N.iterdir())[0])  # a killed run's link to patient data
    box = Outbox(work)
    (box.root / STUDY).mkdir()
    (box.root / STUDY / ".1.2.3.dcm.part").write_bytes(b"half a copy")
    code, (record,), _ = run(["kidney_ct_unet3d", str(CT5N.parents[1] / "77654033" / "CR1"), "--pacs",
                              f"dimse://P@127.0.0.1:{closed_port()}", "--weights", str(fake_weights(tmp_path)),
                              "--work-dir", str(work)], capsys)
    assert record["status"] == "no_matching_series"
    assert not (work / "scratch").exists() and not list((work / "outbox").rglob("*"))
    assert sorted(CT5N.iterdir())[0].is_file()  # the link went, not what it pointed at
