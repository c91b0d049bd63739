"""The writer protocol: what a writer accepts, and the preparation every writer shares.

A writer is a small class (one module per format) that declares what it accepts and implements
:meth:`Writer.write` on a :class:`PreparedCase`; its instance is the public function
(``write_nifti = NiftiWriter()``), with the format's options in its signature and its class
docstring as the docs. Calling it runs the preamble once, for every format alike::

    writer(explanation, source, path, *, case=0, **options) -> pathlib.Path

1. resolve ``source`` to a :class:`~medcam_monai.io.reference.SourceReference` (one of this
   package's references, its JSON, or an image loaded by stock MONAI transforms);
2. refuse what the writer does not accept (source kind, spatial dimensions, map kind, file ending)
   and options it does not take or whose values are out of range, before any work;
3. select the case and bring its map onto the source grid, with NaN/Inf sanitised;
4. write to a temporary file beside ``path`` and move it into place only on success.

Shaped like MONAI's writers and highdicom's validating constructors: a subclass sets ``name``,
``suffix``, ``sources``, ``spatial_dims`` (and ``endings`` when the format is chosen by the file
name), may check its options in :meth:`Writer.check_options`, and writes in :meth:`Writer.write`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medcam_monai.explanation import HEATMAP, MASK, Explanation
from medcam_monai.io.atomic import atomic_path
from medcam_monai.io.codes import default_color
from medcam_monai.io.dicom_headers import header_cache
from medcam_monai.io.geometry import map_on_source, normalize_unit, select_case
from medcam_monai.io.reference import SourceReference
from medcam_monai.io.stock import as_source_reference

__all__ = ["SOURCE_KINDS", "Writer", "SegmentWriter", "PreparedCase", "check_threshold", "check_channel"]

# the source kinds a writer may accept: SourceReference.type of each reference class
SOURCE_KINDS = ("dicom", "image", "wsi")
_SOURCE_NOUNS = {
    "dicom": "a DICOM series (loaded with MONAI's LoadImaged or medcam_monai.io.LoadDicomd: a DicomSeriesReference)",
    "image": "an image file (NIfTI, PNG/JPEG)",
    "wsi": "a whole-slide region (loaded with medcam_monai.io.LoadWSId: a WSIReference)",
}

Labels = Sequence[str] | Mapping[int, str] | None


def check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    return float(threshold)


def check_channel(channel: int, channels: int) -> int:
    """``channel`` as an index into ``channels`` map channels (negative counts from the end)."""
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not -channels <= channel < channels:
        raise ValueError(f"channel {channel} out of range for a map with {channels} channel(s).")
    return int(channel) % channels


@dataclass(frozen=True)
class PreparedCase:
    """One case, ready to write: its map on the source grid and what every format derives from it.

    Args:
        explanation: the case (batch size 1), its map still in the space it was made in.
        reference: the source it is written for.
        values: ``(K, *reference.spatial_shape)`` float32 map on the source grid, finite.
    """

    explanation: Explanation
    reference: SourceReference
    values: np.ndarray

    @property
    def kind(self) -> str:
        return self.explanation.kind

    @property
    def method(self) -> str:
        return self.explanation.method

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def targets(self) -> list[int]:
        return [int(t) for t in self.explanation.target[0].tolist()]

    def unit(self) -> np.ndarray:
        """Each channel min-max scaled into ``[0, 1]`` (what FRACTIONAL SEG, PNG and thresholds use)."""
        return normalize_unit(self.values)

    def masks(self, threshold: float = 0.5) -> np.ndarray:
        """Binary ``(K, *spatial)``: a mask's voxels ``>= 0.5``, a heatmap's ``>= threshold`` of its
        min-max scale: the one binarisation of every format that stores masks."""
        if self.kind == MASK:
            return self.values >= 0.5
        return self.unit() >= check_threshold(threshold)

    def labels(self, labels: Labels = None) -> list[str]:
        """One label per map channel: ``"<method> <class name>"`` (class name from ``labels`` by target
        index, else ``"class <index>"``), at most 64 characters (the DICOM limit)."""
        out = []
        for t in self.targets:
            if labels is None:
                name = f"class {t}"
            else:
                try:
                    name = str(labels[t])
                except (IndexError, KeyError):
                    raise ValueError(f"labels has no entry for target class {t}; give a name for every class explained.") from None
            out.append(f"{self.method} {name}"[:64])
        return out

    def colors(self, colors: Sequence[Sequence[int]] | None = None) -> list[tuple[int, int, int]]:
        """One display colour (RGB 0-255) per map channel: from ``colors``, else a fixed palette."""
        if colors is None:
            return [default_color(k) for k in range(self.channels)]
        if len(colors) < self.channels:
            raise ValueError(f"colors gives {len(colors)} colour(s) for {self.channels} map channel(s).")
        return [tuple(int(c) for c in rgb) for rgb in colors[: self.channels]]


class Writer:
    """Base of every writer. Subclasses declare what they accept and implement :meth:`write`; their
    docstring documents the public function (the instance) with its options.

    Class attributes:
        name: the key in :data:`medcam_monai.io.writers.WRITERS` (and the handler's folder name).
        function: the public function that calls it, for messages (e.g. ``"write_nifti"``).
        suffix: the file suffix of its outputs (the handler names files ``<case><suffix>``).
        endings: file endings the format requires (chosen by the file name); empty accepts any.
        sources: source kinds it writes for, from :data:`SOURCE_KINDS`.
        spatial_dims: spatial dimensionalities of sources it writes for.
        kinds: map kinds it takes (``"mask"``, ``"heatmap"``).
    """

    name: ClassVar[str]
    function: ClassVar[str]
    suffix: ClassVar[str]
    endings: ClassVar[tuple[str, ...]] = ()
    sources: ClassVar[tuple[str, ...]] = SOURCE_KINDS
    spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    kinds: ClassVar[tuple[str, ...]] = (MASK, HEATMAP)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an intermediate base (e.g. the DICOM writers' shared part): no format of its own
        for attr in ("name", "function", "suffix"):
            if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
                raise TypeError(f"Writer {cls.__name__} must set {attr!r}.")
        if not cls.suffix.startswith("."):
            raise TypeError(f"Writer {cls.__name__}.suffix must start with a dot, got {cls.suffix!r}.")
        if not set(cls.sources) <= set(SOURCE_KINDS) or not set(cls.kinds) <= {MASK, HEATMAP} or not set(cls.spatial_dims) <= {2, 3}:
            raise TypeError(f"Writer {cls.__name__} declares sources/kinds/spatial_dims outside {SOURCE_KINDS}, (mask, heatmap), (2, 3).")
        if cls.endings and not cls.suffix.endswith(cls.endings):
            raise TypeError(f"Writer {cls.__name__}.suffix {cls.suffix!r} is not one of its endings {cls.endings}.")

    def __init__(self) -> None:
        # A writer object is its public ``write_*`` function: it carries that name, the format's
        # docs and the call signature with the format's own options, declared once in write().
        self.__name__ = self.__qualname__ = self.function
        self.__doc__ = type(self).__doc__
        self.__module__ = type(self).__module__
        options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in inspect.signature(self.write).parameters.items() if n not in ("case", "path")]
        positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter("explanation", positional, annotation="Explanation"),
                inspect.Parameter("source", positional, annotation="object"),
                inspect.Parameter("path", positional, annotation="str | os.PathLike"),
                inspect.Parameter("case", inspect.Parameter.KEYWORD_ONLY, default=0, annotation="int"),
                *options,
            ],
            return_annotation="pathlib.Path",
        )

    def accepts(self, source: str, spatial_dims: int, kind: str = HEATMAP) -> bool:
        """Whether this writer writes a ``kind`` map for a ``spatial_dims``-D source of kind ``source``
        (``"dicom"``, ``"image"`` or ``"wsi"``)."""
        return source in self.sources and spatial_dims in self.spatial_dims and kind in self.kinds

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, suffix={self.suffix!r})"

    # -- hooks --------------------------------------------------------------------------------------
    def check_options(self, explanation: Explanation, reference: SourceReference, **options: Any) -> None:
        """Validate option values before any work (the map is not on the source grid yet). The
        options shared by several formats are checked here; subclasses add theirs and call super."""
        if "threshold" in options:
            check_threshold(options["threshold"])
        K = int(explanation.map.shape[1])
        if options.get("channel") is not None:
            check_channel(options["channel"], K)
        if options.get("colors") is not None and len(options["colors"]) < K:
            raise ValueError(f"colors gives {len(options['colors'])} colour(s) for {K} map channel(s).")

    def write(self, case: PreparedCase, path: Path, **options: Any) -> None:
        """Write ``case`` to ``path`` (a temporary file beside the final one; keep its suffixes)."""
        raise NotImplementedError

    # -- the shared preparation -----------------------------------------------------------------------
    def _refuse(self, reference: SourceReference, explanation: Explanation, path: Path) -> None:
        if reference.type not in self.sources:
            wanted = " or ".join(_SOURCE_NOUNS[s] for s in self.sources)
            raise TypeError(f"{self.function} needs {wanted}; got a {type(reference).__name__} for {reference.path}.")
        dims = len(reference.spatial_shape)
        if dims not in self.spatial_dims:
            wanted = " or ".join(f"{d}D" for d in self.spatial_dims)
            raise ValueError(f"{self.function} needs a {wanted} source, got {dims}D {reference.spatial_shape} ({reference.path}).")
        if explanation.kind not in self.kinds:
            raise ValueError(f"{self.function} writes {' or '.join(self.kinds)} maps, got a {explanation.kind}.")
        if self.endings and not str(path).lower().endswith(self.endings):
            raise ValueError(f"{self.function} writes files ending {' or '.join(self.endings)} (readers choose the format by it); got {path}.")

    def prepare(self, explanation: Explanation, reference: SourceReference) -> PreparedCase:
        """Bring the case onto the source grid (resampled by affine when it is in network space)."""
        return PreparedCase(explanation, reference, map_on_source(explanation, reference))

    def __call__(self, explanation: Explanation, source: object, path: str | os.PathLike, *, case: int = 0, **options: Any) -> Path:
        """Write case ``case`` of ``explanation`` for ``source`` to ``path`` (atomically); see the module."""
        try:
            inspect.signature(self.write).bind(None, None, **options)
        except TypeError as e:
            accepted = [p for p in inspect.signature(self.write).parameters if p not in ("case", "path")]
            raise TypeError(f"{self.function}: {e}; its options are {accepted}.") from None
        with header_cache():  # a DICOM source's headers are parsed once per call
            reference = as_source_reference(source)
            one = select_case(explanation, case)
            self._refuse(reference, one, Path(path))
            self.check_options(one, reference, **options)
            prepared = self.prepare(one, reference)
            with atomic_path(path) as tmp:
                self.write(prepared, tmp, **options)
        return Path(path)


class SegmentWriter(Writer):
    """Base of the formats that store one named, coloured binary segment per map channel (3D Slicer
    segmentations, QuPath annotations): the options and the binarisation are shared, subclasses
    implement :meth:`write_segments`."""

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        threshold: float = 0.5,
        labels: Labels = None,
        colors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.write_segments(case, case.masks(threshold), case.labels(labels), case.colors(colors), path)

    def write_segments(self, case: PreparedCase, masks: np.ndarray, labels: list[str], colors: list[tuple[int, int, int]], path: Path) -> None:
        """Write ``(K, *spatial)`` boolean ``masks`` with one label and colour each to ``path``."""
        raise NotImplementedError
