"""Bad input, faults and hostile bundles on the `medcam-monai explain` path (issues 11 and 14).

Each test named ``test_issue14_<n>_...`` reproduces a finding of issue 14 and failed on the code
before the fix; ``test_issue11_...`` are the errors issue 11 asks for. Input problems exit with 2
and one message that names the problem and the command-line fix; nothing half-written is left.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medcam_monai.bundle import BUNDLES_DIR
from medcam_monai.cli import main

try:  # tests/ is a package in this repository; keep working if it is not
    from ._bundle_support import ENV, train_tiny, write_zoo_bundle, zoo_classification_config, zoo_metadata, zoo_segmentation_config
    from ._io_support import MR2_MIXED
except ImportError:
    from _bundle_support import ENV, train_tiny, write_zoo_bundle, zoo_classification_config, zoo_metadata, zoo_segmentation_config
    from _io_support import MR2_MIXED

UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16], "strides": [2, 2],
        "num_res_units": 1, "norm": "batch"}
RESNET = {"_target_": "monai.networks.nets.resnet10", "spatial_dims": 2, "n_input_channels": 3, "num_classes": 3}


@pytest.fixture(scope="module")
def fundus(tmp_path_factory):
    """fundus_resnet18 (RGB classifier) trained for one tiny epoch."""
    root = tmp_path_factory.mktemp("fundus")
    train_tiny("fundus_resnet18", root)
    return root


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """brain_mri_mobilenet_v2 (one-channel 2D classifier, intensity window 0..255) trained for one tiny epoch."""
    root = tmp_path_factory.mktemp("brain")
    train_tiny("brain_mri_mobilenet_v2", root)
    return root


@pytest.fixture(scope="module")
def kidney(tmp_path_factory):
    """kidney_ct_unet3d (3D segmentation, sliding window) trained for one tiny epoch."""
    root = tmp_path_factory.mktemp("kidney")
    train_tiny("kidney_ct_unet3d", root)
    return root


@pytest.fixture(scope="module")
def zoo_seg(tmp_path_factory):
    return write_zoo_bundle(tmp_path_factory.mktemp("zoo") / "seg", zoo_segmentation_config(UNET, [16, 16, 16]), zoo_metadata("segmentation", 3))


def photos(folder: Path, n: int, seed: int = 0, prefix: str = "eye") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype(np.uint8)).save(folder / f"{prefix}_{i:02d}.png")
    return folder


def volume(path: Path, shape=(24, 20, 12), affine=None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    nib.save(nib.Nifti1Image((rng.random(shape) * 400 - 100).astype(np.float32), np.diag([1.5, 2.0, 3.0, 1.0]) if affine is None else affine), path)
    return path


def explain(bundle: str, root: Path | None, inputs, out: Path, *extra: str) -> int:
    args = ["explain", bundle, str(inputs), "--output", str(out), "--image-size", "32", *extra]
    if root is not None:
        args += ["--bundle-root", str(root)]
    return main(args)


def index(out: Path) -> list[dict]:
    return json.loads((out / "explanations" / "explanations.json").read_text())


def one_error(err: str) -> str:
    """The one error message of a failed command (from its line to the end; no traceback)."""
    assert "Traceback" not in err
    assert err.count("medcam-monai: error:") == 1, err
    return err[err.index("medcam-monai: error:"):]


# -- 3. bundle names, code execution and credentials --------------------------------------------------------------
def _hostile_bundle(folder: Path, marker: Path, expression: str) -> Path:
    """A model-zoo bundle whose config writes ``expression``'s value to ``marker`` when it is initialised."""
    config = zoo_segmentation_config(UNET, [16, 16, 16])
    config["initialize"].insert(0, f"$open({str(marker)!r}, 'w').write(str({expression}))")
    return write_zoo_bundle(folder, config, zoo_metadata("segmentation", 3))


