"""Generated stand-in datasets: shapes, determinism, distractors, and that only the evidence decides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcam_monai.data import phantoms as P




def test_marker_phantoms_unchanged():
    # values recorded from the original implementation before the drawing code was shared
    b = P.marker_phantoms(4, seed=0)
    assert b.labels.tolist() == [0, 1, 1, 0]
    assert b.images.sum().item() == pytest.approx(1094.72937, abs=1e-2)
    assert [tuple(torch.nonzero(e[0]).min(0).values.tolist()) for e in b.evidence] == [(13, 16), (23, 20), (17, 17), (17, 24)]
    b = P.marker_phantoms(3, size=16, spatial_dims=3, num_classes=3, absent_class=True, channels=2, seed=5)
    assert b.labels.tolist() == [2, 0, 1] and b.evidence.sum((1, 2, 3, 4)).tolist() == [0.0, 27.0, 27.0]
    assert b.images.sum().item() == pytest.approx(4735.15234, abs=1e-2)
    assert b.class_names == () and b.task == "classification"


# name, factory(n, seed), channels, spatial shape, class names, classes with empty evidence
CLASSIFIERS = [
    ("histology", lambda n, s: P.histology_phantoms(n, size=32, seed=s), 3, (32, 32), P.BACH_CLASSES, ()),
    ("dermoscopy", lambda n, s: P.dermoscopy_phantoms(n, size=32, seed=s), 3, (32, 32), P.HAM10000_CLASSES, ()),
    ("fundus", lambda n, s: P.fundus_phantoms(n, size=32, seed=s), 3, (32, 32), P.IDRID_GRADES, (0,)),
    ("mri2d", lambda n, s: P.mri_phantoms(n, size=32, seed=s), 1, (32, 32), P.BRAIN_MRI_CLASSES, (2,)),
    ("mri3d", lambda n, s: P.mri_phantoms(n, size=16, spatial_dims=3, seed=s), 1, (16, 16, 16), P.BRAIN_MRI_CLASSES, (2,)),
]


@pytest.mark.parametrize("name,make,channels,shape,names,absent", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_classification_phantoms(name, make, channels, shape, names, absent):
    b = make(24, 3)
    assert len(b) == 24 and b.class_names == names and b.task == "classification"
    assert b.images.shape == (24, channels, *shape) and b.images.dtype == torch.float32
    assert b.labels.shape == (24,) and b.labels.dtype == torch.long
    assert b.evidence.shape == (24, 1, *shape)
    assert 0 <= b.images.min() and b.images.max() <= 1
    assert set(b.evidence.unique().tolist()) <= {0.0, 1.0}
    assert int(b.labels.min()) >= 0 and int(b.labels.max()) < len(names)
    has = b.evidence.flatten(1).amax(1) > 0
    for k, h in zip(b.labels.tolist(), has.tolist()):
        assert h == (k not in absent), f"class {k}: evidence present={h}"
    # evidence is a small part of the image; the rest is not blank (distractors, texture)
    assert b.evidence.flatten(1).mean(1).max() < 0.15
    outside = b.images[0][:, ~b.evidence[0, 0].bool()]
    assert outside.std() > 0.05
    # deterministic from the seed
    again = make(24, 3)
    assert torch.equal(b.images, again.images) and torch.equal(b.labels, again.labels) and torch.equal(b.evidence, again.evidence)
    assert not torch.equal(b.images, make(24, 4).images)


def test_ct_phantoms_for_segmentation():
    b = P.ct_phantoms(6, size=24, seed=1)
    assert b.task == "segmentation" and b.class_names == P.KITS_LABELS
    assert b.images.shape == (6, 1, 24, 24, 24) and b.labels.shape == (6, 1, 24, 24, 24)
    assert b.labels.dtype == torch.long and set(b.labels.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(b.evidence, (b.labels == 2).float())
    assert all((b.labels[i] == 1).any() for i in range(6))  # kidneys in every case
    every = P.ct_phantoms(4, size=24, tumour_probability=1.0, cyst_probability=0.0, seed=2)
    assert all(every.evidence[i].any() for i in range(4)) and not (every.labels == 3).any()
    none = P.ct_phantoms(4, size=24, tumour_probability=0.0, seed=2)
    assert not none.evidence.any()
    # the tumour is darker than the kidney around it, as a hypo-enhancing renal mass
    img, lab = every.images[:, 0], every.labels[:, 0]
    assert img[lab == 2].mean() < img[lab == 1].mean() - 0.1
    sl = P.ct_phantoms(3, size=32, spatial_dims=2, seed=0)
    assert sl.images.shape == (3, 1, 32, 32) and sl.labels.shape == (3, 1, 32, 32)
    assert torch.equal(sl.labels, P.ct_phantoms(3, size=32, spatial_dims=2, seed=0).labels)


def test_argument_checks():
    with pytest.raises(ValueError, match="num_classes"):
        P.histology_phantoms(2, num_classes=9)
    with pytest.raises(ValueError, match="num_classes"):
        P.fundus_phantoms(2, num_classes=6)
    with pytest.raises(ValueError, match="spatial_dims"):
        P.mri_phantoms(2, spatial_dims=4)
    with pytest.raises(ValueError, match="entries"):
        P.ct_phantoms(2, size=(8, 8))


def tiny_cnn(channels: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )  # fmt: skip


LEARNABLE = [
    ("histology", lambda n, s: P.histology_phantoms(n, size=32, seed=s), 4, 120),
    ("dermoscopy", lambda n, s: P.dermoscopy_phantoms(n, size=48, num_classes=4, seed=s), 4, 120),
    ("fundus", lambda n, s: P.fundus_phantoms(n, size=48, num_classes=4, seed=s), 4, 200),
    ("mri2d", lambda n, s: P.mri_phantoms(n, size=32, seed=s), 4, 120),
]


@pytest.mark.parametrize("name,make,classes,steps", LEARNABLE, ids=[c[0] for c in LEARNABLE])
def test_tiny_cnn_learns_from_the_evidence_only(name, make, classes, steps):
    train, test = make(256, 10), make(128, 11)
    model = tiny_cnn(train.images.shape[1], classes)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(train), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test.images).argmax(1) == test.labels).float().mean().item()
        # erase the evidence (fill it with the image's median): the class can no longer be read
        x = test.images.clone()
        fill = x.flatten(2).median(2).values[..., None, None].expand_as(x)
        x = torch.where(test.evidence.bool().expand_as(x), fill, x)
        has = test.evidence.flatten(1).amax(1) > 0
        erased = (model(x).argmax(1) == test.labels)[has].float().mean().item()
    assert acc > 0.8, f"{name}: held-out accuracy {acc:.2f}"
    assert erased < 0.5, f"{name}: accuracy {erased:.2f} with the evidence erased; the class leaks outside it"
