"""Synthetic images whose true evidence is known.

Each generator returns images, labels and the ground-truth evidence mask: the region that alone
decides the class. Distractors (blobs, vessels, hairs, organs, ... of the modality) share the image
but carry no class information, so an explanation that points at them is wrong. Everything is
deterministic from ``seed``.

One generator per modality of the project's datasets (``data_manifests/``), each a stand-in with
the real set's classes in the manifest's order:

- :func:`marker_phantoms`: a striped square among blobs (any number of classes, 2D/3D).
- :func:`histology_phantoms`: H&E-like tissue (BACH: Normal, Benign, InSitu, Invasive); the class
  is the arrangement of nuclei inside one gland, other glands hold scattered nuclei.
- :func:`dermoscopy_phantoms`: a skin lesion (HAM10000's seven classes); the class is the pattern
  of one dermoscopic structure inside the lesion, among hairs and freckles.
- :func:`fundus_phantoms`: a retina (IDRiD grades 0-4); the grade is the type of lesion present,
  among vessels, the optic disc and the macula. Grade 0 has no lesion (empty evidence).
- :func:`mri_phantoms`: brain MRI slices or volumes (glioma, meningioma, no tumour, pituitary);
  the class is the tumour's look and place, among ventricles and blobs. "No tumour": empty evidence.
- :func:`ct_phantoms`: abdominal CT for segmentation (KiTS23 labels: kidney 1, tumour 2, cyst 3),
  among liver, spine and bowel gas; ``labels`` is the label map.

The class patterns of the striped generators share one rule (:func:`class_stripes`), so a period
or orientation means the same class family everywhere. One module per modality; the shared
drawing code is in :mod:`~medcam_monai.data.phantoms.drawing`.
"""

from medcam_monai.data.phantoms.ct import KITS_LABELS, ct_phantoms
from medcam_monai.data.phantoms.dermoscopy import HAM10000_CLASSES, dermoscopy_phantoms
from medcam_monai.data.phantoms.drawing import PhantomBatch, class_stripes
from medcam_monai.data.phantoms.fundus import IDRID_GRADES, fundus_phantoms
from medcam_monai.data.phantoms.histology import BACH_CLASSES, histology_phantoms
from medcam_monai.data.phantoms.marker import marker_phantoms
from medcam_monai.data.phantoms.mri import BRAIN_MRI_CLASSES, mri_phantoms

__all__ = [
    "PhantomBatch",
    "class_stripes",
    "marker_phantoms",
    "histology_phantoms",
    "dermoscopy_phantoms",
    "fundus_phantoms",
    "mri_phantoms",
    "ct_phantoms",
    "BACH_CLASSES",
    "HAM10000_CLASSES",
    "IDRID_GRADES",
    "BRAIN_MRI_CLASSES",
    "KITS_LABELS",
]
