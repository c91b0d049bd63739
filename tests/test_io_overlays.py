"""NIfTI, PNG, 3D Slicer, whole-slide TIFF and GeoJSON writers; atomic writes; the registry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import slicerio
import tifffile
import torch
from _io_support import CT5N, explanation_on
from monai.data import MetaTensor, WSIReader
from monai.transforms import Compose, Invertd, Spacingd
from PIL import Image
from skimage.draw import polygon as fill_polygon

import medcam_monai.io as mio
from medcam_monai.io import (
    WRITERS,
    LoadDicomd,
    LoadImageSourced,
    LoadWSId,
    as_source_reference,
    write_geojson,
    write_nifti,
    write_png_overlay,
    write_slicer_seg,
    write_wsi_overlay,
)
from medcam_monai.io.png import TINTS, compose_panels, contrasting_colour


@pytest.fixture
def nifti_source(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.array([[-1.5, 0, 0, 40], [0, 2.0, 0, -30], [0, 0, 3.0, 10], [0, 0, 0, 1]])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((12, 10, 6)).astype(np.float32), affine), path)
    return path, affine


def test_nifti_overlay_after_spacing_matches_invertd(tmp_path, nifti_source):
    path, affine = nifti_source
    pre = Compose([LoadImageSourced("image"), Spacingd("image", pixdim=(0.75, 1.0, 1.5), mode="nearest")])
    d = pre({"image": str(path)})
    ref = as_source_reference(d["source_image"])
    assert ref.spatial_shape == (12, 10, 6) and np.allclose(ref.affine_array, affine)
    net = d["image"]
    heat = torch.zeros(net.shape)
    heat[0, 4:14, 6:12, 2:8] = 1.0  # 2x2x2 blocks of the source voxels (3:7, 3:6, 1:4)
    exp = explanation_on(net, heat.numpy(), "mask")
    out = write_nifti(exp, d["source_image"], tmp_path / "mask.nii.gz")
    img = nib.load(out)
    assert np.allclose(img.affine, affine) and img.shape == (12, 10, 6) and img.get_data_dtype() == np.uint8
    d["pred"] = MetaTensor(heat, meta=dict(net.meta), applied_operations=list(net.applied_operations))
    inv = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(d)["pred"]
    np.testing.assert_array_equal(np.asarray(img.dataobj), inv[0].numpy().astype(np.uint8))
    expected = np.zeros((12, 10, 6), np.uint8)
    expected[2:7, 3:6, 1:4] = 1
    assert (np.asarray(img.dataobj) == expected).mean() > 0.97
    # heatmap values kept exactly when the map is already on the source grid
    src_heat = np.random.default_rng(1).random((2, 12, 10, 6)).astype(np.float32)
    image = LoadImageSourced("image")({"image": str(path)})["image"]
    out = write_nifti(explanation_on(image, src_heat, "heatmap", target=(0, 1)), image, tmp_path / "heat.nii.gz")
    np.testing.assert_array_equal(nib.load(out).get_fdata(dtype=np.float32), np.moveaxis(src_heat, 0, -1))


def test_nifti_from_dicom_overlays_source_in_world(tmp_path):
    d = LoadDicomd("image")({"image": str(CT5N)})
    values = np.random.default_rng(2).random((1, 16, 16, 5)).astype(np.float32)
    out = write_nifti(explanation_on(d["image"], values, "heatmap"), d["source_image"], tmp_path / "h.nii")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, as_source_reference(d["source_image"]).affine_array)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), values[0])


def _prepared(explanation, source):
    """The writer's prepared case (the map on the source grid), as every writer sees it."""
    return write_png_overlay.prepare(explanation, as_source_reference(source))


