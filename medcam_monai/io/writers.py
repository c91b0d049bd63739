"""The writers by name, as bundle configs and the handler name them.

``WRITERS[name]`` is a :class:`~medcam_monai.io.writer.Writer`: callable as
``writer(explanation, source, path, *, case=0, **options)``, with ``writer.suffix`` (the file
suffix of its outputs) and ``writer.accepts(source_kind, spatial_dims, kind)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from medcam_monai.io.dicom_seg import write_dicom_seg
from medcam_monai.io.geojson import write_geojson
from medcam_monai.io.nifti import write_nifti
from medcam_monai.io.parametric_map import write_parametric_map
from medcam_monai.io.png import write_png_overlay
from medcam_monai.io.slicer import write_slicer_seg
from medcam_monai.io.writer import Writer
from medcam_monai.io.wsi import write_wsi_overlay

__all__ = ["WRITERS", "WRITER_SUFFIXES", "writer_table", "writers_for"]


def writer_table(writers: Iterable[Writer]) -> Mapping[str, Writer]:
    """A name -> writer table, refusing anything that is not a :class:`Writer` and repeated names or
    suffixes (two writers of one case must never write the same file)."""
    table: dict[str, Writer] = {}
    suffixes: dict[str, str] = {}
    for w in writers:
        if not isinstance(w, Writer):
            raise TypeError(f"A writer table holds Writer objects, got {w!r}.")
        if w.name in table:
            raise ValueError(f"Two writers are named {w.name!r}.")
        if w.suffix in suffixes:
            raise ValueError(f"Writers {suffixes[w.suffix]!r} and {w.name!r} share the suffix {w.suffix!r}.")
        table[w.name] = w
        suffixes[w.suffix] = w.name
    return table


WRITERS: Mapping[str, Writer] = writer_table([write_nifti, write_dicom_seg, write_parametric_map, write_slicer_seg, write_png_overlay, write_wsi_overlay, write_geojson])

# file suffix of each writer's output (the same as WRITERS[name].suffix)
WRITER_SUFFIXES: dict[str, str] = {name: w.suffix for name, w in WRITERS.items()}


def writers_for(source_kind: str, spatial_dims: int, kind: str) -> list[str]:
    """The names of the writers that write a ``kind`` map for such a source, in table order."""
    return [name for name, w in WRITERS.items() if w.accepts(source_kind, spatial_dims, kind)]
