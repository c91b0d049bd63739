"""The pipeline step against a real Orthanc: PACS in, PACS out, outages, refusals, no duplicates.

Not collected by a plain ``pytest`` run (its name does not start with ``test_``):
``tests/test_pipeline_orthanc.py`` runs it inside a private network namespace, where Orthanc
(which binds every interface) can only be reached on loopback. Running it directly outside one
fails at the first Orthanc start, on purpose.

The bundle is a copy of ``bundles/kidney_ct_unet3d`` with ``series_selection`` rules added and a
version per scenario (the version is part of the outputs' identity, so each scenario has its own
output series); its weights are trained here for one epoch on stand-in volumes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).parent))
from _orthanc import PASSWORD, USER, Orthanc  # noqa: E402

from medcam_monai.bundle import BUNDLES_DIR  # noqa: E402
from medcam_monai.pipeline import PASSWORD_ENV, build_pipeline_parser, run_pipeline  # noqa: E402

torch.set_num_threads(1)

CT5N = Path(get_testdata_file("dicomdirtests/98892001/CT5N"))  # 5-slice CT series
SCOUT = CT5N.parent / "CT2N"  # the same study's 2-slice scout
STUDY = str(pydicom.dcmread(next(CT5N.iterdir()), stop_before_pixels=True).StudyInstanceUID)
OTHER_PATIENT = CT5N.parents[1] / "77654033"  # a CT study with irregular slice gaps + a CR study
RULES = {"modality": ["CT"], "body_part": ["ABDOMEN", "KIDNEY"], "allow_missing_body_part": True,
         "exclude_series_description": "localizer|topogram", "min_slices": 3}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from medcam_monai.bundle import train_bundle

    root = tmp_path_factory.mktemp("kidney_weights")
    with redirect_stdout(sys.stderr):
        return train_bundle(BUNDLES_DIR / "kidney_ct_unet3d", root, epochs=1, num_cases=4, image_size=32, batch_size=2,
                            progress=False)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    server.upload(sorted(CT5N.iterdir()) + sorted(SCOUT.iterdir()))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _orthanc_up(orthanc):
    """Every scenario starts with Orthanc running (a scenario may stop it) and leaves it running."""
    if orthanc.proc is None:
        orthanc.start()
    yield
    if orthanc.proc is None:
        orthanc.start()


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def make_bundle(tmp_path: Path, version: str) -> Path:
    """A copy of the kidney bundle with series rules in its inference config and the given version."""
    dest = tmp_path / f"kidney_ct_unet3d_{version}"
    shutil.copytree(BUNDLES_DIR / "kidney_ct_unet3d", dest, ignore=shutil.ignore_patterns("models", "standin_data", "eval"))
    inference = json.loads((dest / "configs" / "inference.json").read_text())
    inference["series_selection"] = RULES
    (dest / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    meta = json.loads((dest / "configs" / "metadata.json").read_text())
    meta["version"] = version
    (dest / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    return dest


def step_args(bundle: Path, inputs: list[str], pacs: str, work: Path, weights: Path, *extra: str) -> list[str]:
    user = ["--pacs-user", USER] if pacs.startswith("http") else []
    return [str(bundle), *inputs, "--pacs", pacs, *user, "--work-dir", str(work), "--weights", str(weights),
            # whole-image pixel set: a net trained one epoch on phantoms need not predict kidney on this CT
            "--override", "pixels=image", "--override", "explain_class=1",
            "--timeout", "5", "--retries", "3", "--retry-delay", "0.2", "--keep-sent", *extra]


def run_step(args: list[str]) -> tuple[int, list[dict]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = run_pipeline(build_pipeline_parser().parse_args(args))
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def client(orthanc: Orthanc) -> DICOMwebClient:
    import requests

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return DICOMwebClient(orthanc.url, session=session)


def outputs_of(record: dict) -> dict[str, dict]:
    return {o["kind"]: o for s in record["series"] for o in s.get("outputs", [])}


def instances_in(web: DICOMwebClient, series_uid: str) -> list[str]:
    found = web.search_for_instances(study_instance_uid=STUDY, series_instance_uid=series_uid)
    return [pydicom.Dataset.from_json(f).SOPInstanceUID for f in found]


def frames_by_source(ds: pydicom.Dataset) -> dict[str, np.ndarray]:
    """Frame pixels of a SEG/PM keyed by the source SOP Instance each frame lies on."""
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    out = {}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert src not in out, f"two frames on source instance {src}"
        out[src] = pixels[i]
    return out


# -- scenarios ------------------------------------------------------------------------------------------
def test_study_from_pacs_stored_back_voxel_for_voxel_and_not_twice(tmp_path, orthanc, weights, password):
    bundle, work = make_bundle(tmp_path, "1.0.0-pacs"), tmp_path / "work"
    code, records = run_step(step_args(bundle, [STUDY], orthanc.url, work, weights))
    assert code == 0, records
    (record,) = records
    assert record["status"] == "stored" and record["source"].startswith("dicomweb ")
    assert [s["inference"] for s in record["series"]] == ["ran"]
    assert "Scout" in json.dumps(record["skipped_series"]) and "not a volume: it has 2 slice(s)" in json.dumps(record["skipped_series"])
    outputs = outputs_of(record)
    assert {k: o["status"] for k, o in outputs.items()} == {"dicom_seg/BINARY": "stored", "parametric_map": "stored"}

    web = client(orthanc)
    source_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in CT5N.iterdir()}
    got = {}
    for kind, o in outputs.items():
        assert instances_in(web, o["series_instance_uid"]) == [o["sop_instance_uid"]]
        stored = web.retrieve_instance(STUDY, o["series_instance_uid"], o["sop_instance_uid"])  # WADO-RS
        local = pydicom.dcmread(o["file"])  # the kept copy of what the step sent
        assert stored.SOPClassUID == local.SOPClassUID and stored.StudyInstanceUID == STUDY
        got[kind] = frames_by_source(stored)
        # the Parametric Map has a frame on every source slice; the SEG omits empty ones
        assert set(got[kind]) == source_uids if kind == "parametric_map" else set(got[kind]) <= source_uids
        for src, frame in frames_by_source(local).items():
            np.testing.assert_array_equal(got[kind][src], frame)  # voxel for voxel
    # the BINARY SEG is the Parametric Map's heatmap, scaled to [0, 1], at 0.5: same voxels
    pm = np.stack([got["parametric_map"][u] for u in sorted(source_uids)]).astype(np.float64)
    seg = np.stack([got["dicom_seg/BINARY"].get(u, np.zeros(pm.shape[1:], np.uint8)) for u in sorted(source_uids)])
    assert pm.max() > pm.min(), "the heatmap is constant: nothing to compare"
    scaled = (pm - pm.min()) / (pm.max() - pm.min())
    decided = np.abs(scaled - 0.5) > 1e-4
    np.testing.assert_array_equal(seg[decided], (scaled >= 0.5)[decided])
    assert 0 < seg.sum() < seg.size

    # the next night: same study, same bundle version -> nothing run, nothing stored twice
    code, (again,) = run_step(step_args(bundle, [STUDY], orthanc.url, work, weights))
    assert code == 0 and again["status"] == "already_stored", again
    assert [s["inference"] for s in again["series"]] == ["skipped: results already in PACS"]
    skipped = json.dumps(again["skipped_series"])
    # our own outputs are in the study now, and never taken as inputs
    assert "SEG 'kidney_ct_unet3d_1.0.0-pacs" in skipped and "modality SEG is not one of ['CT']" in skipped
    assert "modality OT is not one of ['CT']" in skipped
    for o in outputs.values():
        assert instances_in(web, o["series_instance_uid"]) == [o["sop_instance_uid"]]
    lines = (work / "pipeline.jsonl").read_text().splitlines()
    assert [json.loads(ln)["status"] for ln in lines] == ["stored", "already_stored"]


def test_orthanc_killed_mid_run_recovers_without_duplicates_other_studies_go_on(tmp_path, orthanc, weights):
    """Orthanc is killed while the model runs and restarted once the step starts retrying; the step
    stores everything in the same run. Bad studies in the same run are reported and do not stop it."""
    bundle, work = make_bundle(tmp_path, "1.0.1-midrun"), tmp_path / "work"
    args = step_args(bundle, [str(tmp_path / "no_such_folder"), str(OTHER_PATIENT), str(CT5N)], orthanc.url, work, weights)
    args[args.index("--retries") + 1], args[args.index("--retry-delay") + 1] = "8", "0.5"
    # --rules replaces the bundle's rules: any body part, so the brain CT with irregular slice gaps
    # is selected and makes the bundle fail
    args += ["--rules", json.dumps({**RULES, "body_part": []})]
    env = {**os.environ, PASSWORD_ENV: PASSWORD, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medcam_monai.pipeline", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)
    reader.start()
    log, killed, restarted = [], False, False
    deadline = time.monotonic() + 150
    try:
        for line in proc.stderr:
            log.append(line)
            if not killed and "running bundle" in line and "SmartScore" in line:
                orthanc.stop(kill=True)  # a crash, while the model runs
                killed = True
            elif killed and not restarted and "retrying in" in line:
                orthanc.start()
                restarted = True
            assert time.monotonic() < deadline, "".join(log[-40:])
        proc.wait(timeout=60)
        (tmp_path / "step.log").write_text("".join(log))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert killed and restarted, "".join(log[-40:])
    records = {r["source"] + ":" + str(r["study_instance_uid"]): r for r in map(json.loads, stdout)}
    by_status = sorted((r["status"], r.get("error_type") or "") for r in records.values())
    assert proc.returncode == 1, "".join(log[-40:])  # some studies failed: exit 1
    assert by_status == [("failed", ""), ("failed", "PipelineError"), ("no_matching_series", "NoMatchingSeriesError"),
                         ("stored", "")], json.dumps(list(records.values()), indent=1)
    good = next(r for r in records.values() if r["status"] == "stored")
    assert good["study_instance_uid"] == STUDY
    for o in outputs_of(good).values():
        assert o["status"] == "stored"
        assert instances_in(client(orthanc), o["series_instance_uid"]) == [o["sop_instance_uid"]]
    irregular = next(r for r in records.values() if r["status"] == "failed" and r["study_instance_uid"])
    assert irregular["error"].startswith("BundleRunError: IrregularSpacingError: ")  # the cause, not MONAI's wrapper
    no_match = next(r for r in records.values() if r["status"] == "no_matching_series")
    assert "modality CR is not one of ['CT']" in no_match["error"]
    missing = next(r for r in records.values() if r["error_type"] == "PipelineError")
    assert "neither an existing folder nor a Study Instance UID" in missing["error"]
    assert any("retrying in" in ln for ln in log) and not list((work / "outbox").rglob("*.dcm"))


def test_pacs_down_all_night_results_wait_then_dimse_store_and_dedup(tmp_path, orthanc, weights):
    bundle, work = make_bundle(tmp_path, "1.0.2-outbox"), tmp_path / "work"
    args = step_args(bundle, [str(CT5N)], orthanc.dimse_url, work, weights, "--retries", "2", "--retry-delay", "0.1")
    orthanc.stop()
    code, (record,) = run_step(args)
    assert code == 1 and record["status"] == "pending", record
    assert "does not answer" in record["error"]
    waiting = sorted((work / "outbox" / STUDY).glob("*.dcm"))
    assert len(waiting) == 2  # SEG and Parametric Map, on disk

    orthanc.start()
    # the next run needs no input: what waits in the outbox is stored first (C-STORE)
    code, (flushed,) = run_step(args[:1] + args[2:])
    assert code == 0 and flushed["status"] == "stored" and flushed["source"] == "outbox", flushed
    assert not list((work / "outbox").rglob("*.dcm"))
    web = client(orthanc)
    for o in outputs_of(flushed).values():
        assert instances_in(web, o["series_instance_uid"]) == [o["sop_instance_uid"]]
    assert {o["sop_instance_uid"] for o in outputs_of(record).values()} == {o["sop_instance_uid"] for o in outputs_of(flushed).values()}
    # and the study again: C-FIND finds both, the model does not run
    code, (again,) = run_step(args)
    assert code == 0 and again["status"] == "already_stored", again
    assert [s["inference"] for s in again["series"]] == ["skipped: results already in PACS"]


def test_labelmap_refused_over_cstore_says_use_binary(tmp_path, orthanc, weights):
    bundle, work = make_bundle(tmp_path, "1.0.3-labelmap"), tmp_path / "work"
    code, (record,) = run_step(step_args(bundle, [str(CT5N)], orthanc.dimse_url, work, weights, "--seg-type", "LABELMAP"))
    assert code == 1 and record["status"] == "failed", record
    outputs = outputs_of(record)
    assert outputs["parametric_map"]["status"] == "stored"
    seg = outputs["dicom_seg/LABELMAP"]
    assert seg["status"] == "rejected"
    assert "does not accept Label Map Segmentation Storage" in seg["error"] and "--seg-type BINARY" in seg["error"]
    assert "UnknownSopClassAccepted" in seg["error"]
    # kept for a person to decide, with the reason; not retried every night
    kept = Path(seg["file"])
    assert kept.is_file() and "rejected" in kept.parts and "BINARY" in kept.with_suffix(".txt").read_text()
    assert not list((work / "outbox").rglob("*.dcm"))


def test_credentials_refused_is_reported_without_retrying(tmp_path, orthanc, weights, monkeypatch):
    bundle, work = make_bundle(tmp_path, "1.0.4-auth"), tmp_path / "work"
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    start = time.monotonic()
    code, (by_folder,) = run_step(step_args(bundle, [str(CT5N)], orthanc.url, work, weights, "--retry-delay", "5"))
    code2, (by_uid,) = run_step(step_args(bundle, [STUDY], orthanc.url, work, weights, "--retry-delay", "5"))
    assert time.monotonic() - start < 30  # no 5 s backoff: refused credentials are not retried
    assert code == code2 == 1
    for record in (by_folder, by_uid):
        assert record["status"] == "failed", record
        assert "refused the credentials of user 'medcam' (HTTP 401)" in record["error"]
        assert "MEDCAM_PACS_PASSWORD" in record["error"]
    assert [s["inference"] for s in by_folder["series"]] == ["failed"]  # the model never ran
    assert not list((work / "outbox").rglob("*.dcm"))
