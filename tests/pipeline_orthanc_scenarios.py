"""The pipeline step against a real Orthanc: PACS in, PACS out, outages, refusals, no duplicates;
a PACS that hangs, HTTP 5xx on store, a full work disk, two runs on one work folder, and SIGKILL at
random points of a batch (the ``fault_injection`` tests, run in a second namespace in parallel).

Not collected by a plain ``pytest`` run (its name does not start with ``test_``):
``tests/test_pipeline_orthanc.py`` runs it inside a private network namespace, where Orthanc
(which binds every interface) can only be reached on loopback. Running it directly outside one
fails at the first Orthanc start, on purpose.

The bundle is a copy of ``bundles/kidney_ct_unet3d`` with ``series_selection`` rules added and a
version per scenario (the version is part of the outputs' identity, so each scenario has its own
output series); its weights are trained here for one epoch on stand-in volumes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
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
from _fake_pacs import FailingStoreProxy, SilentServer  # noqa: E402
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


def run_step(args: list[str], password: str = PASSWORD) -> tuple[int, list[dict]]:
    """Run the step in this process; the password is put in the environment each time (the step
    removes it from there once read)."""
    if "--pacs-user" in args:
        os.environ[PASSWORD_ENV] = password
    out = io.StringIO()
    with redirect_stdout(out):
        code = run_pipeline(build_pipeline_parser().parse_args(args))
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def start_step(args: list[str]) -> subprocess.Popen:
    """The step as its own process (``python -m medcam_monai.pipeline``), in its own process group."""
    env = {**os.environ, PASSWORD_ENV: PASSWORD, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "medcam_monai.pipeline", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


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
def test_study_from_pacs_stored_back_voxel_for_voxel_and_not_twice(tmp_path, orthanc, weights):
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
    # another class to explain is another result (issue 14, finding 9): the model runs, a new series is stored
    code, (other,) = run_step(step_args(bundle, [STUDY], orthanc.url, work, weights, "--override", "explain_class=2"))
    assert code == 0 and other["status"] == "stored" and [s["inference"] for s in other["series"]] == ["ran"], other
    assert other["output_settings"]["overrides"]["explain_class"] == 2
    new = outputs_of(other)
    assert not {o["series_instance_uid"] for o in new.values()} & {o["series_instance_uid"] for o in outputs.values()}
    for o in [*new.values(), *outputs.values()]:
        assert instances_in(web, o["series_instance_uid"]) == [o["sop_instance_uid"]]
    lines = (work / "pipeline.jsonl").read_text().splitlines()
    assert [json.loads(ln)["status"] for ln in lines] == ["stored", "already_stored", "stored"]


def test_orthanc_killed_mid_run_recovers_without_duplicates_other_studies_go_on(tmp_path, orthanc, weights):
    """Orthanc is killed while the model runs and restarted once the step starts retrying; the step
    stores everything in the same run. Bad studies in the same run are reported and do not stop it: a
    folder that does not exist, a CR study no rule accepts, and a CT whose slice gaps are irregular (refused
    by series selection with the loader's own geometry check, before the model runs)."""
    bundle, work = make_bundle(tmp_path, "1.0.1-midrun"), tmp_path / "work"
    args = step_args(bundle, [str(tmp_path / "no_such_folder"), str(OTHER_PATIENT), str(CT5N)], orthanc.url, work, weights)
    args[args.index("--retries") + 1], args[args.index("--retry-delay") + 1] = "8", "0.5"
    # --rules replaces the bundle's rules: any body part, so the brain CT with irregular slice gaps
    # matches them and is refused only as "not a volume"
    args += ["--rules", json.dumps({**RULES, "body_part": []})]
    proc = start_step(args)
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
    assert by_status == [("failed", "PipelineError"), ("no_matching_series", "NoMatchingSeriesError"),
                         ("no_matching_series", "NoMatchingSeriesError"), ("stored", "")], json.dumps(list(records.values()), indent=1)
    good = next(r for r in records.values() if r["status"] == "stored")
    assert good["study_instance_uid"] == STUDY
    for o in outputs_of(good).values():
        assert o["status"] == "stored"
        assert instances_in(client(orthanc), o["series_instance_uid"]) == [o["sop_instance_uid"]]
    refused = [r for r in records.values() if r["status"] == "no_matching_series"]
    reasons = sorted(tuple(s["reason"] for s in r["skipped_series"]) for r in refused)
    assert any("modality CR is not one of ['CT']" in r["error"] for r in refused), reasons
    assert ("matches the rules but is not a volume: its slice spacing is irregular (a slice may be missing)",) in reasons, reasons
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


def test_credentials_refused_is_reported_without_retrying(tmp_path, orthanc, weights):
    bundle, work = make_bundle(tmp_path, "1.0.4-auth"), tmp_path / "work"
    start = time.monotonic()
    code, (by_folder,) = run_step(step_args(bundle, [str(CT5N)], orthanc.url, work, weights, "--retry-delay", "5"), "wrong-password")
    code2, (by_uid,) = run_step(step_args(bundle, [STUDY], orthanc.url, work, weights, "--retry-delay", "5"), "wrong-password")
    assert time.monotonic() - start < 30  # no 5 s backoff: refused credentials are not retried
    assert code == code2 == 1
    for record in (by_folder, by_uid):
        assert record["status"] == "failed", record
        assert "refused the credentials of user 'medcam' (HTTP 401)" in record["error"]
        assert "MEDCAM_PACS_PASSWORD" in record["error"]
    assert [s["inference"] for s in by_folder["series"]] == ["failed"]  # the model never ran
    assert not list((work / "outbox").rglob("*.dcm"))


# -- faults (issue 14, finding 10) ----------------------------------------------------------------------------
def test_a_pacs_that_hangs_times_out_and_results_wait_in_the_outbox(tmp_path, orthanc, weights):
    """A PACS that accepts connections and never answers (DICOMweb and DIMSE): each request gives up
    after --timeout, the study is "pending" with its results in the outbox, and a later run stores them."""
    bundle, work = make_bundle(tmp_path, "1.0.5-hang"), tmp_path / "work"
    with SilentServer() as hung:
        start = time.monotonic()
        code, (web,) = run_step(step_args(bundle, [str(CT5N)], f"http://127.0.0.1:{hung.port}/dicom-web", work, weights,
                                          "--timeout", "2", "--retries", "2"))
        took_web = time.monotonic() - start
        code2, (dimse,) = run_step(step_args(bundle, [str(CT5N)], f"dimse://HUNG@127.0.0.1:{hung.port}", work, weights,
                                             "--timeout", "2", "--retries", "2"))
        # reading a study from a hung DICOMweb server: the study fails, nothing else happens
        code3, (source,) = run_step(step_args(bundle, [STUDY], orthanc.url, tmp_path / "work2", weights, "--timeout", "2",
                                              "--retries", "2", "--source-url", f"http://127.0.0.1:{hung.port}/dicom-web"))
        assert hung.accepted, "the hung server saw no connection"
    assert code == code2 == code3 == 1
    assert web["status"] == "pending" and "did not answer within 2 s" in web["error"], web
    assert [s["inference"] for s in web["series"]] == ["ran"]  # explained anyway: the outbox keeps the results
    assert took_web < 120, f"the hung PACS held the step {took_web:.0f} s"
    assert dimse["status"] == "pending" and "does not answer" in dimse["error"], dimse
    assert [s["inference"] for s in dimse["series"]] == ["skipped: results waiting in outbox"]
    assert source["status"] == "failed" and "did not answer within 2 s (read study" in source["error"], source
    assert len(list((work / "outbox").rglob("*.dcm"))) == 2
    code, (flushed,) = run_step(step_args(bundle, [], orthanc.url, work, weights))
    assert code == 0 and flushed["status"] == "stored" and flushed["source"] == "outbox", flushed
    for o in outputs_of(flushed).values():
        assert instances_in(client(orthanc), o["series_instance_uid"]) == [o["sop_instance_uid"]]


def test_http_5xx_on_store_is_retried_then_kept_until_the_pacs_stores_again(tmp_path, orthanc, weights):
    """STOW-RS answers 503 (reads still work, through a proxy in front of Orthanc): retried with backoff,
    "pending", nothing lost; when storing works again the next run stores each object once."""
    bundle, work = make_bundle(tmp_path, "1.0.6-5xx"), tmp_path / "work"
    with FailingStoreProxy(f"http://127.0.0.1:{orthanc.http_port}", 503) as proxy:
        code, (record,) = run_step(step_args(bundle, [str(CT5N)], proxy.url(), work, weights))
        assert code == 1 and record["status"] == "pending", record
        assert "is unavailable (HTTP 503: storage temporarily unavailable (test))" in record["error"]
        assert "gave up after 3 attempt(s)" in record["error"] and proxy.refused_posts == 3  # retried, then the next object waits
        assert len(list((work / "outbox").rglob("*.dcm"))) == 2
        proxy.failing = False
        code, (again,) = run_step(step_args(bundle, [str(CT5N)], proxy.url(), work, weights))
    assert code == 0 and again["status"] == "stored", again
    assert [s["inference"] for s in again["series"]] == ["skipped: results waiting in outbox"]  # the model did not run again
    for o in outputs_of(again).values():
        assert o["status"] == "stored"
        assert instances_in(client(orthanc), o["series_instance_uid"]) == [o["sop_instance_uid"]]
    assert not list((work / "outbox").rglob("*.dcm"))


def test_a_full_work_disk_is_reported_and_leaves_nothing_half_written(tmp_path, orthanc, weights):
    """The work folder on a small tmpfs (mounted in this test's private mount namespace), filled to the
    last byte: a real ENOSPC wherever the step writes. The study fails with the folder and the fix, no
    partial file stays, the JSON line still reaches stdout; with space again, the next run stores it."""
    bundle, work = make_bundle(tmp_path, "1.0.7-disk"), tmp_path / "work"
    work.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(work)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs in the test namespace: {mounted.stderr}"
    try:
        filler = work / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill it: the writes below get ENOSPC, as on a full disk
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == 28, e
        code, (record,) = run_step(step_args(bundle, [str(CT5N)], orthanc.url, work, weights))
        assert code == 1 and record["status"] == "failed", record
        assert "No space left on device" in record["error"] and "the work folder is full" in record["error"], record
        assert "--work-dir" in record["error"]
        leftovers = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name != "filler")
        assert leftovers in ([".lock", "outbox", "pipeline.jsonl"], [".lock", "outbox"]), leftovers  # no scratch, no partial outputs
        assert not (work / "pipeline.jsonl").exists() or all(json.loads(ln) for ln in (work / "pipeline.jsonl").read_text().splitlines())
        filler.unlink()
        code, (again,) = run_step(step_args(bundle, [str(CT5N)], orthanc.url, work, weights))
        assert code == 0 and again["status"] == "stored", again
        for o in outputs_of(again).values():
            assert instances_in(client(orthanc), o["series_instance_uid"]) == [o["sop_instance_uid"]]
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)


