"""The one object every explainer returns and every writer, metric and handler consumes."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

__all__ = ["Explanation", "MASK", "HEATMAP", "like_input", "to_json_value"]

MASK = "mask"
HEATMAP = "heatmap"


def like_input(source: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` (detached) as a ``MetaTensor`` carrying ``source``'s metadata (affine, applied
    operations) when ``source`` is one, so explanation maps can be inverted and written on the
    source grid; ``t`` unchanged otherwise. The one place an explanation map is wrapped as a MetaTensor."""
    t = t.detach()
    if hasattr(t, "as_tensor"):  # a MetaTensor: drop its own metadata, the source's is what counts
        t = t.as_tensor()
    if hasattr(source, "copy_meta_from"):
        from monai.data import MetaTensor

        return MetaTensor(t, meta=dict(source.meta), applied_operations=list(source.applied_operations))
    return t


def _index(value: Any, i: int) -> Any:
    """Select case ``i`` of a batched value, keeping the batch dimension."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value[i : i + 1]
    if isinstance(value, dict):
        return {k: _index(v, i) for k, v in value.items()}
    if isinstance(value, list):
        return value[i : i + 1]
    return value


def to_json_value(value: Any) -> Any:
    """Any value as JSON-serialisable data: tensors and numpy values as numbers or lists, dict keys as
    strings, paths as strings, non-finite floats as None, and anything else as its ``repr``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


@dataclass
class Explanation:
    """An explanation of a batch of ``B`` cases, in the network's input space.

    Args:
        map: ``(B, K, *spatial)`` float tensor (a ``MetaTensor`` when the input was one, so the
            affine travels to the writers). ``kind == "mask"``: binary ``{0, 1}`` evidence mask;
            ``kind == "heatmap"``: continuous, non-inverted map (larger means more evidence).
            ``K`` is the number of targets explained (1 for Med-CAM).
        kind: ``"mask"`` or ``"heatmap"``.
        method: the explainer's name, e.g. ``"medcam"``, ``"seg_hires_grad_cam"``.
        target: ``(B, K)`` long tensor, the class explained for each case and map channel.
        scores: per-case figures, each ``(B,)`` or ``(B, ...)``: for Med-CAM ``prob_x``,
            ``prob_e``, ``prob_rob`` (probability of the target), ``probs_x``/``probs_e``/
            ``probs_rob`` ``(B, num_classes)``, ``area_fraction``, ``decision_kept``.
        soft_map: ``(B, K, *spatial)`` continuous mask in ``[0, 1]`` (Med-CAM's ``m``).
        evidence: ``(B, C, *spatial)`` the masked image ``e = m * x`` (Med-CAM).
        layer_map: ``(B, K, *layer_spatial)`` CAM at the hooked layer's resolution.
        history: loss term name -> ``(steps, B)`` tensor, one row per optimisation step.
        steps: ``(B,)`` optimisation steps run per case.
        stop_reason: one string per case, why its optimisation stopped.
        seconds: wall time of the whole call.
        settings: the explainer's settings, JSON-friendly, for the case records.
    """

    map: torch.Tensor
    kind: str
    method: str
    target: torch.Tensor
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    soft_map: torch.Tensor | None = None
    evidence: torch.Tensor | None = None
    layer_map: torch.Tensor | None = None
    history: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: torch.Tensor | None = None
    stop_reason: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in (MASK, HEATMAP):
            raise ValueError(f"Explanation.kind must be {MASK!r} or {HEATMAP!r}, got {self.kind!r}.")
        if self.map.ndim < 3:
            raise ValueError(f"Explanation.map must be (B, K, *spatial), got shape {tuple(self.map.shape)}.")
        if self.target.ndim != 2 or tuple(self.target.shape) != tuple(self.map.shape[:2]):
            raise ValueError(
                f"Explanation.target must be (B, K) = {tuple(self.map.shape[:2])} to match map, "
                f"got shape {tuple(self.target.shape)}."
            )

    def __len__(self) -> int:
        return self.map.shape[0]

    @property
    def spatial_dims(self) -> int:
        return self.map.ndim - 2

    def __getitem__(self, i: int) -> Explanation:
        """Case ``i`` as an Explanation of batch size 1."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"case {i} out of range for an Explanation of {len(self)} cases")
        i = i % len(self)
        updates = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "history":
                updates[f.name] = {k: v[:, i : i + 1] for k, v in value.items()}
            elif f.name not in ("kind", "method", "seconds", "settings"):
                updates[f.name] = _index(value, i)
        return replace(self, **updates)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per case: method, targets, scores, steps, stop reason."""
        records = []
        for i in range(len(self)):
            case = self[i]
            record = {
                "method": self.method,
                "kind": self.kind,
                "target": to_json_value(case.target[0]),
                "scores": {k: to_json_value(v[0]) for k, v in case.scores.items()},
                "seconds": self.seconds,
                "settings": to_json_value(self.settings),
            }
            if case.steps is not None:
                record["steps"] = to_json_value(case.steps[0])
            if case.stop_reason:
                record["stop_reason"] = case.stop_reason[0]
            if case.history:
                record["final_losses"] = {k: to_json_value(v[-1, 0]) for k, v in case.history.items() if len(v)}
            records.append(record)
        return records
