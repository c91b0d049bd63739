"""Writers on images loaded by stock MONAI transforms only (issue 11): the source grid comes from the
MetaTensor's meta (original_affine, spatial_shape, filename_or_obj) and, for DICOM, from the series
headers. Both ways back to the source grid are tested and must agree: (a) MONAI's own inversion
(invert_to_source -> Invertd on the preprocessing) and (b) resampling by affine in the writer."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from _io_support import CT5N, copy_series, dciodvfy_errors, dcmqi_read, frames_by_source, itk_image_ras, on_our_grid
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from PIL import Image
from scipy import ndimage

from medcam_monai.explanation import Explanation
from medcam_monai.io.png import compose_panels
from medcam_monai.io import (
    DicomSeriesReference,
    ImageReference,
    LoadDicomd,
    MultipleSeriesError,
    as_source_reference,
    invert_to_source,
    write_dicom_seg,
    write_nifti,
    write_parametric_map,
    write_png_overlay,
)

MARKER = (3, 4, 2)

# non-identity affines: flipped axes with an offset origin, and permuted + flipped axes
AFFINES = {
    "flipped": np.array([[-1.5, 0, 0, 40.0], [0, 2.0, 0, -30.0], [0, 0, -3.0, 10.0], [0, 0, 0, 1]]),
    "permuted": np.array([[0, -2.0, 0, 12.0], [1.5, 0, 0, -7.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]]),
}


def _spacing_pipeline():
    return Compose([
        LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=(1.0, 1.0, 1.5), mode="bilinear"),
        ScaleIntensityRanged("image", a_min=0, a_max=100, b_min=0, b_max=1, clip=True), NormalizeIntensityd("image"),
        SpatialPadd("image", spatial_size=(32, 32, 32)),
    ])


def _resize_pipeline():
    return Compose([
        LoadImaged("image"), EnsureChannelFirstd("image"), Resized("image", spatial_size=(16, 13, 8)),
        ScaleIntensityRanged("image", a_min=0, a_max=100, b_min=0, b_max=1),
    ])


def _nifti(tmp_path, name):
    rng = np.random.default_rng(0)
    data = (rng.random((12, 10, 6)) * 10).astype(np.float32)
    data[MARKER] = 100.0
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINES[name]), path)
    return path


def _maps_of(net: MetaTensor) -> dict[str, Explanation]:
    """A heatmap (the network input itself) and a mask (its brightest part) in network space,
    carrying the input's metadata as the handler gives it (first channel)."""
    values = net.as_tensor()[:1]
    mask = (values > 0.5 * (values.max() + values.min())).float()
    return {
        kind: Explanation(map=MetaTensor(v[None].clone(), meta=dict(net.meta), applied_operations=list(net.applied_operations)),
                          kind=kind, method="grad_cam" if kind == "heatmap" else "medcam", target=torch.tensor([[0]]))
        for kind, v in (("heatmap", values), ("mask", mask))
    }


@pytest.mark.parametrize("pipeline", ["spacing", "resize"])
@pytest.mark.parametrize("name", sorted(AFFINES))
def test_nifti_from_stock_pipeline_on_source_grid_both_routes(tmp_path, name, pipeline):
    path = _nifti(tmp_path, name)
    source = nib.load(path)
    pre = _spacing_pipeline() if pipeline == "spacing" else _resize_pipeline()
    net = pre({"image": str(path)})["image"]
    assert net.shape[1:] != source.shape  # the network grid is not the source grid
    ref = as_source_reference(net)
    assert isinstance(ref, ImageReference) and ref.spatial_shape == source.shape
    for kind, exp in _maps_of(net).items():
        inverted = write_nifti(invert_to_source(exp, net, pre), net, tmp_path / f"{kind}_a.nii.gz")  # (a) MONAI's inversion
        resampled = write_nifti(exp, net, tmp_path / f"{kind}_b.nii.gz")  # (b) by affine
        a, b = nib.load(inverted), nib.load(resampled)
        for out in (a, b):
            assert out.shape == source.shape
            np.testing.assert_array_equal(out.affine, source.affine)  # exactly the source's affine
            values = out.get_fdata()
            assert np.unravel_index(values.argmax(), values.shape) == MARKER  # the marker lands on itself
        if kind == "heatmap":
            np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), atol=1e-5)
        elif pipeline == "spacing":
            np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
        else:  # a non-integer resize: nearest neighbours may differ by one voxel at the edge of the mask
            near = np.zeros(source.shape, bool)
            near[MARKER] = True
            near = ndimage.binary_dilation(near)
            for out in (a, b):
                assert out.get_fdata()[MARKER] == 1 and not np.any(out.get_fdata()[~near])


def test_rgb_png_from_stock_pipeline(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[7, 21] = (255, 40, 0)  # row 7, column 21
    Image.fromarray(rgb).save(tmp_path / "x.png")
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Resized("image", spatial_size=(64, 64)), ScaleIntensityd("image")])
    net = pre({"image": str(tmp_path / "x.png")})["image"]
    assert net.shape == (3, 64, 64)
    ref = as_source_reference(net)
    assert ref.spatial_shape == (30, 40) and ref.format == "2d"  # MONAI's (x, y)
    exp = _maps_of(net)["heatmap"]
    for route, e in (("a", invert_to_source(exp, net, pre)), ("b", exp)):
        out = nib.load(write_nifti(e, net, tmp_path / f"{route}.nii.gz"))
        assert out.shape == (30, 40)
        assert np.unravel_index(out.get_fdata().argmax(), out.shape) == (21, 7)
    figure = compose_panels(write_png_overlay.prepare(exp, as_source_reference(net)), np.moveaxis(rgb, -1, 0).swapaxes(1, 2))
    np.testing.assert_array_equal(figure.panels[0].rgb, rgb)  # panel (a): the source image as stored
    blend = figure.panels[1].rgb.astype(int) - rgb
    assert np.unravel_index(np.abs(blend).sum(-1).argmax(), (40, 30)) == (7, 21)  # the heat sits on the marker
    assert Image.open(write_png_overlay(exp, net, tmp_path / "o.png")).size[0] > 600  # the source reloaded once from its file