def test_issue14_3_a_local_folder_never_shadows_a_project_bundle_name(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran.txt"
    _hostile_bundle(tmp_path / "fundus_resnet18", marker, "'shell command ran'")
    monkeypatch.chdir(tmp_path)
    code = main(["explain", "fundus_resnet18", str(photos(tmp_path / "in", 1)), "--output", str(tmp_path / "out"),
                 "--bundle-root", str(tmp_path / "untrained")])
    captured = capsys.readouterr()
    assert not marker.exists()  # the local folder's config never ran
    assert f"bundle: {(BUNDLES_DIR / 'fundus_resnet18').resolve()} (one of the project's bundles)" in captured.out
    assert code == 2 and "No weights" in captured.err  # the project bundle, untrained at --bundle-root
    # the folder is used only when given as a path
    assert main(["explain", "./fundus_resnet18", str(volume(tmp_path / "ct.nii.gz")), "--output", str(tmp_path / "out2"),
                 "--writers", "none", "--trust-bundle"]) == 0
    assert f"bundle: {(tmp_path / 'fundus_resnet18').resolve()} (given as a path)" in capsys.readouterr().out
    assert marker.read_text() == "shell command ran"


def test_issue14_3_bundles_from_outside_the_project_warn_that_configs_run_code(zoo_seg, tmp_path, capsys):
    ct = volume(tmp_path / "ct.nii.gz")
    assert main(["explain", str(zoo_seg), str(ct), "--output", str(tmp_path / "a"), "--writers", "none"]) == 0
    err = capsys.readouterr().err
    assert "GHSA-873f-pvrv-4x83" in err and "run code" in err and "--trust-bundle" in err
    assert main(["explain", str(zoo_seg), str(ct), "--output", str(tmp_path / "b"), "--writers", "none", "--trust-bundle"]) == 0
    assert "GHSA" not in capsys.readouterr().err


def test_issue14_3_pacs_password_is_not_in_the_environment_of_bundle_expressions(tmp_path):
    marker = tmp_path / "seen.txt"
    bundle = _hostile_bundle(tmp_path / "zoo", marker, "os.environ.get('MEDCAM_PACS_PASSWORD')")
    proc = subprocess.run([sys.executable, "-m", "medcam_monai.cli", "explain", str(bundle), str(volume(tmp_path / "ct.nii.gz")),
                           "--output", str(tmp_path / "out"), "--writers", "none"],
                          capture_output=True, text=True, env={**ENV, "MEDCAM_PACS_PASSWORD": "s3cret"}, timeout=600)
    assert marker.read_text() == "None"  # the bundle's expression ran, without the password in reach
    assert proc.returncode == 0, proc.stderr[-3000:]


# -- 6. records and index ---------------------------------------------------------------------------------------
def test_issue14_6_two_runs_into_one_output_folder_keep_all_cases(fundus, tmp_path):
    first, second = photos(tmp_path / "a", 6, seed=0, prefix="a"), photos(tmp_path / "b", 6, seed=1, prefix="b")
    out = tmp_path / "out"

    def command(folder: Path) -> list[str]:
        return [sys.executable, "-m", "medcam_monai.cli", "explain", "fundus_resnet18", str(folder), "--output", str(out),
                "--bundle-root", str(fundus), "--image-size", "32", "--steps", "2", "--writers", "png"]

    # at the same time, into one folder
    runs = [subprocess.Popen(command(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for folder in (first, second)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    cases = sorted(r["case_id"] for r in index(out))
    assert cases == sorted([f"a_{i:02d}" for i in range(6)] + [f"b_{i:02d}" for i in range(6)])
    assert sorted(p.stem for p in (out / "explanations" / "records").glob("*.json")) == cases


def test_issue14_6_a_full_disk_is_reported_with_the_path_and_what_was_kept(fundus, tmp_path, monkeypatch, capsys):
    """The second case's PNG fails with ENOSPC when moved into place: the run stops with the path and what is kept,
    and every file left is complete (the index is valid JSON listing the case written before)."""
    out = tmp_path / "out"
    real_replace, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if str(out) in str(dst) and str(dst).endswith(".png"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code = explain("fundus_resnet18", fundus, photos(tmp_path / "in", 3), out, "--steps", "2", "--writers", "png")
    err = capsys.readouterr().err
    assert code == 2
    line = one_error(err)
    assert "No space left on device" in line and str(calls[-1]) in line and "Kept: 1 explained case(s)" in line
    monkeypatch.setattr(os, "replace", real_replace)
    kept = index(out)
    assert [r["case_id"] for r in kept] == ["eye_00"]
    for path in (out / "explanations").rglob("*.json"):
        json.loads(path.read_text())  # nothing truncated
    assert not [p for p in out.rglob("*") if ".part" in p.name]


# -- 7. bad files in a batch, hidden files, killed runs ---------------------------------------------------------
def test_issue14_7_an_unreadable_file_is_skipped_and_reported_and_the_rest_is_done(fundus, tmp_path, capsys):
    folder = photos(tmp_path / "in", 3)
    (folder / "eye_99.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out"
    assert explain("fundus_resnet18", fundus, folder, out, "--steps", "2", "--writers", "png") == 2
    err = capsys.readouterr().err
    assert "1 of 4 case(s) not explained" in err and "eye_99.png" in err and "Traceback" not in err
    assert [r["case_id"] for r in index(out)] == ["eye_00", "eye_01", "eye_02"]
    (failed,) = json.loads((out / "explanations" / "failures.json").read_text())
    assert failed["case_id"] == "eye_99" and failed["input_problem"] is True
    # --fail-fast: the old behaviour, the first bad file stops the run before anything is explained
    assert explain("fundus_resnet18", fundus, folder, tmp_path / "fast", "--steps", "2", "--writers", "png", "--fail-fast") == 2
    assert "eye_99.png" in one_error(capsys.readouterr().err)
    assert not (tmp_path / "fast" / "explanations" / "explanations.json").exists()


def test_issue14_7_hidden_files_and_part_leftovers_are_not_cases(fundus, tmp_path):
    folder = photos(tmp_path / "in", 2)
    (folder / "._eye_00.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS metadata
    Image.open(folder / "eye_00.png").save(folder / ".eye_00.png.x1y2.part.png")  # a killed run's leftover
    out = tmp_path / "out"
    assert explain("fundus_resnet18", fundus, folder, out, "--steps", "2", "--writers", "png") == 0
    assert [r["case_id"] for r in index(out)] == ["eye_00", "eye_01"]


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file() and skip not in p.parents}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fault_injection_killed_runs_end_with_every_case_once_and_no_stray_files(fundus, tmp_path, seed):
    """Fault injection: SIGKILL the command at a random point of a batch, then run it again."""
    rng = random.Random(seed)
    folder = photos(tmp_path / "in", 5, seed=seed)
    out = tmp_path / "out"
    before = {**_tree(tmp_path, out), **_tree(fundus, out)}
    cmd = [sys.executable, "-m", "medcam_monai.cli", "explain", "fundus_resnet18", str(folder), "--output", str(out),
           "--bundle-root", str(fundus), "--image-size", "32", "--steps", "3", "--writers", "png", "nifti"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    records = out / "explanations" / "records"
    done_before_kill = rng.randrange(5)  # kill while case `done_before_kill` is being explained or written
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if (len(list(records.glob("*.json"))) if records.is_dir() else 0) >= done_before_kill:
            break
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    cases = [r["case_id"] for r in index(out)]
    assert cases == [f"eye_{i:02d}" for i in range(5)]  # every case exactly once
    for r in index(out):
        assert all(Path(p).is_file() for p in r["outputs"].values())
    stray = [p for p in out.rglob("*") if p.is_file() and (".part" in p.name or p.name.startswith(".medcam_write_test"))]
    assert stray == []
    assert {**_tree(tmp_path, out), **_tree(fundus, out)} == before  # nothing outside the output folder was touched


# -- 11. constant inputs ------------------------------------------------------------------------------------------
def test_issue14_11_a_16bit_png_clipped_to_a_constant_is_refused_naming_the_step(brain, tmp_path, capsys):
    image = tmp_path / "mri16.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 60000 + 3000).astype(np.uint16)).save(image)
    assert explain("brain_mri_mobilenet_v2", brain, image, tmp_path / "out", "--steps", "2") == 2
    line = one_error(capsys.readouterr().err)
    assert "constant" in line and "ScaleIntensityRanged" in line and "a_max=255" in line and "--override preprocessing#transforms#2" in line
    assert not (tmp_path / "out" / "explanations" / "png").exists()  # no silent result
    # the fix it names works
    assert explain("brain_mri_mobilenet_v2", brain, image, tmp_path / "ok", "--steps", "2",
                   "--override", "preprocessing#transforms#2#a_max=65535") == 0


def test_issue14_11_a_one_pixel_image_is_refused(brain, tmp_path, capsys):
    image = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1), 120, np.uint8)).save(image)
    assert explain("brain_mri_mobilenet_v2", brain, image, tmp_path / "out", "--steps", "2") == 2
    line = one_error(capsys.readouterr().err)
    assert "constant" in line and "source image itself is constant" in line


# -- 12. input problems: exit 2, one message, a fix on the command line ------------------------------------------------
def test_issue14_12_a_4d_nifti_names_shape_and_in_channels_and_volume_fixes_it(kidney, tmp_path, capsys):
    image = volume(tmp_path / "fmri.nii.gz", shape=(40, 40, 36, 3))
    assert explain("kidney_ct_unet3d", kidney, image, tmp_path / "out") == 2
    line = one_error(capsys.readouterr().err)
    assert "3 channel(s)" in line and "in_channels=1" in line and "--volume N" in line
    assert explain("kidney_ct_unet3d", kidney, image, tmp_path / "ok", "--volume", "2", "--writers", "nifti") == 0


def test_issue14_12_a_volume_into_a_2d_bundle_offers_slice_which_places_the_map_in_the_volume(brain, tmp_path, capsys):
    image = volume(tmp_path / "mr.nii.gz", shape=(40, 36, 10))
    assert explain("brain_mri_mobilenet_v2", brain, image, tmp_path / "out", "--steps", "2") == 2
    line = one_error(capsys.readouterr().err)
    assert "3D volume" in line and "2D" in line and "--slice K (0..9)" in line
    out = tmp_path / "ok"
    assert explain("brain_mri_mobilenet_v2", brain, image, out, "--steps", "2", "--slice", "4", "--writers", "nifti",
                   "--override", "preprocessing#transforms#3#a_max=300") == 0
    (r,) = index(out)
    written = nib.load(r["outputs"]["nifti"])
    assert written.shape == (40, 36, 10)
    np.testing.assert_allclose(written.affine, nib.load(image).affine)
    data = np.asarray(written.dataobj)
    assert data[..., 4].any() and not np.delete(data, 4, axis=-1).any()  # the map sits in slice 4 only


def test_issue14_12_a_grey_image_into_an_rgb_network_offers_rgb(fundus, tmp_path, capsys):
    image = tmp_path / "grey.png"
    Image.fromarray((np.random.default_rng(0).random((40, 36)) * 255).astype(np.uint8)).save(image)
    assert explain("fundus_resnet18", fundus, image, tmp_path / "out", "--steps", "2") == 2
    line = one_error(capsys.readouterr().err)
    assert "1 channel(s)" in line and "in_channels=3" in line and "--rgb" in line
    assert explain("fundus_resnet18", fundus, image, tmp_path / "ok", "--steps", "2", "--rgb", "--writers", "png") == 0


@pytest.mark.parametrize("explainer", ["medcam", "grad_cam", "seg_hires_grad_cam"])
def test_issue14_12_an_image_without_batch_axis_to_the_python_api_names_the_fix(explainer):
    from medcam_monai.checks import NetworkInputError
    from medcam_monai.registry import build_explainer

    torch.manual_seed(0)
    if explainer == "seg_hires_grad_cam":
        from monai.networks.nets import UNet

        net = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()
        x = torch.randn(1, 32, 32)
    else:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 2)).eval()
        x = torch.rand(3, 32, 32)
    kwargs = {"steps": 1, "progress": False} if explainer == "medcam" else {}
    with pytest.raises(NetworkInputError, match=r"has shape \(\d+, 32, 32\).*no batch axis.*x\[None\]"):
        build_explainer(explainer, net, **kwargs)(x)


def test_issue14_12_a_nifti_header_declaring_10000_cubed_voxels_is_named(kidney, tmp_path, capsys):
    huge = tmp_path / "huge.nii"
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    img.header.set_data_shape((10000, 10000, 10000))
    with open(huge, "wb") as f:
        img.header.write_to(f)
        f.write(np.zeros(64, np.float32).tobytes())
    assert explain("kidney_ct_unet3d", kidney, huge, tmp_path / "out") == 2
    line = one_error(capsys.readouterr().err)
    assert "10000x10000x10000" in line and "GiB" in line and "608 bytes" in line


def test_issue14_12_input_problems_exit_2_with_one_line_and_a_traceback_only_on_request(kidney, tmp_path):
    image = volume(tmp_path / "fmri.nii.gz", shape=(40, 40, 36, 3))
    cmd = [sys.executable, "-m", "medcam_monai.cli", "explain", "kidney_ct_unet3d", str(image), "--bundle-root", str(kidney),
           "--output", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 2 and "--volume" in one_error(proc.stderr)
    assert len(proc.stderr.strip().splitlines()) < 10  # not ~120 lines of traceback
    debug = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "MEDCAM_DEBUG": "1"}, timeout=600)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_issue14_12_every_suggested_fix_is_a_command_line_flag(kidney, tmp_path, capsys):
    # several series in one DICOM folder: the message says --series-uid, and it works
    assert explain("kidney_ct_unet3d", kidney, MR2_MIXED, tmp_path / "out", "--writers", "nifti") == 2
    line = one_error(capsys.readouterr().err)
    assert "--series-uid" in line and "series_uid=" in line
    uid = line.split("SeriesInstanceUID=")[1].split()[0]
    assert explain("kidney_ct_unet3d", kidney, MR2_MIXED, tmp_path / "one", "--writers", "nifti", "--series-uid", uid,
                   "--target", "1", "--pixels", "image") == 0
    # NaN voxels: the message says --nan-to-num, and it works
    data = np.random.default_rng(0).random((40, 40, 36)).astype(np.float32) * 300
    data[5:9, 5:9, 5:9] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    assert explain("kidney_ct_unet3d", kidney, tmp_path / "nan.nii.gz", tmp_path / "nan", "--writers", "nifti") == 2
    assert "--nan-to-num" in one_error(capsys.readouterr().err)
    assert explain("kidney_ct_unet3d", kidney, tmp_path / "nan.nii.gz", tmp_path / "nan_ok", "--writers", "nifti", "--nan-to-num",
                   "--target", "1", "--pixels", "image") == 0


# -- issue 11: bundle problems say which file and what to do; nothing is written ------------------------------------
def _zoo(tmp_path: Path, name: str, edit=None, weights: bool = True) -> Path:
    config = zoo_segmentation_config(UNET, [16, 16, 16])
    if edit:
        edit(config)
    return write_zoo_bundle(tmp_path / name, config, zoo_metadata("segmentation", 3), weights=weights)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_inference", ["has no configs/inference.json", "model-zoo layout"]),
        ("no_weights", ["No weights at", "models/model.pt", "--weights FILE", "configs/train.json"]),
        ("bad_json", ["inference.json", "cannot be read", "JSONDecodeError", "line 2 column"]),
        ("bad_reference", ["fails to initialise", "@netwrk_def", "not defined"]),
        ("bad_argument", ["fails at 'preprocessing'", "pixdimm"]),
        ("dataset_by_expression", ["Cannot give your input", "dataloader", "fragment"]),
    ],
)
def test_issue11_bundle_problems_exit_2_naming_file_and_fix_and_write_nothing(tmp_path, capsys, case, expected):
    edits = {
        "bad_reference": lambda c: c.__setitem__("network", "$@netwrk_def.to(@device)"),
        "bad_argument": lambda c: c["preprocessing"]["transforms"][3].__setitem__("pixdimm", [2, 2, 2]),
        "dataset_by_expression": lambda c: c["dataloader"].__setitem__(
            "dataset", "$monai.data.Dataset(data=[{'image': i} for i in @datalist], transform=@preprocessing)"),
    }
    bundle = _zoo(tmp_path, case, edits.get(case), weights=case != "no_weights")
    if case == "no_inference":
        (bundle / "configs" / "inference.json").unlink()
    if case == "bad_json":
        (bundle / "configs" / "inference.json").write_text('{"network_def": 1,\n "x": }')
    out = tmp_path / "out"
    assert main(["explain", str(bundle), str(volume(tmp_path / "ct.nii.gz")), "--output", str(out), "--trust-bundle"]) == 2
    line = one_error(capsys.readouterr().err)
    assert all(text in line for text in expected), line
    assert not list(out.rglob("*.json")) and not list(out.rglob("*.nii*"))


