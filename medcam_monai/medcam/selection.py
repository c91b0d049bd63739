"""From a soft mask to the binary mask Med-CAM reports: the smallest top-k that keeps the decision.

Thresholding the soft mask (``m > 0.5``, the paper's rule) reports whatever area the optimiser
happened to reach: on a saturated classifier that is often far more than needed, sometimes less
than enough. Instead, the pixels are ranked (by the soft mask, with the pixels the classifier does
not read last: :func:`relevance_order`) and the binary mask is the smallest top-k whose evidence
``k * x + (1 - k) * b`` keeps the decision (argmax is the target and the target's log-odds reach
``need``) on the fill ``b`` and over the robustness background ``r``.

Areas are searched on a geometric grid (steps of sqrt(2) from 0.1% of the image), by bisection
along the grid (sufficiency is taken to grow with the area along one ranking: about 5 probes of
one image per case), then refined by bisection between the last insufficient and the first
sufficient grid area. The whole image is the last candidate: its evidence is ``x`` itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medcam_monai.medcam.losses import logit_margin

__all__ = ["AREA_GRID", "Selection", "smallest_sufficient", "thresholded", "prefer", "relevance_order"]

AREA_GRID = tuple(0.001 * 2 ** (i / 2) for i in range(19))  # 0.1% .. 51%, steps of sqrt(2)

Logits = Callable[[torch.Tensor], torch.Tensor]


class Selection:
    """The selected binary masks ``(K, 1, *spatial)``, their pixel counts ``(K,)``, whether each is
    sufficient and smaller than the whole image ``(K,)``, the classifier images it took, and the
    largest pixel count known not to be sufficient below each selected one ``(K,)``, 0 where none
    is known (with ``counts``, the bracket a later refinement resumes from: ``bracket`` of
    :func:`smallest_sufficient`)."""

    def __init__(
        self,
        binary: torch.Tensor,
        counts: torch.Tensor,
        sufficient: torch.Tensor,
        probes: torch.Tensor,
        low: torch.Tensor | None = None,
    ):
        self.binary, self.counts, self.sufficient, self.probes = binary, counts, sufficient, probes
        self.low = torch.zeros_like(counts) if low is None else low

    @property
    def area(self) -> torch.Tensor:
        return self.counts.float() / self.binary[0].numel()


def relevance_order(soft: torch.Tensor, gain: torch.Tensor, window: int = 3, floor: float = 0.2) -> torch.Tensor:
    """Ranking scores: the soft mask's order, with the pixels the classifier does not read last.

    A pixel is read where the decision's local sensitivity to the mask, ``|gain|`` (``gain``: the
    derivative of the target's log-odds on the soft evidence with respect to the mask) averaged
    over a ``window``-pixel neighbourhood, exceeds ``floor`` times its maximum over the image.
    Read pixels score ``1 + soft``, the others ``soft``.

    Why: the soft mask also holds regions the classifier ignores (a 3D DenseNet's U-Nets kept
    blobs of ~2000 voxels at ``m > 0.5`` away from a 64-voxel marker: only the area term, 1/N per
    voxel, pushes a mask down where the decision does not care), and ranked by ``soft`` alone they
    came before the marker (median precision 0.11). Ranking by the gradient itself (``soft *
    |gain|``) fixed that but followed the gradient's noise on MobileNet-V2 (precision 0.72 against
    0.83 by ``soft``, a decision lost over a new background); the gate keeps the U-Net's order where
    the classifier reads. On the same soft masks (4 families, 6-12 held-out cases each) window 3
    and floor 0.2 gave median precision 0.93-1.00 with every decision kept over a new background
    (``benchmarks/bench_medcam_ranking.py``, docs/benchmarks.md).

    Args:
        soft: ``(K, 1, *spatial)`` soft masks in [0, 1].
        gain: ``(K, 1, *spatial)`` derivative of the target's log-odds with respect to the mask.
        window: side of the averaging neighbourhood (odd).
        floor: the fraction of the largest averaged ``|gain|`` below which a pixel is not read.
    """
    pool = F.avg_pool3d if soft.ndim == 5 else F.avg_pool2d
    reads = pool(gain.abs().float(), window, 1, window // 2, count_include_pad=False)
    top = reads.flatten(1).amax(1).view(-1, *([1] * (reads.ndim - 1)))
    read = (reads > floor * top) & (top > 0)
    return torch.where(read, 1 + soft.float(), soft.float())


def _keeps(logits: torch.Tensor, target: torch.Tensor, need: torch.Tensor | None) -> torch.Tensor:
    ok = logits.argmax(1) == target
    if need is not None:
        ok &= logit_margin(logits, target) >= need
    return ok


def _top(ranks: torch.Tensor, counts: torch.Tensor, shape) -> torch.Tensor:
    return (ranks < counts[:, None]).to(torch.float32).view(len(counts), 1, *shape)


@torch.no_grad()
def smallest_sufficient(
    logits_of: Logits,
    x: torch.Tensor,
    soft: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor,
    target: torch.Tensor,
    need: torch.Tensor | None = None,
    threshold: float = 0.5,
    refine: int = 0,
    grid=AREA_GRID,
    order: torch.Tensor | None = None,
    bracket: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Selection:
    """The smallest sufficient top-k per case, pixels ranked by ``order`` (default ``soft``).

    Args:
        logits_of: the classifier, ``(N, C, *spatial) -> (N, num_classes)`` logits.
        x: images ``(K, C, *spatial)``; ``soft``: soft masks ``(K, 1, *spatial)``.
        b: the evidence fill ``(K, C, *spatial)``; ``r``: the robustness background (same shape).
        target: ``(K,)`` classes; ``need``: ``(K,)`` log-odds the evidence on the fill must reach.
        threshold: the soft mask's thresholded area is one more candidate.
        refine: bisection rounds between the last insufficient and the first sufficient grid area.
        grid: candidate areas (fractions of the image).
        order: ``(K, 1, *spatial)`` ranking scores, highest first (e.g. :func:`relevance_order`);
            the soft mask's thresholded area stays a candidate.
        bracket: ``(known, counts, low)``, each ``(K,)``: where ``known``, the grid search already
            ran on the same ``soft``, ``order`` and ``need`` (``counts`` and ``low`` of its
            :class:`Selection`) and only the ``refine`` rounds run. Med-CAM's final selection
            resumes the last early-stopping check's this way: one search per mask, not two.
    """
    k, shape = x.shape[0], x.shape[2:]
    flat = soft.reshape(k, -1).float()
    n = flat.shape[1]
    scores = flat if order is None else order.reshape(k, -1).float()
    sorted_idx = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(sorted_idx)
    ranks.scatter_(1, sorted_idx, torch.arange(n, device=x.device).expand(k, n).contiguous())
    fixed = sorted({max(1, min(n, round(a * n))) for a in grid} | {n})
    at_threshold = (flat > threshold).sum(1).clamp(1, n)
    cands = torch.cat([torch.tensor(fixed, device=x.device).expand(k, -1), at_threshold[:, None]], 1).sort(1).values
    last = cands.shape[1] - 1
    probes = torch.zeros(k, dtype=torch.long)

    def probe(rows: torch.Tensor, counts: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
        masks = _top(ranks[rows], counts, shape)
        logits = logits_of(masks * x[rows] + (1 - masks) * over[rows])
        probes[rows.cpu()] += 1
        return _keeps(logits, target[rows], need[rows] if need is not None and over is b else None)

    # bisection along the grid on the fill (the whole image, the last candidate, is not probed)
    lo = torch.zeros(k, dtype=torch.long, device=x.device)
    hi = torch.full((k,), last, dtype=torch.long, device=x.device)
    known = torch.zeros(k, dtype=torch.bool, device=x.device)
    if bracket is not None:
        known = bracket[0].to(x.device).bool()
        lo = torch.where(known, hi, lo)  # nothing left to search on the grid
    while bool((lo < hi).any()):
        rows = torch.nonzero(lo < hi).flatten()
        mid = (lo[rows] + hi[rows]) // 2
        ok = probe(rows, cands[rows, mid], b)
        hi[rows] = torch.where(ok, mid, hi[rows])
        lo[rows] = torch.where(ok, lo[rows], mid + 1)
    # the robustness background is checked once, on the found area, moving up the grid until it holds
    pending = torch.nonzero((hi < last) & ~known).flatten()
    while len(pending):
        ok = probe(pending, cands[pending, hi[pending]], r)
        hi[pending[~ok]] += 1
        pending = pending[~ok & (hi[pending] < last)]
    counts = cands.gather(1, hi[:, None])[:, 0]
    # refine between the last insufficient candidate and the found one, on both backgrounds
    low = torch.where(hi > 0, cands.gather(1, (hi - 1).clamp_min(0)[:, None])[:, 0], torch.zeros_like(counts))
    if bracket is not None:
        counts = torch.where(known, bracket[1].to(counts), counts)
        low = torch.where(known, bracket[2].to(low), low)
    for _ in range(refine):
        rows = torch.nonzero((counts - low > 1) & (counts < n)).flatten()
        if not len(rows):
            break
        mid = (low[rows] + counts[rows]) // 2
        ok = probe(rows, mid, b) & probe(rows, mid, r)
        counts[rows] = torch.where(ok, mid, counts[rows])
        low[rows] = torch.where(ok, low[rows], mid)
    return Selection(_top(ranks, counts, shape), counts.cpu(), (counts < n).cpu(), probes, low.cpu())


@torch.no_grad()
def thresholded(
    logits_of: Logits,
    x: torch.Tensor,
    soft: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor,
    target: torch.Tensor,
    need: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> Selection:
    """The paper's ``m > threshold``, with whether it keeps the decision (as :func:`smallest_sufficient`)."""
    k = x.shape[0]
    binary = (soft > threshold).float()
    logits = logits_of(torch.cat([binary * x + (1 - binary) * b, binary * x + (1 - binary) * r]))
    ok = _keeps(logits[:k], target, need) & _keeps(logits[k:], target, None)
    counts = binary.reshape(k, -1).sum(1).long()
    return Selection(binary, counts.cpu(), (ok & (counts < binary[0].numel())).cpu(), torch.full((k,), 2))


def prefer(first: Selection, fallback: Selection) -> Selection:
    """Per case, ``first`` where it is sufficient, else ``fallback`` (both over the same cases);
    the probes of both are counted."""
    use = first.sufficient.to(first.binary.device)
    pick = use.view(-1, *([1] * (first.binary.ndim - 1)))
    return Selection(
        torch.where(pick, first.binary, fallback.binary),
        torch.where(first.sufficient, first.counts, fallback.counts),
        first.sufficient | fallback.sufficient,
        first.probes + fallback.probes,
        torch.where(first.sufficient, first.low, fallback.low),
    )