def _stock_dicom(reader, pixdim=(0.4882815 / 2, 0.4882815 / 2, 1.25)):
    return Compose([LoadImaged("image", reader=reader), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                    Spacingd("image", pixdim=pixdim, mode="nearest")])


@pytest.mark.parametrize("reader", ["ITKReader", "PydicomReader"])
def test_dicom_seg_and_pm_from_stock_loaded_series(tmp_path, reader):
    """A series read by stock LoadImaged: the writers read the series headers from the files its meta
    names; SEG and PM reference the source slices, pass dciodvfy and read back in dcmqi."""
    pre = _stock_dicom(reader)
    net = pre({"image": str(CT5N)})["image"]
    ours = LoadDicomd("image")({"image": str(CT5N)})
    ref, source_values = as_source_reference(ours["source_image"]), ours["image"][0].numpy()
    stock_ref = as_source_reference(net)
    assert isinstance(stock_ref, DicomSeriesReference)
    assert stock_ref.sop_instance_uids == ref.sop_instance_uids and np.allclose(stock_ref.affine_array, ref.affine_array)
    assert net.shape[1:] != ref.spatial_shape
    threshold = float(np.percentile(source_values, 70))
    mask = Explanation(map=MetaTensor((net.as_tensor() > threshold).float()[None], meta=dict(net.meta), applied_operations=list(net.applied_operations)),
                       kind="mask", method="medcam", target=torch.tensor([[1]]))
    expected = (source_values > threshold).astype(np.float32)
    a = write_dicom_seg(invert_to_source(mask, net, pre), net, tmp_path / "a.seg.dcm")
    b = write_dicom_seg(mask, net, tmp_path / "b.seg.dcm")
    for out in (a, b):
        assert dciodvfy_errors(out) == []
        ds = pydicom.dcmread(out)
        assert ds.StudyInstanceUID == ref.study_instance_uid and ds.FrameOfReferenceUID == ref.frame_of_reference_uid
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.series_instance_uid
        np.testing.assert_array_equal(frames_by_source(ds, ref, expected[None])[1], expected)
    (nrrd,) = dcmqi_read(b, "segimage2itkimage", tmp_path / "dcmqi")
    arr, aff = itk_image_ras(nrrd)
    np.testing.assert_array_equal(on_our_grid(arr, aff, ref.spatial_shape, ref.affine_array) > 0, expected > 0)
    # the network input's values, back on the source slices: a Parametric Map keeps them exactly
    heat = Explanation(map=MetaTensor(net.as_tensor()[None].clone(), meta=dict(net.meta), applied_operations=list(net.applied_operations)),
                       kind="heatmap", method="grad_cam", target=torch.tensor([[1]]))
    pm = write_parametric_map(invert_to_source(heat, net, pre), net, tmp_path / "pm.dcm")
    assert dciodvfy_errors(pm) == []
    np.testing.assert_allclose(frames_by_source(pydicom.dcmread(pm), ref, source_values[None])[1], source_values, atol=1e-3)
    (nrrd,) = dcmqi_read(pm, "paramap2itkimage", tmp_path / "dcmqi_pm")
    arr, aff = itk_image_ras(nrrd)
    np.testing.assert_allclose(on_our_grid(arr, aff, ref.spatial_shape, ref.affine_array), source_values, atol=1e-3)


def test_stock_series_chosen_by_uid_or_by_grid(tmp_path):
    """A folder with two series: the reference takes the series the meta names, else the one whose
    geometry is the loaded grid; never the other one."""
    folder = copy_series(CT5N, tmp_path)
    other_uid = pydicom.uid.generate_uid()
    for f in sorted(CT5N.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = other_uid, pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [float(v) + d for v, d in zip(ds.ImagePositionPatient, (0, 0, 100))]
        ds.save_as(folder / f"other_{f.name}")
    first_uid = str(pydicom.dcmread(next(CT5N.iterdir())).SeriesInstanceUID)
    ours = {uid: as_source_reference(LoadDicomd("image", series_uid=uid)({"image": str(folder)})["image"]) for uid in (first_uid, other_uid)}
    for uid, ref in ours.items():
        meta = {"filename_or_obj": str(folder), "spatial_shape": np.asarray(ref.spatial_shape), "original_affine": ref.affine_array}
        assert as_source_reference(MetaTensor(torch.zeros(1), meta=meta)).series_instance_uid == uid  # by grid
        named = {**meta, "0020|000e": uid, "original_affine": ours[first_uid if uid == other_uid else other_uid].affine_array}
        with pytest.raises(ValueError, match="does not hold the voxels"):  # the named series, checked against the grid
            as_source_reference(MetaTensor(torch.zeros(1), meta=named))
    ambiguous = {"filename_or_obj": str(folder), "spatial_shape": np.asarray((16, 16, 5)), "original_affine": np.eye(4)}
    with pytest.raises(MultipleSeriesError, match="does not say which one"):
        as_source_reference(MetaTensor(torch.zeros(1), meta=ambiguous))