def test_two_runs_at_once_on_one_work_folder(tmp_path, orthanc, weights):
    """A second run on a work folder in use is refused at once (exit 2, the first run's pid); the first
    run finishes undisturbed and stores its study once."""
    bundle, work = make_bundle(tmp_path, "1.0.8-twice"), tmp_path / "work"
    args = step_args(bundle, [str(CT5N)], orthanc.url, work, weights)
    first = start_step(args)
    log: list[str] = []
    try:
        for line in first.stderr:
            log.append(line)
            if "running bundle" in line:
                break
        assert any("running bundle" in ln for ln in log), "".join(log[-30:])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code, lines = run_step(args)
        assert code == 2 and lines == [], err.getvalue()
        assert f"Another pipeline run (pid {first.pid}) is using" in err.getvalue()
        out, rest = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, "".join(log[-20:]) + rest[-3000:]
    (record,) = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert record["status"] == "stored"
    assert [json.loads(ln)["status"] for ln in (work / "pipeline.jsonl").read_text().splitlines()] == ["stored"]
    for o in outputs_of(record).values():
        assert instances_in(client(orthanc), o["series_instance_uid"]) == [o["sop_instance_uid"]]


# -- fault injection: SIGKILL at random points of a batch, then a re-run --------------------------------------
def batch_of_studies(folder: Path, n: int, salt: str) -> list[str]:
    """``n`` studies made of CT5N's slices with new Study/Series/SOP/Frame of Reference UIDs, one folder each."""
    from pydicom.uid import generate_uid

    studies = []
    for k in range(n):
        key = ["medcam-monai fault injection", salt, str(k)]
        study, series, frame = (generate_uid(entropy_srcs=[*key, what]) for what in ("study", "series", "frame"))
        dest = folder / f"study{k}"
        dest.mkdir(parents=True)
        for f in sorted(CT5N.iterdir()):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[*key, f.name])
            ds.save_as(dest / f.name, enforce_file_format=True)
        studies.append(study)
    return studies