def test_issue11_an_empty_pixel_set_says_what_is_predicted_where_and_writes_no_map(tmp_path, capsys):
    bundle = _zoo(tmp_path, "seg")
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    head = [k for k, v in state.items() if k.endswith("bias") and v.shape == (3,)][-1]
    state[head][2] = -1000.0  # class 2 is never predicted
    torch.save(state, bundle / "models" / "model.pt")
    out = tmp_path / "out"
    assert main(["explain", str(bundle), str(volume(tmp_path / "ct.nii.gz")), "--output", str(out), "--target", "2",
                 "--writers", "nifti", "--trust-bundle"]) == 2
    line = one_error(capsys.readouterr().err)
    assert "empty for class 2" in line and "predicts class 0" in line and "--pixels image" in line and "--pixels box:" in line
    assert not (out / "explanations" / "nifti").exists()  # no empty NIfTI
    assert index(out) == [] and json.loads((out / "explanations" / "failures.json").read_text())[0]["case_id"] == "ct"


@pytest.mark.parametrize("args, expected", [
    (["--method", "grad_cam"], "explains classification networks"),
    (["--steps", "3"], "Seg-HiRes-Grad CAM has none"),
])
def test_issue11_options_that_do_not_fit_the_bundle_are_refused_before_running(zoo_seg, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    assert main(["explain", str(zoo_seg), str(volume(tmp_path / "ct.nii.gz")), "--output", str(out), "--trust-bundle", *args]) == 2
    assert expected in one_error(capsys.readouterr().err)
    assert not (out / "explanations").exists()


def test_issue11_pixels_for_a_classifier_is_refused(tmp_path, capsys):
    bundle = write_zoo_bundle(tmp_path / "cls", zoo_classification_config(RESNET), zoo_metadata("classification", 3, 3))
    photo = photos(tmp_path / "in", 1) / "eye_00.png"
    assert main(["explain", str(bundle), str(photo), "--output", str(tmp_path / "out"), "--pixels", "image", "--trust-bundle"]) == 2
    assert "--pixels chooses where a segmentation" in one_error(capsys.readouterr().err)
