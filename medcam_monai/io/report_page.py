"""One HTML page that shows the explanations of a run side by side: for each case its PNG figure and
a line that says what the model decided, whether that is right when the label is known, and what the
explanation shows. Written by the demo (``report.html``); any list of handler records can be shown.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Section", "case_summary", "write_report_page"]


def _name(class_names: Sequence[str] | None, index: int) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return f"{index} ({class_names[index]})"
    return str(index)


# Med-CAM reports the whole image where no smaller mask keeps the decision (its "sufficient" score)
NO_SMALLER_MASK = "no mask smaller than the image keeps the decision, so the whole image is shown"


def case_summary(record: Mapping[str, Any], class_names: Sequence[str] | None = None) -> str:
    """One line for a handler record: the decision, whether it is right, and what the explanation shows.

    Classifier records say ``predicted 2 (ring lesion), label 2 (ring lesion): right`` or, when the
    model is wrong, ``... : the model is wrong here; the explanation shows what it used``; records
    without a label say that correctness is unknown. Med-CAM adds the class's probability on the
    image and on the evidence and the mask's area (and that no smaller mask keeps the decision,
    where the whole image is reported); segmentation CAMs the class and the pixel set.
    """
    scores = record.get("scores") or {}
    target = record.get("target")
    target = target[0] if isinstance(target, list) else target
    parts = []
    pred = record.get("pred_class")
    label = record.get("label")
    label = label[0] if isinstance(label, list) and label else label
    if pred is not None:
        decided = f"predicted {_name(class_names, int(pred))}"
        if label is None or isinstance(label, str):
            parts.append(f"{decided}; no label, so whether it is right is unknown")
        elif int(label) == int(pred):
            parts.append(f"{decided}, label {_name(class_names, int(label))}: right")
        else:
            parts.append(f"{decided}, label {_name(class_names, int(label))}: the model is wrong here; "
                         f"the explanation shows what it used")
    elif target is not None:
        parts.append(f"explains class {_name(class_names, int(target))}")
    if "prob_x" in scores:
        kept = "decision kept" if scores.get("decision_kept") else "decision NOT kept"
        parts.append(f"p(image) {scores['prob_x']:.2f} -> p(evidence) {scores.get('prob_e', float('nan')):.2f}, {kept}, "
                     f"mask {scores.get('area_fraction', float('nan')):.1%} of the image")
        if scores.get("sufficient") is False:
            parts.append(NO_SMALLER_MASK)
    elif "pixels" in scores:
        pixels = scores["pixels"][0] if isinstance(scores["pixels"], list) else scores["pixels"]
        parts.append(f"over the {int(pixels):,} voxels predicted as the class")
    return "; ".join(parts)


@dataclass
class Section:
    """A group of cases on the page.

    Args:
        title: the section's heading.
        records: handler records (with ``outputs["png"]`` for the figure; an optional ``"note"`` is
            appended to the case line, e.g. how the mask compares with the known evidence).
        notes: paragraphs shown above the cases (what the model is, how good it is).
        class_names: names of the class indices, for the case lines.
    """

    title: str
    records: Sequence[Mapping[str, Any]]
    notes: Sequence[str] = field(default_factory=list)
    class_names: Sequence[str] | None = None


def write_report_page(sections: Sequence[Section], path: str | os.PathLike, title: str = "Explanations") -> Path:
    """Write an HTML page with every section's figures side by side (links relative to the page, so
    the folder can be moved or zipped). Returns the path."""
    path = Path(path)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:110em}"
        ".cases{display:flex;flex-wrap:wrap;gap:1.2em}.case{flex:1 1 46%;min-width:28em}"
        ".case img{width:100%;border:1px solid #ccc}.line{font-size:0.95em;margin:0.3em 0 0.1em}"
        ".files{font-size:0.8em;color:#555}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        out += [f"<p>{html.escape(n)}</p>" for n in section.notes]
        out.append('<div class="cases">')
        for r in section.records:
            outputs = r.get("outputs") or {}
            png = outputs.get("png")
            out.append('<div class="case">')
            if png:
                src = os.path.relpath(png, path.parent)
                out.append(f'<a href="{html.escape(src)}"><img src="{html.escape(src)}" alt="{html.escape(str(r.get("case_id")))}"></a>')
            out.append(f'<p class="line"><b>{html.escape(str(r.get("case_id")))}</b>: '
                       f"{html.escape(case_summary(r, section.class_names) + str(r.get('note') or ''))}</p>")
            files = ", ".join(f'<a href="{html.escape(os.path.relpath(p, path.parent))}">{html.escape(k)}</a>'
                              for k, p in outputs.items() if isinstance(p, str))
            out.append(f'<p class="files">files: {files}</p></div>')
        out.append("</div>")
    out.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out), encoding="utf-8")
    return path