def tree_state(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under ``root`` but ``skip``: kind, size, modification time, bytes of files."""
    state = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        st = p.lstat()
        state[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return state


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fault_injection_sigkill_at_random_points_then_rerun(tmp_path, orthanc, weights, seed):
    """The step is SIGKILLed (with its process group) after a random number of log lines plus a random
    delay while it works through a batch of three studies, then run again to the end. Every study ends
    stored exactly once in the PACS and with one final OK status in pipeline.jsonl; the work folder
    holds nothing but its log, lock and empty outbox; nothing outside it changed."""
    rng = random.Random(seed)
    bundle = make_bundle(tmp_path, f"2.0.{seed}-fault")
    studies = batch_of_studies(tmp_path / "batch", 3, f"seed {seed}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious.txt").write_text("not the pipeline's")
    work = tmp_path / "work"
    args = step_args(bundle, [str(tmp_path / "batch")], orthanc.url, work, weights)
    args.remove("--keep-sent")  # stored objects leave the work folder: nothing may stay behind
    before = tree_state(tmp_path, work)

    lines, pause = rng.randint(1, 30), rng.uniform(0.0, 1.5)
    proc = start_step(args)
    seen, last = 0, ""
    for last in proc.stderr:
        seen += 1
        if seen >= lines:
            break
    time.sleep(pause)
    killed = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    print(f"seed {seed}: killed={killed} {pause:.2f} s after log line {seen}: {last.strip()[-150:]}")
    assert tree_state(tmp_path, work) == before, "the killed run changed something outside its work folder"

    code, records = run_step(args)
    assert code == 0, records
    assert sorted(r["study_instance_uid"] for r in records) == sorted(studies)
    assert all(r["status"] in ("stored", "already_stored") for r in records), records
    assert tree_state(tmp_path, work) == before, "the re-run changed something outside its work folder"

    log = [json.loads(ln) for ln in (work / "pipeline.jsonl").read_text().splitlines()]  # every line whole
    final = {}
    for r in log:
        final[r["study_instance_uid"]] = r["status"]
    assert final == {s: final[s] for s in studies} and set(final.values()) <= {"stored", "already_stored"}, log
    stored_lines = [o["sop_instance_uid"] for r in log for s in r["series"] for o in s.get("outputs", []) if o["status"] == "stored"]
    assert len(stored_lines) == len(set(stored_lines)), "an object was reported stored twice"
    web = client(orthanc)
    for r in records:
        expected = sorted(o["sop_instance_uid"] for o in outputs_of(r).values())
        assert len(expected) == 2
        in_pacs = sorted(pydicom.Dataset.from_json(f).SOPInstanceUID
                         for f in web.search_for_instances(study_instance_uid=r["study_instance_uid"]))
        assert in_pacs == expected, f"study {r['study_instance_uid']}: PACS holds {in_pacs}, expected {expected}"
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert left == [".lock", "outbox", "pipeline.jsonl"], left
