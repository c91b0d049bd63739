"""ExplanationHandler inside a real MONAI SupervisedEvaluator (tiny network, few Med-CAM steps)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd, Compose, EnsureTyped, Resized
from torch import nn

from medcam_monai.errors import InputError
from medcam_monai.explanation import Explanation
from medcam_monai.handlers import ExplanationHandler
from medcam_monai.io.formats import case_id
from medcam_monai.hooks import LayerNotFoundError

MEDCAM = {"steps": 3, "early_stopping": None, "progress": False}


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def make_loader(n=4, size=40, batch_size=2):
    rng = np.random.default_rng(0)
    data = [
        {"image": rng.random((1, size, size), dtype=np.float32), "label": i % 3, "name": f"case{i}"}
        for i in range(n)
    ]
    for i, d in enumerate(data):
        d["image_meta_dict"] = {"filename_or_obj": f"/data/case{i}.png"}
    preprocessing = Compose(
        [
            EnsureTyped(keys="image", track_meta=True),
            Resized(keys="image", spatial_size=(32, 32)),
        ]
    )
    dataset = Dataset(data=[{"image": d["image"], "label": d["label"]} for d in data], transform=preprocessing)
    return DataLoader(dataset, batch_size=batch_size, num_workers=0), preprocessing


def run_evaluator(network, handler, decollate=True, n=4, batch_size=2, loader=None, inferer=None):
    loader = loader or make_loader(n=n, batch_size=batch_size)[0]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        inferer=inferer or SimpleInferer(),
        # Activationsd's softmax is per case (dim 0): only meaningful on decollated outputs
        postprocessing=Activationsd(keys="pred", softmax=True) if decollate else None,
        val_handlers=[handler],
        decollate=decollate,
    )
    evaluator.run()
    return evaluator


def snapshot(network):
    return (
        {k: v.clone() for k, v in network.state_dict().items()},
        [p.requires_grad for p in network.parameters()],
        [m.training for m in network.modules()],
    )


@pytest.mark.parametrize("decollate", [True, False])
def test_records_per_case_in_evaluator_and_model_unchanged(tmp_path, decollate):
    net = tiny_classifier()
    before = snapshot(net)
    handler = ExplanationHandler("medcam", MEDCAM, output_dir=tmp_path / "out")
    run_evaluator(net, handler, decollate=decollate)
    records = json.loads((tmp_path / "out" / "explanations.json").read_text())
    assert len(records) == 4 and len(list((tmp_path / "out" / "records").glob("*.json"))) == 4
    for r in records:
        assert r["method"] == "medcam" and r["kind"] == "mask"
        assert r["steps"] == 3 and 0 <= r["scores"]["area_fraction"] <= 1
        assert r["pred_class"] == r["target"] == int(np.argmax(r["pred"]))  # explains the decision
        assert r["rank"] == 0 and r["label"] in (0, 1, 2)
    after = snapshot(net)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


def test_target_label_and_custom_writer_gets_one_case(tmp_path):
    seen = []

    def writer(explanation, source, path):
        assert isinstance(explanation, Explanation) and len(explanation) == 1
        assert source.shape == (1, 32, 32) and explanation.map.shape == (1, 1, 32, 32)
        seen.append(int(explanation.target[0, 0]))
        torch.save(explanation.map, path.with_suffix(".pt"))
        return path.with_suffix(".pt")

    handler = ExplanationHandler("medcam", MEDCAM, writers=[writer], target="label", output_dir=tmp_path)
    run_evaluator(tiny_classifier(), handler)
    assert seen == [0, 1, 2, 0]  # the labels, not the predictions
    for r in handler.all_records:
        assert r["target"] == r["label"]
        assert r["outputs"]["writer"].endswith(".pt")


def test_registered_writers_put_the_map_on_the_source_grid(tmp_path):
    import nibabel as nib
    from PIL import Image

    from medcam_monai.io import LoadImageSourced

    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        files.append({"image": str(tmp_path / f"fundus {i}.png"), "label": i})
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(files[-1]["image"])
    preprocessing = Compose(
        [
            LoadImageSourced(keys="image", grayscale=True),
            Resized(keys="image", spatial_size=(32, 32)),
            EnsureTyped(keys="image", dtype=torch.float32),
        ]
    )
    loader = DataLoader(Dataset(files, transform=preprocessing), batch_size=2)
    handler = ExplanationHandler("medcam", MEDCAM, writers=["nifti", "png"], output_dir=tmp_path / "out")
    run_evaluator(tiny_classifier(), handler, loader=loader)
    assert sorted(r["case_id"] for r in handler.all_records) == ["fundus_0", "fundus_1"]
    for r in handler.all_records:
        nifti = nib.load(r["outputs"]["nifti"])
        assert sorted(nifti.shape[:2]) == [40, 48]  # the source grid, not the 32x32 network input
        assert r["outputs"]["png"].endswith(f"png/{r['case_id']}.png")
        assert Image.open(r["outputs"]["png"]).size[0] > 0


def test_writer_errors_can_be_logged_instead_of_raised(tmp_path):
    def broken(explanation, source, path):
        raise ValueError("no DICOM source")

    handler = ExplanationHandler("medcam", MEDCAM, writers=[broken], writer_errors="warn", output_dir=tmp_path)
    run_evaluator(tiny_classifier(), handler, n=2)
    assert [r["outputs"]["broken"] for r in handler.all_records] == [None, None]
    handler = ExplanationHandler("medcam", MEDCAM, writers=[broken], output_dir=tmp_path)
    with pytest.raises(ValueError, match="no DICOM source"):
        run_evaluator(tiny_classifier(), handler, n=2)


def test_segmentation_cam_reuses_the_evaluators_sliding_window_inferer(tmp_path):
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)
    inferer = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.25)
    handler = ExplanationHandler(
        "seg_hires_grad_cam", {"relu": True}, target=1, call_kwargs={"pixels": "image"}, output_dir=tmp_path
    )
    run_evaluator(net, handler, n=2, inferer=inferer)
    assert handler.explainer.inferer is inferer
    for r in handler.all_records:
        assert r["method"] == "seg_hires_grad_cam" and r["kind"] == "heatmap" and r["target"] == 1
        window = r["settings"]["sliding_window"]
        assert window["roi_size"] == [16, 16] and window["windows"] > 1  # the 32x32 input, window by window
        assert r["scores"]["pixels"] == 32 * 32  # the whole-image pixel set from call_kwargs


def test_unwraps_ddp(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        net = tiny_classifier()
        ddp = nn.parallel.DistributedDataParallel(net)
        handler = ExplanationHandler("medcam", MEDCAM, output_dir=tmp_path / "out")
        run_evaluator(ddp, handler, n=2)
        assert len(handler.all_records) == 2
    finally:
        torch.distributed.destroy_process_group()
        import ignite.distributed as idist

        idist.sync()  # ignite keeps the destroyed group otherwise: later CheckpointSavers in this worker ask it for ranks


def test_torchscript_network_is_refused_with_the_reason(tmp_path):
    scripted = torch.jit.script(tiny_classifier())
    handler = ExplanationHandler("medcam", MEDCAM, output_dir=tmp_path)
    with pytest.raises(TypeError, match="TorchScript.*hooks.*model.pt"):
        run_evaluator(scripted, handler, n=2)


def test_wrong_layer_fails_before_first_case_with_near_names(tmp_path):
    handler = ExplanationHandler("medcam", {**MEDCAM, "layer": ["3x"]}, output_dir=tmp_path)
    with pytest.raises(LayerNotFoundError, match="Nearest valid names"):
        run_evaluator(tiny_classifier(), handler, n=2)
    assert handler.records == []


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    handler = ExplanationHandler("medcam", MEDCAM, output_dir=blocker / "explanations")
    with pytest.raises(InputError, match="Cannot write to output folder"):
        run_evaluator(tiny_classifier(), handler, n=2)


def test_bad_names_are_refused_early():
    with pytest.raises(ValueError, match="Unknown explainer"):
        ExplanationHandler("gradcam++")
    with pytest.raises(ValueError, match="target must be"):
        ExplanationHandler("medcam", target="truth")


def test_case_id_from_source_names():
    assert case_id("/x/y/patient 1.nii.gz", "fallback") == "patient_1"
    assert case_id(None, "fallback") == "fallback"
    assert case_id("/dicom/CT5N/", "f") == "CT5N"


# -- any bundle: the explainer chosen by task, stock loaders, a shared output folder --------------------------------
def tiny_segmenter(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)


@pytest.mark.parametrize("metadata", [True, False])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_auto_explainer_from_metadata_or_from_the_networks_output(tmp_path, task, metadata):
    meta = {"network_data_format": {"outputs": {"pred": {"type": "probabilities", "format": "classes"} if task == "classification"
                                                 else {"type": "image", "format": "segmentation"}}}} if metadata else None
    net = tiny_classifier() if task == "classification" else tiny_segmenter()
    kwargs = {"explainer_kwargs": MEDCAM} if task == "classification" else {"call_kwargs": {"pixels": "image"}}
    handler = ExplanationHandler("auto", metadata=meta, output_dir=tmp_path, **kwargs)
    run_evaluator(net, handler, n=2)
    assert handler.task == task
    expected = "medcam" if task == "classification" else "seg_hires_grad_cam"
    assert handler.method == expected and [r["method"] for r in handler.all_records] == [expected] * 2


def test_stock_loader_maps_are_inverted_with_the_io_contract(tmp_path, monkeypatch):
    """Inputs without a source reference of ours (stock LoadImaged) go through
    ``medcam_monai.io.invert_to_source(explanation, image, preprocessing)`` before the writers."""
    import medcam_monai.io

    calls, written = [], []

    def invert_to_source(explanation, image, preprocessing, key="image"):
        calls.append((explanation, image, preprocessing))
        return explanation

    def writer(explanation, source, path):
        written.append((explanation, source))
        return None

    monkeypatch.setattr(medcam_monai.io, "invert_to_source", invert_to_source, raising=False)
    loader, preprocessing = make_loader(n=2)
    handler = ExplanationHandler("medcam", MEDCAM, writers=[writer], preprocessing=preprocessing, output_dir=tmp_path)
    run_evaluator(tiny_classifier(), handler, loader=loader)
    assert len(calls) == 2 and all(p is preprocessing for _, _, p in calls)
    assert [e for e, _ in written] == [e for e, _, _ in calls] and all(s is img for (_, s), (_, img, _) in zip(written, calls))


def _put_many(folder: str, prefix: str, n: int) -> None:
    from medcam_monai.handlers import RecordStore

    store = RecordStore(folder)
    store.begin()
    for i in range(n):
        store.put({"case_id": f"{prefix}{i:02d}", "status": "ok", "rank": 0})
    store.end()


def test_record_store_keeps_every_case_of_concurrent_runs(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_put_many, args=(str(tmp_path), prefix, 24)) for prefix in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cases = [r["case_id"] for r in json.loads((tmp_path / "explanations.json").read_text())]
    assert cases == sorted(f"{p}{i:02d}" for p in "ab" for i in range(24))  # 48 of 48, each once


def test_record_store_moves_a_case_between_index_and_failures_and_repairs_from_records(tmp_path):
    from medcam_monai.handlers import RecordStore

    store = RecordStore(tmp_path)
    store.begin()
    store.put({"case_id": "x", "status": "failed", "error": "boom"})
    assert json.loads((tmp_path / "failures.json").read_text())[0]["case_id"] == "x"
    store.put({"case_id": "x", "status": "ok"})
    assert not (tmp_path / "failures.json").exists() and json.loads((tmp_path / "explanations.json").read_text())[0]["case_id"] == "x"
    store.end()
    # a record whose index entry was lost (killed between the two writes) and a truncated index
    (tmp_path / "records" / "y.json").write_text(json.dumps({"case_id": "y", "status": "ok"}))
    (tmp_path / "explanations.json").write_text('[{"case_id": "x"')
    RecordStore(tmp_path).begin()
    assert [r["case_id"] for r in json.loads((tmp_path / "explanations.json").read_text())] == ["x", "y"]


def test_leftovers_are_removed_only_when_no_other_run_is_active(tmp_path):
    import fcntl

    from medcam_monai.handlers import RecordStore

    (tmp_path / "png").mkdir()
    leftover = tmp_path / "png" / ".case.png.abc123.part.png"
    leftover.write_bytes(b"half")
    keep = tmp_path / "png" / "case.png"
    keep.write_bytes(b"done")
    fd = os.open(tmp_path / ".medcam-run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # another run is writing here
    try:
        other = RecordStore(tmp_path)
        other.begin()
        assert leftover.exists()  # it may be that run's file in the making
        other.end()
    finally:
        os.close(fd)
    store = RecordStore(tmp_path)
    store.begin()
    store.end()
    assert not leftover.exists() and keep.read_bytes() == b"done"


def test_a_constant_case_is_refused_and_the_others_explained(tmp_path):
    data = [{"image": np.full((1, 32, 32), 0.5, np.float32)}, {"image": np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)}]
    loader = DataLoader(Dataset(data, transform=EnsureTyped(keys="image", track_meta=True)), batch_size=2)
    handler = ExplanationHandler("medcam", MEDCAM, case_errors="skip", output_dir=tmp_path)
    run_evaluator(tiny_classifier(), handler, loader=loader)
    assert len(handler.all_records) == 1 and len(handler.all_failures) == 1
    assert "constant (every value is 0.5" in handler.all_failures[0]["error"]
    with pytest.raises(InputError, match="constant"):
        run_evaluator(tiny_classifier(), ExplanationHandler("medcam", MEDCAM, output_dir=tmp_path / "raise"), loader=loader)


def test_an_input_the_network_cannot_take_is_named_before_the_evaluators_forward(tmp_path):
    from medcam_monai.checks import NetworkInputError

    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    handler = ExplanationHandler("medcam", MEDCAM, output_dir=tmp_path)
    with pytest.raises(NetworkInputError, match=r"1 channel\(s\).*in_channels=3.*--rgb"):
        run_evaluator(rgb, handler, n=2)


def test_mask_file_pixel_set_is_resampled_onto_the_network_input(tmp_path):
    import nibabel as nib
    from monai.data import MetaTensor

    # the network input: a 2x-downsampled copy of a 40x40 source (affine diag(2, 2))
    image = MetaTensor(torch.rand(1, 20, 20), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])))
    mask = np.zeros((40, 40), np.uint8)
    mask[:20, :10] = 1  # 20 x 10 source pixels = 10 x 5 network pixels
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    loader = DataLoader(Dataset([{"image": image}]), batch_size=1)
    handler = ExplanationHandler("seg_hires_grad_cam", pixels={"mask": str(tmp_path / "mask.nii.gz")}, target=1, output_dir=tmp_path / "out")
    run_evaluator(tiny_segmenter(), handler, loader=loader)
    (r,) = handler.all_records
    assert r["settings"]["pixels"]["type"] == "Mask" and r["scores"]["pixels"] == 50