def test_png_overlay_2d_mask_panels_title_and_contour(tmp_path):
    arr = (np.arange(40 * 30).reshape(40, 30) % 251).astype(np.uint8)  # rows=40, cols=30
    Image.fromarray(arr).save(tmp_path / "x.png")
    d = LoadImageSourced("image")({"image": str(tmp_path / "x.png")})
    ref = as_source_reference(d["source_image"])
    assert ref.spatial_shape == (30, 40) and ref.format == "2d"  # MONAI's (x, y)
    mask = np.zeros((1, 30, 40), np.float32)
    mask[0, 5:15, 10:30] = 1  # x 5..14, y 10..29
    exp = explanation_on(d["image"], mask, "mask", target=(2,))
    exp.scores = {"prob_x": torch.tensor([0.91]), "prob_e": torch.tensor([0.83]), "decision_kept": torch.tensor([True])}
    figure = compose_panels(_prepared(exp, ref), arr.T[None].astype(np.float32), labels=["none", "nodule", "ring"], case_name="case7")
    # the title says case, method, class by name, both probabilities and the decision
    assert figure.title.startswith("case7 | Med-CAM | ring (class 2)")
    assert "p(class | image) = 0.91" in figure.title and "p(class | evidence) = 0.83" in figure.title and "decision kept" in figure.title
    assert "no smaller mask" not in figure.title
    exp.scores = {**exp.scores, "sufficient": torch.tensor([False])}  # Med-CAM's whole-image answer says so
    whole = compose_panels(_prepared(exp, ref), arr.T[None].astype(np.float32), labels=["none", "nodule", "ring"], case_name="case7")
    assert "decision kept; no smaller mask keeps the decision" in whole.title
    image, tinted, evidence = figure.panels
    assert np.corrcoef(image.rgb[..., 0].ravel(), arr.ravel())[0, 1] > 0.99  # (a) the image as stored: rows are y
    expected = np.zeros((40, 30), bool)
    expected[10:30, 5:15] = True
    np.testing.assert_array_equal(tinted.contour, expected)  # (b) the contour is the mask, displayed (row=y, col=x)
    changed = np.any(tinted.rgb != image.rgb, axis=-1)
    assert changed[expected].mean() > 0.95 and not changed[~expected].any()  # the tint only inside the mask
    np.testing.assert_array_equal(evidence.rgb[~expected], 0)  # (c) the evidence: the image where the mask is 1
    assert figure.mask_colour in TINTS and figure.scale is None  # a mask needs no colour bar
    # the known evidence (a planted lesion, source grid) as a dashed contour in a second colour, with its IoU
    truth = np.zeros((30, 40), np.float32)
    truth[5:15, 20:40] = 1  # shares half of its rows with the mask: IoU 100 / 300
    with_truth = compose_panels(_prepared(exp, ref), arr.T[None].astype(np.float32), labels=["none", "nodule", "ring"], evidence=truth)
    expected_truth = np.zeros((40, 30), bool)
    expected_truth[20:40, 5:15] = True
    np.testing.assert_array_equal(with_truth.panels[1].reference, expected_truth)
    assert "known evidence (IoU 0.33)" in with_truth.panels[1].title and with_truth.reference_colour != with_truth.mask_colour
    with pytest.raises(ValueError, match="source grid"):
        compose_panels(_prepared(exp, ref), arr.T[None].astype(np.float32), evidence=truth.T)
    out = write_png_overlay(exp, ref, tmp_path / "o.png", labels=["none", "nodule", "ring"], evidence=truth)
    png = np.asarray(Image.open(out))
    assert png.shape[1] > 3 * png.shape[0] / 2 and png.shape[0] >= 400  # three panels side by side, readable size


def test_png_mask_colour_is_chosen_against_the_image():
    grey = np.repeat(np.linspace(0, 255, 64 * 64).reshape(64, 64, 1), 3, -1).astype(np.uint8)
    orange = np.zeros((64, 64, 3), np.uint8)
    orange[...] = (220, 110, 40)  # a fundus photograph's colours
    pink = np.zeros((64, 64, 3), np.uint8)
    pink[...] = (230, 150, 200)  # H&E
    for rgb in (grey, orange, pink):
        name, colour = contrasting_colour(rgb)
        distance = np.linalg.norm(rgb.reshape(-1, 3).astype(float) - colour, axis=1)
        # the chosen tint is at least as far from the image as every other candidate (5th percentile)
        assert all(np.percentile(distance, 5) >= np.percentile(np.linalg.norm(rgb.reshape(-1, 3).astype(float) - c, axis=1), 5) - 1e-6
                   for c in TINTS.values())
    assert contrasting_colour(orange)[0] in ("blue", "cyan") and contrasting_colour(pink)[0] == "lime"


def test_png_overlay_3d_three_planes_through_the_peak(tmp_path):
    # an LAS grid (x runs to the patient's left): the figure reorients to RAS before choosing planes
    affine = np.array([[-2.0, 0, 0, 30], [0, 2.0, 0, -20], [0, 0, 3.0, -9], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).random((20, 16, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "mri.nii.gz")
    d = LoadImageSourced("image")({"image": str(tmp_path / "mri.nii.gz")})
    heat = np.zeros((1, 20, 16, 8), np.float32)
    heat[0, 4:7, 9:12, 2:5] = 2.5  # peak around voxel (5, 10, 3)
    exp = explanation_on(d["image"], heat, "heatmap", method="seg_hires_grad_cam")
    exp.scores = {"pixels": torch.tensor([[123]])}
    exp.settings = {"pixels": "predicted"}
    figure = compose_panels(_prepared(exp, d["source_image"]), vol[None], labels=["bg", "grey matter"])
    world = affine @ np.array([5, 10, 3, 1.0])
    assert f"peak at ({world[0]:.0f}, {world[1]:.0f}, {world[2]:.0f}) mm RAS" in figure.title
    assert "grey matter (class 1)" in figure.title and "the 123 voxels predicted as the class" in figure.title
    assert [p.title.split(",")[0] for p in figure.panels] == ["axial", "coronal", "sagittal"]
    assert figure.panels[0].title == f"axial, z = {world[2]:.0f} mm" and figure.panels[2].title == f"sagittal, x = {world[0]:.0f} mm"
    assert [p.letters for p in figure.panels] == [("R", "L", "A", "P"), ("R", "L", "S", "I"), ("A", "P", "S", "I")]
    assert figure.scale is not None and figure.scale.label.startswith("raw map value") and figure.panels[2].colorbar
    # the axial plane (RAS x along the columns, reversed: patient's right on the left) shows the heat at the crosshair
    axial = figure.panels[0]
    row, col = (int(round(c)) for c in axial.crosshair)
    plain = np.stack([np.asarray(p) for p in axial.rgb.transpose(2, 0, 1)], -1)
    assert axial.rgb.shape[:2] == (16, 20)
    assert np.abs(plain[row, col].astype(int) - plain[0, 0].astype(int)).sum() > 0
    # RAS index of the LAS voxel 5 is 19 - 5 = 14; displayed reversed: column 19 - 14 = 5
    assert col == 5 and row == 16 - 1 - 10
    out = write_png_overlay(exp, d["source_image"], tmp_path / "planes.png", labels=["bg", "grey matter"])
    assert np.asarray(Image.open(out)).shape[1] > 3 * 300
    with pytest.raises(ValueError, match="out of range"):
        write_png_overlay(exp, d["source_image"], tmp_path / "bad.png", point=(40, 0, 0))


def test_slicer_seg_names_colours_terminology_geometry(tmp_path):
    d = LoadDicomd("image")({"image": str(CT5N)})
    ref = as_source_reference(d["source_image"])
    masks = np.zeros((2, 16, 16, 5), np.float32)
    masks[0, 2:6, 3:9, 1:4] = 1
    masks[1, 4:8, 3:5, 2:5] = 1  # overlaps the first: a second layer
    exp = explanation_on(d["image"], masks, "mask", method="medcam", target=(1, 0))
    out = write_slicer_seg(exp, ref, tmp_path / "e.seg.nrrd", labels=["normal", "tumour"], colors=[(255, 0, 0), (0, 0, 255)])
    seg = slicerio.read_segmentation(str(out))
    names = [s["name"] for s in seg["segments"]]
    assert names == ["medcam tumour", "medcam normal"]
    assert seg["segments"][0]["color"] == pytest.approx([1.0, 0.0, 0.0])
    term = seg["segments"][0]["terminology"]
    assert term["category"][:2] == ["SCT", "309825002"] and term["type"][:2] == ["DCM", "130404"]
    np.testing.assert_allclose(np.asarray(seg["ijkToLPS"]), np.diag([-1, -1, 1, 1]) @ ref.affine_array, atol=1e-6)
    for k, name in enumerate(names):
        got = slicerio.extract_segments(seg, [(name, 1)])["voxels"]
        np.testing.assert_array_equal(got > 0, masks[k] > 0)
    with pytest.raises(ValueError, match=".seg.nrrd"):
        write_slicer_seg(exp, ref, tmp_path / "e.nrrd")


def _make_slide(path, mpp=0.5):
    """A small 3-level tiled RGB pyramid (1024x768) in OpenSlide's generic-TIFF layout."""
    rng = np.random.default_rng(0)
    base = (rng.random((768, 1024, 3)) * 255).astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 2, 4)):
            level = base[::f, ::f]
            tif.write(level, tile=(256, 256), photometric="rgb", resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)),
                      resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1, metadata=None)
    return base


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_wsi_region_in_and_pyramid_plus_geojson_out(tmp_path, backend):
    if backend == "openslide":
        pytest.importorskip("openslide", reason="pip install openslide-bin openslide-python")
    slide = tmp_path / "slide.tif"
    base = _make_slide(slide)
    d = LoadWSId("image", backend=backend, level=1, location=(256, 512), size=(128, 160))({"image": str(slide)})
    ref = as_source_reference(d["source_image"])
    assert d["image"].shape == (3, 128, 160)
    np.testing.assert_array_equal(d["image"].numpy()[:, 0, 0], base[256, 512])
    assert ref.downsample == 2 and ref.level0_size == (768, 1024) and ref.mpp == pytest.approx((0.5, 0.5))
    mask = np.zeros((1, 128, 160), np.float32)
    mask[0, 10:40, 20:60] = 1
    mask[0, 20:30, 30:40] = 0  # a hole
    mask[0, 80:100, 100:150] = 1
    exp = explanation_on(d["image"], mask, "mask", method="medcam", target=(2,))
    out = write_wsi_overlay(exp, ref, tmp_path / "overlay.tif", tile=64, min_level_size=64)
    # read back by MONAI's WSIReader (tifffile) and, independently, OpenSlide
    reader = WSIReader(backend="tifffile", level=0, mode="RGB")
    wsi = reader.read(str(out))
    assert reader.reader.get_level_count(wsi) >= 3
    assert reader.reader.get_size(wsi, 0) == (384, 512)
    assert reader.reader.get_mpp(wsi, 0) == pytest.approx((1.0, 1.0))  # 0.5 um x downsample 2
    overlay = tifffile.imread(out, level=0)
    np.testing.assert_array_equal(overlay[128:256, 256:416], (mask[0] * 255).astype(np.uint8))
    assert overlay.sum() == mask.sum() * 255
    desc = json.loads(tifffile.TiffFile(out).pages[0].description)
    assert desc["medcam_monai"]["target"] == 2
    try:
        import openslide
    except ImportError:
        openslide = None
    if openslide is not None:
        osr = openslide.OpenSlide(str(out))
        assert osr.level_count >= 3 and osr.dimensions == (512, 384)
        region = np.asarray(osr.read_region((256, 128), 0, (160, 128)))[..., 0]
        np.testing.assert_array_equal(region, (mask[0] * 255).astype(np.uint8))
    # GeoJSON in level-0 coordinates: rasterised back at level 1 it is the mask
    gj = json.loads(write_geojson(exp, ref, tmp_path / "a.geojson", labels={2: "tumour"}).read_text())
    assert len(gj["features"]) == 2
    f0 = gj["features"][0]
    assert f0["properties"]["objectType"] == "annotation" and f0["properties"]["classification"]["name"] == "medcam tumour"
    raster = np.zeros((128, 160), bool)
    for feat in gj["features"]:
        rings = feat["geometry"]["coordinates"]
        for i, ring in enumerate(rings):
            xy = (np.asarray(ring) - [512, 256]) / 2.0  # level-0 -> level-1 region pixels
            assert xy.min() >= 0
            # pixel centres inside the polygon: shift edge coordinates by half a pixel
            rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, raster.shape)
            if i == 0:
                raster[rr, cc] = True
            else:
                raster[rr, cc] = False
        assert len(rings) in (1, 2)
    assert (raster == (mask[0] > 0)).mean() > 0.99


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch, nifti_source):
    path, _ = nifti_source
    image = LoadImageSourced("image")({"image": str(path)})["image"]
    exp = explanation_on(image, np.ones((1, 12, 10, 6)), "mask")
    final = tmp_path / "out" / "m.nii.gz"

    def boom(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(exp, image, final)
    assert not final.parent.exists()  # neither the half-written file nor the folder made for it remain
    monkeypatch.undo()
    final.parent.mkdir()
    final.write_bytes(b"previous")
    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        write_nifti(exp, image, final)
    assert final.read_bytes() == b"previous" and len(list(final.parent.iterdir())) == 1


def test_registry_and_exports():
    assert set(WRITERS) == {"nifti", "dicom_seg", "parametric_map", "slicer_seg", "png", "wsi", "geojson"}
    for name in mio.__all__:
        assert hasattr(mio, name)
    with pytest.raises(TypeError, match="DicomSeriesReference"):
        WRITERS["dicom_seg"](explanation_on(MetaTensor(torch.zeros(1, 4, 4)), np.zeros((1, 4, 4)), "mask"),
                             mio.ImageReference(path="x.png", affine=np.eye(3), spatial_shape=(4, 4), format="2d"), "x.dcm")


def test_wsi_overlay_is_a_tiled_pyramid_every_level_readable(tmp_path):
    """#13: the overlay is a real pyramid: several tiled levels, each half the one before, each
    readable on its own by tifffile (and MONAI's WSIReader), each the 2x2 mean of the one before."""
    slide = tmp_path / "slide.tif"
    _make_slide(slide)
    d = LoadWSId("image", backend="tifffile", level=0, location=(0, 0), size=(256, 256))({"image": str(slide)})
    ref = as_source_reference(d["source_image"])
    heat = np.zeros((1, 256, 256), np.float32)
    heat[0, 32:160, 64:224] = np.linspace(0, 1, 160)[None, :]
    out = write_wsi_overlay(explanation_on(d["image"], heat, "heatmap", method="grad_cam"), ref, tmp_path / "o.tif", tile=64)
    with tifffile.TiffFile(out) as tif:
        pages = list(tif.pages)
        assert len(pages) >= 4  # 768x1024 -> 384x512 -> 192x256 -> 96x128 -> 48x64 (one tile)
        levels = [p.asarray() for p in pages]
        for i, (page, level) in enumerate(zip(pages, levels)):
            assert page.is_tiled and page.tilewidth == 64 and page.tilelength == 64
            assert level.shape == (768 // 2**i, 1024 // 2**i)
            assert (page.subfiletype == 1) == (i > 0)  # reduced-resolution pages after the first
            x_res = page.tags["XResolution"].value
            assert x_res[0] / x_res[1] == pytest.approx(1e4 / (0.5 * 2**i))  # pixels per cm at this level's mpp
        for finer, coarser in zip(levels, levels[1:]):
            mean = finer.astype(float).reshape(coarser.shape[0], 2, coarser.shape[1], 2).mean((1, 3))
            assert np.abs(mean - coarser).max() <= 0.5 + 1e-9
        assert max(levels[-1].shape) <= 64  # the top level fits in one tile
    reader = WSIReader(backend="tifffile", level=0)
    wsi = reader.read(str(out))
    assert reader.reader.get_level_count(wsi) == len(levels)
    # MONAI's reader sees the same levels (its get_data wants RGB; the overlay is grey, so sizes only)
    assert [reader.reader.get_size(wsi, i) for i in range(len(levels))] == [lv.shape for lv in levels]
    with pytest.raises(ValueError, match="min_levels"):
        write_wsi_overlay(explanation_on(d["image"], heat, "heatmap"), ref, tmp_path / "bad.tif", min_levels=0)
