"""Med-CAM: a minimal binary evidence mask for a frozen classifier's decision.

For each image ``x`` a small U-Net ``g`` (MONAI's ``BasicUNet``) is trained so that
``m = sigmoid(g(x))`` keeps the classifier's decision on the evidence ``e = m * x + (1 - m) * b``
while covering as little as possible (:class:`~medcam_monai.medcam.config.LossWeights`). ``b`` is
the evidence fill (:mod:`~medcam_monai.medcam.fills`): the paper's zero where zero is in
distribution, else a blurred copy of the image. The reported binary mask is the smallest top-k of
``m``'s pixels that keeps the decision (ranked by ``m``, those the classifier does not read last;
:mod:`~medcam_monai.medcam.selection`), and a case stops when that mask no longer shrinks and the
optimisation has nothing left to shrink
(:class:`~medcam_monai.medcam.config.EarlyStopping`), with its reason.

Batches are explained together: each case has its own U-Net (the same seeded initial weights as
when explained alone), the classifier sees all masked images of a step in one forward pass, and
per-case losses are summed so every U-Net's gradient is exactly its own case's gradient. Adam is
element-wise, so one optimiser over all U-Nets equals one optimiser per U-Net. A case that stops
early leaves the batch.

:meth:`MedCAM.fit` trains one U-Net across a data set with the same loss (amortised Med-CAM); each
image then starts from it and needs only a few refinement steps.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from medcam_monai.checks import check_class_logits, check_image
from medcam_monai.explanation import MASK, Explanation, like_input
from medcam_monai.hooks import LayerRecorder, deepest_layer, frozen, unwrap_model
from medcam_monai.medcam import losses
from medcam_monai.medcam.config import EarlyStopping, LossWeights
from medcam_monai.medcam.fills import Fill, describe_fill, make_fill, resolve_fill
from medcam_monai.medcam.selection import AREA_GRID, Selection, prefer, relevance_order, smallest_sufficient, thresholded
from medcam_monai.medcam.stopping import CaseProgress
from medcam_monai.perturbation import BACKGROUNDS, is_random_background, make_background
from medcam_monai.targets import TargetSpec, classifier_targets

__all__ = ["MedCAM", "MaskedInputError", "LOSS_TERMS", "UNET_FORMAT"]

LOSS_TERMS = ("act", "ce", "kl", "area", "bin", "tv", "rob", "total")
# besides the loss terms, ``history`` holds the soft evidence's log-odds of the target, the
# minimality scale, and the selected area at each check (NaN between checks)
HISTORY = (*LOSS_TERMS, "margin", "min_scale", "selected_area")
UNET_FORMAT = "medcam-monai/mask-unet/1"
SELECTIONS = ("sufficient", "threshold")
RANKINGS = ("relevance", "soft")
CONFIDENCES = ("image", "soft")
_UNET_DEPTH = 16  # BasicUNet halves the grid four times
_UNET_MIN = 32  # and its instance norm needs more than one voxel at the bottom
PER_IMAGE_MASK_SCALE = 0.5  # mask_scale=None: a U-Net trained per image works at half resolution
AMORTISED_MASK_SCALE = 1.0  # and the amortised one of fit() at full resolution (measured, see mask_scale)
_FINAL_REFINE = 2  # bisection rounds of the final selection between two grid areas (<= 1.09x)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class _EachOnItsOwn:
    """Each case's U-Net on its own image, as one vectorised call (``torch.func.vmap``).

    The same values as ``torch.cat([unets[i](x[i : i + 1]) for i in idx])`` (to float rounding),
    with one set of kernels for the batch instead of one per case: the loop was launch-bound on a
    GPU. The parameters are stacked at every call, so each U-Net's gradient reaches its own
    parameters and a case that left the batch is not touched (its parameters get no gradient).
    """

    def __init__(self, unet: nn.Module, vectorise: bool = True) -> None:
        self.vectorise = vectorise
        # the U-Net's structure without storage (only the vectorised call needs it)
        self.skeleton = copy.deepcopy(unet).to("meta") if vectorise else None
        self.names = [n for n, _ in unet.named_parameters()]
        self.buffer_names = [n for n, _ in unet.named_buffers()]

    def __call__(self, unets: Sequence[nn.Module], idx: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        if not self.vectorise or len(idx) == 1:
            return torch.cat([unets[i](x[i : i + 1]) for i in idx])
        params = [dict(unets[i].named_parameters()) for i in idx]
        buffers = [dict(unets[i].named_buffers()) for i in idx]
        state = {n: torch.stack([p[n] for p in params]) for n in self.names}
        state.update({n: torch.stack([b[n] for b in buffers]) for n in self.buffer_names})

        def one(weights: dict, image: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, weights, (image[None],))[0]

        return vmap(one)(state, x[list(idx)])


class _Checked(NamedTuple):
    """What the early-stopping check a case stopped at found: its soft mask ``(1, *spatial)``, the
    ranking and the soft evidence's log-odds (None with ``rank="soft"``), the selected pixel
    count and the largest count found insufficient below it."""

    soft: torch.Tensor
    order: torch.Tensor | None
    margin: torch.Tensor | None
    counts: torch.Tensor
    low: torch.Tensor


class MaskedInputError(RuntimeError):
    """The classifier failed on a masked image although it ran on the original."""


class MedCAM:
    """Explain a frozen classifier's decisions with minimal binary evidence masks.

    Args:
        classifier: any ``nn.Module`` mapping ``(B, C, *spatial)`` to logits ``(B, num_classes)``
            (timm, MONAI, torchvision, DDP-wrapped). It is never changed: parameters, buffers,
            ``training`` flags, ``requires_grad`` flags and hooks are as before, also on errors.
        layer: the ``named_modules()`` name (or a list of names) whose post-ReLU outputs (feature
            maps, or a transformer's tokens) are matched between ``x`` and ``e`` when
            ``weights.act > 0``. Default: :func:`~medcam_monai.hooks.deepest_layer` (the smallest
            feature map; for a ViT its deepest tokens that reach the decision).
        layer_weights: ``alpha_l`` per layer (default 1 each).
        distance: ``"mse"`` or ``"cosine"`` for activation matching.
        weights: a :class:`LossWeights`, a preset name (``"bach"`` 10:100:10, ``"ham10000"``
            10:150:20, with the paper's activation matching and KL) or a dict of lambdas.
        fill: what replaces the removed part of the image, ``e = m * x + (1 - m) * b``:
            ``"auto"`` (default: ``"zero"`` where zero is in distribution, else ``"blur"``),
            ``"zero"`` (the paper), ``"mean"``, ``"blur"``, a tensor or a callable
            (:func:`~medcam_monai.medcam.fills.make_fill`).
        fill_sigma: the blur fill's standard deviation in voxels (default 1/16 of the smallest side).
        fill_value: the ``"mean"`` fill's value per channel (default: the data set's mean recorded
            by :meth:`fit`, else each image's mean).
        background: the robustness background ``r`` of ``f(m * x + (1 - m) * r)``, its own setting:
            ``"constant"`` (default: each channel's mean; a background the fill is not),
            ``"blur"``, ``"uniform"``, ``"gaussian"``, ``"shuffle"``.
        background_kwargs: extra arguments of the background generator (``sigma``, ``value``, ``patch``).
        decision: the decision term: ``"margin"`` (default: hinge on the target's log-odds, which
            does not saturate on confident classifiers), ``"softmargin"`` or ``"ce"`` (the paper's
            cross-entropy); see :func:`~medcam_monai.medcam.losses.decision_loss`.
        keep_p: the probability of the target the evidence must reach: the decision term pushes
            the soft evidence to it, and a selected mask must reach ``min(p(x), keep_p)`` on the fill
            (a mask that only just keeps the argmax was measured not to keep the decision over new
            backgrounds: 88% against 100% with 0.99 on DenseNet121).
        select: ``"sufficient"`` (default: the smallest top-k of the pixels, in ``rank``'s order,
            that keeps the decision) or ``"threshold"`` (the paper's ``m > threshold``).
        rank: how ``select="sufficient"`` orders the pixels of its top-k: ``"relevance"`` (default:
            by the soft mask, the pixels the classifier does not read last, judged by the
            gradient of the target's log-odds on the soft evidence; one more classifier pass with
            its backward per selection, see :func:`~medcam_monai.medcam.selection.relevance_order`)
            or ``"soft"`` (the soft mask alone). The soft mask also holds regions the classifier
            ignores, and ranked by it alone they came first: 3D DenseNet median precision 0.11
            with ``"soft"``, 1.00 with ``"relevance"`` (CPU, 8 cases, docs/benchmarks.md).
        confidence: how confident the selected mask's evidence must be (``select="sufficient"``):
            ``"image"`` (default: ``min(p(x), keep_p)``, the smallest mask that convinces the
            classifier as much as the image does) or ``"soft"`` (as much as the U-Net's soft
            evidence, where a top-k reaches it, else as the image: the paper's effect, evidence
            more convincing than the image when the rest of the image argues against the
            decision; larger masks). Measured with a decoy of the other class in the image
            (label-smoothed ResNet-18): p(x) 0.76, soft evidence 0.90, ``"soft"`` 0.86,
            ``"image"`` 0.79.
        init_mask: the mask every U-Net starts from (a constant; 0.5 puts the classifier where its
            gradient points at the evidence, measured on DenseNet121 and ResNet-18).
        steps: the most optimisation steps per case.
        lr: Adam learning rate of the U-Nets.
        threshold: the soft mask's threshold (``select="threshold"``; a candidate area otherwise).
        mask_scale: the U-Net works on the image resized by this factor and its mask is upsampled
            (linearly) to the input size. None (default): 0.5 for a U-Net trained per image; 1.0 for
            the amortised U-Net of :meth:`fit` (a file of :meth:`save_unet` brings the scale it was
            fitted at). One U-Net for a whole data set must find the evidence in its first pass, and
            at half resolution its masks were imprecise: refined 5 steps, median precision 0.54
            (ResNet-18) and 0.48 (DenseNet121) against 0.73 and 1.00 at full resolution, per-image
            training 0.75 and 1.00 (12 cases each, ``rank="soft"``, docs/benchmarks.md).
        unet_features: ``BasicUNet`` features (6 numbers).
        early_stopping: an :class:`EarlyStopping`, or None to always run ``steps``.
        warm_start: a U-Net to start every case from: a ``state_dict`` (e.g. :meth:`unet_state`),
            or the path of a file written by :meth:`save_unet` (an amortised U-Net of :meth:`fit`).
        refine_steps: steps per case from a fitted or warm-started U-Net before its first check; a
            case whose selected mask is sufficient then stops; the others restart as per-image
            training (a fresh U-Net and optimiser state: the answer of per-image training at this
            explainer's ``mask_scale``, ``refine_steps`` steps later, within ``steps``). With the
            fitted U-Net at full resolution, 10 steps gave median precision 1.00 on ResNet-18,
            DenseNet121 and MobileNet-V2, as per-image training; after 5 steps MobileNet-V2's masks
            were sufficient but not yet refined (precision 0.69, area 1.6x the marker; CPU, 12, 12
            and 6 cases, docs/benchmarks.md).
        amp: ``"bf16"`` to run the classifier and the U-Net under bfloat16 autocast (losses in fp32),
            or None for fp32.
        vectorise: run the batch's U-Nets as one vectorised call (``torch.func.vmap``) instead of
            one after the other. None (default): on accelerators, where the loop is launch-bound;
            on CPU the loop keeps a case's result the same alone and in a batch (the vectorised
            convolutions round differently with the batch size, and Adam carries that: soft masks
            differed by up to 0.015 after 6 steps on the tests' classifier).
        post_relu: apply ReLU to recorded activations (the paper matches post-ReLU activations).
        seed: seeds the U-Nets' initial weights and random backgrounds, so runs are reproducible
            on CPU and a case gets the same result alone or in a batch.
        progress: show a progress bar over steps.

    The paper's loss, fill and selection: ``MedCAM(net, weights="bach", decision="ce",
    fill="zero", select="threshold", init_mask=0.88)``.
    """

    method = "medcam"

    def __init__(
        self,
        classifier: nn.Module,
        layer: Sequence[str] | str | None = None,
        layer_weights: Sequence[float] | None = None,
        distance: str = "mse",
        weights: LossWeights | str | dict | None = None,
        fill: Fill = "auto",
        fill_sigma: float | None = None,
        fill_value: Sequence[float] | float | torch.Tensor | None = None,
        background: str = "constant",
        background_kwargs: dict | None = None,
        decision: str = "margin",
        keep_p: float = 0.99,
        select: str = "sufficient",
        rank: str = "relevance",
        confidence: str = "image",
        init_mask: float = 0.5,
        steps: int = 300,
        lr: float = 0.03,
        threshold: float = 0.5,
        mask_scale: float | None = None,
        unet_features: Sequence[int] = (8, 8, 16, 32, 64, 8),
        early_stopping: EarlyStopping | None = EarlyStopping(),
        warm_start: dict | str | Path | None = None,
        refine_steps: int = 10,
        amp: str | None = None,
        vectorise: bool | None = None,
        post_relu: bool = True,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.classifier = unwrap_model(classifier)
        self.layers = [layer] if isinstance(layer, str) else (list(layer) if layer is not None else None)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        if self.layers is not None and self.layer_weights is not None and len(self.layers) != len(self.layer_weights):
            raise ValueError(f"{len(self.layer_weights)} layer_weights for {len(self.layers)} layers.")
        if distance not in losses.DISTANCES:
            raise ValueError(f"distance must be one of {losses.DISTANCES}, got {distance!r}.")
        self.distance = distance
        if weights is None:
            weights = LossWeights()
        elif isinstance(weights, str):
            weights = LossWeights.preset(weights)
        elif isinstance(weights, dict):
            weights = LossWeights(**weights)
        self.weights = weights
        resolve_fill(fill, torch.zeros(1, 1, 1))  # validates the setting now, not at the first image
        self.fill = fill
        self.fill_sigma = fill_sigma
        self.fill_value = None if fill_value is None else torch.as_tensor(fill_value, dtype=torch.float32).flatten()
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, got {background!r}.")
        self.background = background
        self.background_kwargs = dict(background_kwargs or {})
        if decision not in losses.DECISIONS:
            raise ValueError(f"decision must be one of {losses.DECISIONS}, got {decision!r}.")
        self.decision = decision
        for name, p in (("keep_p", keep_p), ("init_mask", init_mask), ("threshold", threshold)):
            if not 0 < p < 1:
                raise ValueError(f"{name} must be in (0, 1), got {p}.")
        self.keep_p, self.init_mask, self.threshold = float(keep_p), float(init_mask), float(threshold)
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}.")
        self.select = select
        if rank not in RANKINGS:
            raise ValueError(f"rank must be one of {RANKINGS}, got {rank!r}.")
        self.rank = rank
        if confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}.")
        self.confidence = confidence
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        self.steps = int(steps)
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {refine_steps}.")
        self.refine_steps = int(refine_steps)
        self.lr = float(lr)
        if mask_scale is not None and not 0 < mask_scale <= 1:
            raise ValueError(f"mask_scale must be in (0, 1] or None, got {mask_scale}.")
        self._mask_scale = None if mask_scale is None else float(mask_scale)
        self._fitted_scale: float | None = None  # the amortised U-Net's scale, when mask_scale is None
        if len(unet_features) != 6:
            raise ValueError(f"unet_features needs 6 numbers (BasicUNet), got {list(unet_features)}.")
        self.unet_features = tuple(int(f) for f in unet_features)
        self.early_stopping = early_stopping
        if amp not in (None, "bf16"):
            raise ValueError(f"amp must be None or 'bf16', got {amp!r}.")
        self.amp = amp
        self.vectorise = None if vectorise is None else bool(vectorise)
        self.post_relu = post_relu
        self.seed = int(seed)
        self.progress = progress
        self.warm_start: dict | None = None
        self.warm_start_source: str | None = None
        self.data_mean: torch.Tensor | None = None
        if warm_start is not None:
            self.load_unet(warm_start)
        self._last_unets: list[nn.Module] = []

    @property
    def mask_scale(self) -> float:
        """The U-Net's resolution factor in use (see ``mask_scale`` of the constructor)."""
        if self._mask_scale is not None:
            return self._mask_scale
        return self._fitted_scale if self._fitted_scale is not None else PER_IMAGE_MASK_SCALE

    # -- settings -------------------------------------------------------------------------------
    def settings(self) -> dict:
        """JSON-friendly settings of this explainer, stored with every explanation."""
        stop = self.early_stopping
        return {
            "layer": self.layers,
            "layer_weights": self.layer_weights,
            "distance": self.distance,
            "weights": self.weights.to_dict(),
            "fill": describe_fill(self.fill),
            "fill_sigma": self.fill_sigma,
            "fill_value": None if self.fill_value is None else self.fill_value.tolist(),
            "background": self.background,
            "background_kwargs": self.background_kwargs,
            "decision": self.decision,
            "keep_p": self.keep_p,
            "select": self.select,
            "rank": self.rank,
            "confidence": self.confidence,
            "init_mask": self.init_mask,
            "steps": self.steps,
            "refine_steps": self.refine_steps,
            "lr": self.lr,
            "threshold": self.threshold,
            "mask_scale": self.mask_scale,
            "unet_features": list(self.unet_features),
            "early_stopping": None if stop is None else stop.__dict__.copy(),
            "amp": self.amp,
            "vectorise": self.vectorise,
            "post_relu": self.post_relu,
            "seed": self.seed,
            "warm_start": self.warm_start_source,
        }

    # -- pieces -----------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if self.amp == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _new_unet(self, spatial_dims: int, channels: int, device: torch.device, start: dict | None) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            unet = BasicUNet(spatial_dims=spatial_dims, in_channels=channels, out_channels=1, features=self.unet_features)
            if start is not None:
                try:
                    unet.load_state_dict(start)
                except RuntimeError as err:
                    raise ValueError(
                        f"the warm-start U-Net does not fit this explainer ({spatial_dims}D, {channels} channels, "
                        f"unet_features={list(self.unet_features)}): {str(err).splitlines()[0]} Fit it again or "
                        f"pass the settings it was fitted with."
                    ) from None
            else:
                # a constant start mask: zero output weights, the bias is the start mask's logit
                nn.init.zeros_(unet.final_conv.weight)
                nn.init.constant_(unet.final_conv.bias, _logit(self.init_mask))
        return unet.to(device)

    def _work_size(self, spatial: Sequence[int]) -> list[int]:
        return [max(_UNET_MIN, math.ceil(s * self.mask_scale / _UNET_DEPTH) * _UNET_DEPTH) for s in spatial]

    def _unet_input(self, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The U-Net's input for ``x`` and the map from its output to a mask on ``x``'s grid."""
        spatial = list(x.shape[2:])
        work = self._work_size(spatial)
        mode = "bilinear" if len(spatial) == 2 else "trilinear"
        if work == spatial:
            return x, lambda out: torch.sigmoid(out.float())
        resized = F.interpolate(x, size=work, mode=mode, align_corners=False)
        return resized, lambda out: torch.sigmoid(F.interpolate(out.float(), size=spatial, mode=mode, align_corners=False))

    def _logits(self, f: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with self._autocast(x.device):
            out = f(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()

    def _acts(self, recorder: LayerRecorder) -> list[torch.Tensor]:
        acts = [recorder.outputs[name] for name in self.layers]
        return [F.relu(a).float() if self.post_relu else a.float() for a in acts]

    def _fill(self, x: torch.Tensor) -> torch.Tensor:
        value = self.fill_value if self.fill_value is not None else self.data_mean
        return make_fill(x, self.fill, self.fill_sigma, value)

    def _background(self, x: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        return make_background(x, self.background, gens, **self.background_kwargs)

    def _need(self, logits_x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Log-odds a selected mask's evidence must reach: ``min(margin(x), logit(keep_p))``."""
        return losses.logit_margin(logits_x, target).clamp(max=_logit(self.keep_p)) - 1e-4

    def _terms(self, f, recorder, x, m, b, r, target, logits_x, acts_x, scale) -> dict[str, torch.Tensor]:
        """Every loss term per case for masks ``m`` (one classifier pass over ``[e, robustness image]``)."""
        w, k = self.weights, x.shape[0]
        e = m * x + (1 - m) * b
        rob = m * x + (1 - m) * r
        try:
            logits = self._logits(f, torch.cat([e, rob]))
        except Exception as err:  # the classifier ran on x, so this is about the masked input
            raise MaskedInputError(
                f"The classifier raised on the masked image e = m * x + (1 - m) * b ({type(err).__name__}: {err}). "
                f"It accepted the original image of shape {tuple(x.shape)}; check that it does not depend on "
                f"exact input values (e.g. a lookup by intensity) and that it is not in a state that fails on "
                f"a batch of {2 * k}."
            ) from err
        acts = self._acts(recorder)
        kappa = _logit(self.keep_p)
        logits_e, logits_rob = logits[:k], logits[k:]
        terms = {
            "act": losses.activation_matching(acts_x, [a[:k] for a in acts], self.layer_weights, self.distance),
            "ce": losses.decision_loss(self.decision, logits_e, target, kappa),
            "kl": losses.kl_divergence(logits_x, logits_e),
            "area": losses.area(m),
            "bin": losses.binarisation(m),
            "tv": losses.total_variation(m),
            "rob": losses.decision_loss(self.decision, logits_rob, target, kappa),
        }
        terms["total"] = (
            w.am * (w.act * terms["act"] + w.ce * terms["ce"] + w.kl * terms["kl"])
            + scale * w.min * (w.area * terms["area"] + w.bin * terms["bin"] + w.tv * terms["tv"])
            + w.rob * w.rob_ce * terms["rob"]
        )
        terms["margin"] = losses.logit_margin(logits_e, target).detach()
        return terms

    def _order(self, f, x, soft, b, target) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The ranking of ``select="sufficient"`` (None: by the soft mask; costs one pass with
        backward) and the soft evidence's log-odds of the target that pass gave (None without it)."""
        if self.select != "sufficient" or self.rank == "soft":
            return None, None
        with torch.enable_grad():
            s = soft.detach().requires_grad_(True)
            margin = losses.logit_margin(self._logits(f, s * x + (1 - s) * b), target)
            gain = torch.autograd.grad(margin.sum(), s)[0]
        return relevance_order(soft.detach(), gain), margin.detach()

    def _final_order(self, f, x, soft, b, target, stopped: dict, todo: list[int]) -> tuple:
        """:meth:`_order` for the final selection, and the bracket of ``smallest_sufficient`` that
        resumes the checks the cases in ``stopped`` stopped at (their soft masks, rankings and
        searched areas are still valid: their U-Nets did not change since); only the cases
        ``todo`` (the others) get a ranking pass."""
        if self.select != "sufficient":
            return None, None, None
        known = torch.tensor([i in stopped for i in range(len(x))])
        counts = torch.tensor([int(stopped[i].counts) if i in stopped else 0 for i in range(len(x))])
        low = torch.tensor([int(stopped[i].low) if i in stopped else 0 for i in range(len(x))])
        bracket = (known, counts, low)
        if self.rank == "soft":
            return None, None, bracket
        order = torch.empty_like(soft)
        margin = torch.empty(len(x), device=x.device)
        if todo:
            order[todo], margin[todo] = self._order(f, x[todo], soft[todo], b[todo], target[todo])
        for i, checked in stopped.items():
            order[i], margin[i] = checked.order, checked.margin
        return order, margin, bracket

    def _select(self, f, x, soft, b, r, target, need, refine: int, order=None, bracket=None) -> Selection:
        logits_of = lambda t: self._logits(f, t)  # noqa: E731
        if self.select == "threshold":
            return thresholded(logits_of, x, soft, b, r, target, need, self.threshold)
        return smallest_sufficient(logits_of, x, soft, b, r, target, need, self.threshold, refine, AREA_GRID, order, bracket)

    # -- main ---------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, target: TargetSpec = None) -> Explanation:
        """Explain the classifier's decision on each case of ``x``.

        Args:
            x: ``(B, C, *spatial)`` image batch (2D or 3D; a ``MetaTensor`` keeps its metadata).
            target: the class to explain: None (``argmax f(x)``), one int for all cases, or one per
                case (a list of ``B`` ints or a ``(B,)`` tensor); see :func:`~medcam_monai.targets.classifier_targets`.

        Returns:
            An :class:`~medcam_monai.explanation.Explanation` with ``kind="mask"``: ``map`` the
            selected binary mask ``(B, 1, *spatial)``, ``soft_map`` the U-Net's soft mask,
            ``evidence`` ``map * x + (1 - map) * b``; ``scores``: the target's probability on
            ``x`` (``prob_x``), on the evidence (``prob_e``), on the soft evidence
            (``prob_e_soft``) and on the evidence over the robustness background (``prob_rob``),
            all classes' probabilities (``probs_*``), ``area_fraction``, ``soft_area``,
            ``decision_kept`` (on the fill and over the robustness background), ``sufficient``
            (a mask smaller than the whole image keeps the decision), and the classifier's
            passes per case (``forward_images``: images forwarded, ``backward_images``: of them
            with a backward pass); ``history`` (every loss term per step, the soft evidence's
            log-odds, the minimality scale, the selected area at checks); ``steps``,
            ``stop_reason`` and ``seconds``.
        """
        start = time.perf_counter()
        check_image(x, name="image", network=self.classifier)
        meta_source = x
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        x = x.detach().float()
        batch, device = x.shape[0], x.device
        with frozen(self.classifier) as f:
            with torch.no_grad():
                check_class_logits(self._logits(f, x[:1]), 1)
            if self.layers is None:
                self.layers = [deepest_layer(f, x[:1])]
            with LayerRecorder(f, self.layers) as recorder:
                with torch.no_grad():
                    logits_x = check_class_logits(self._logits(f, x), batch).float()
                    acts_x = [a.detach() for a in self._acts(recorder)]
                target_t = classifier_targets(target, logits_x, max_targets=1)[:, 0]
                run = self._optimise(f, recorder, x, target_t, logits_x, acts_x)
                soft, selection, b, r = run["soft"], run["selection"], run["fill"], run["background"]
                binary = selection.binary
                with torch.no_grad():
                    probe = torch.cat([binary * x + (1 - binary) * b, soft * x + (1 - soft) * b, binary * x + (1 - binary) * r])
                    probs = torch.softmax(self._logits(f, probe), 1).split(batch)
        probs_x = torch.softmax(logits_x, 1)
        pick = lambda p: p.gather(1, target_t[:, None])[:, 0]  # noqa: E731
        forwards = run["forward_images"] + selection.probes + 4  # + x itself and the three final probes
        scores = {
            "prob_x": pick(probs_x),
            "prob_e": pick(probs[0]),
            "prob_e_soft": pick(probs[1]),
            "prob_rob": pick(probs[2]),
            "probs_x": probs_x,
            "probs_e": probs[0],
            "probs_e_soft": probs[1],
            "probs_rob": probs[2],
            "area_fraction": binary.reshape(batch, -1).mean(1),
            "soft_area": soft.reshape(batch, -1).mean(1),
            "decision_kept": (probs[0].argmax(1) == target_t) & (probs[2].argmax(1) == target_t),
            "sufficient": selection.sufficient.to(device),
            "forward_images": forwards.to(device),
            "backward_images": run["backward_images"].to(device),
        }
        settings = self.settings()
        settings["fill_used"] = describe_fill(resolve_fill(self.fill, x))
        evidence = binary * x + (1 - binary) * b
        binary_map, soft_map, evidence = (like_input(meta_source, t) for t in (binary, soft, evidence))
        return Explanation(
            map=binary_map,
            kind=MASK,
            method=self.method,
            target=target_t[:, None],
            scores={k: v.detach() for k, v in scores.items()},
            soft_map=soft_map,
            evidence=evidence,
            history=run["history"],
            steps=run["steps"],
            stop_reason=run["reasons"],
            seconds=time.perf_counter() - start,
            settings=settings,
        )

    def _optimise(self, f, recorder, x, target, logits_x, acts_x) -> dict:
        batch, device = x.shape[0], x.device
        gens = [torch.Generator().manual_seed(self.seed + 1) for _ in range(batch)]
        random_background = is_random_background(self.background)
        b = self._fill(x)
        r = self._background(x, gens)
        need = self._need(logits_x, target)
        x_unet, to_mask = self._unet_input(x)
        unets = [self._new_unet(x.ndim - 2, x.shape[1], device, self.warm_start) for _ in range(batch)]
        self._last_unets = unets
        vectorise = device.type != "cpu" if self.vectorise is None else self.vectorise
        each_on_its_own = _EachOnItsOwn(unets[0], vectorise)
        optimiser = torch.optim.Adam([p for u in unets for p in u.parameters()], lr=self.lr)
        warm = self.warm_start is not None
        # a case whose warm-started mask is not sufficient after refine_steps restarts from the
        # per-image start: continuing from the fitted U-Net took a 3D case 290 steps where per-image
        # training takes about 45 (docs/benchmarks.md)
        fresh = self._new_unet(x.ndim - 2, x.shape[1], device, None).state_dict() if warm else None
        restarted: dict[int, int] = {}  # case -> the step it restarted at
        stopped: dict[int, _Checked] = {}  # case -> the check it stopped at
        rule = self.early_stopping
        budget = self.steps
        first_check = self.refine_steps if warm else (rule.min_steps if rule is not None else budget + 1)
        history = {k: torch.full((budget, batch), float("nan")) for k in HISTORY}
        steps = torch.zeros(batch, dtype=torch.long)
        forward_images = torch.zeros(batch, dtype=torch.long)
        backward_images = torch.zeros(batch, dtype=torch.long)
        progress = [CaseProgress(rule or EarlyStopping(), budget) for _ in range(batch)]
        if rule is None:
            for p in progress:
                p.reason = f"max_steps ({budget}): early stopping off"
        active = list(range(batch))

        def masks_for(idx):
            with self._autocast(device):
                out = each_on_its_own(unets, idx, x_unet)
            return to_mask(out)

        def check(idx, step):
            """The selection and the stopping judgement for cases ``idx`` after ``step`` steps."""
            with torch.no_grad():
                soft = masks_for(idx)
            order, margins = self._order(f, x[idx], soft, b[idx], target[idx])
            sel = self._select(f, x[idx], soft, b[idx], r[idx], target[idx], need[idx], refine=0, order=order)
            thresholded_area = (soft > self.threshold).reshape(len(idx), -1).float().mean(1).cpu()
            still = []

            def stop(j: int, i: int) -> None:
                # the case's U-Net does not change after this check: the final selection resumes it
                stopped[i] = _Checked(
                    soft[j], None if order is None else order[j], None if margins is None else margins[j], sel.counts[j], sel.low[j]
                )

            for j, i in enumerate(idx):
                forward_images[i] += int(sel.probes[j]) + (order is not None)
                backward_images[i] += order is not None
                area, ok = float(sel.area[j]), bool(sel.sufficient[j])
                if step > 0:
                    history["selected_area"][step - 1, i] = area
                if warm and step == self.refine_steps and ok:
                    # the fast path of amortised Med-CAM: the fitted U-Net's mask is trusted once it
                    # is sufficient. (Requiring it to agree with its thresholded soft mask as well was
                    # measured to send every case of the tests back to ~90 steps: a fitted U-Net's
                    # masks are soft.) Its quality is the fit's: see docs/benchmarks.md.
                    progress[i].reason = (
                        f"amortised: the fitted U-Net and {step} refinement steps give a sufficient mask of "
                        f"{area:.2%} of the image"
                    )
                    progress[i].converged = True
                    stop(j, i)
                    continue
                if warm and step == self.refine_steps:
                    # per-image training from here on, as if the case had started now (same U-Net
                    # start, fresh Adam moments, the same check schedule relative to the restart)
                    with torch.no_grad():
                        unets[i].load_state_dict(fresh)
                    for p in unets[i].parameters():
                        optimiser.state.pop(p, None)
                    progress[i] = CaseProgress(rule, budget)
                    restarted[i] = step
                    still.append(i)
                    continue
                if i in restarted and step - restarted[i] < rule.min_steps:
                    still.append(i)
                    continue
                recent = history["margin"][max(0, step - rule.check_every) : step, i]
                margin = float(recent.nanmean()) if step > 0 else float("nan")
                if progress[i].check(area, ok, margin, float(need[i]), float(thresholded_area[j])):
                    stop(j, i)
                    continue
                still.append(i)
            return still

        bar = tqdm(range(budget + 1), desc="Med-CAM", disable=not self.progress, leave=False)
        for step in bar:
            if rule is not None and active and step >= first_check and (step - first_check) % rule.check_every == 0:
                active = check(active, step)
            if not active or step == budget:
                break
            idx = active
            if random_background:
                r[idx] = self._background(x[idx], [gens[i] for i in idx])
            m = masks_for(idx)
            scale = torch.tensor([progress[i].scale for i in idx], device=device)
            terms = self._terms(f, recorder, x[idx], m, b[idx], r[idx], target[idx], logits_x[idx], [a[idx] for a in acts_x], scale)
            total = terms["total"]
            if not bool(torch.isfinite(total).all()):
                bad = [idx[j] for j in torch.nonzero(~torch.isfinite(total)).flatten().tolist()]
                raise FloatingPointError(
                    f"Med-CAM loss became NaN/Inf at step {step} for case(s) {bad}: lower lr "
                    f"(now {self.lr}) or disable amp (now {self.amp})."
                )
            optimiser.zero_grad(set_to_none=True)
            total.sum().backward()
            optimiser.step()
            for name in LOSS_TERMS + ("margin",):
                history[name][step, idx] = terms[name].detach().float().cpu()
            history["min_scale"][step, idx] = scale.cpu()
            for i in idx:
                steps[i] = step + 1
                forward_images[i] += 2
                backward_images[i] += 2
        bar.close()
        run_steps = int(steps.max())
        # a case that stopped at a check keeps that check's soft mask (its U-Net did not change)
        todo = [i for i in range(batch) if i not in stopped]
        soft = torch.empty(batch, 1, *x.shape[2:], device=device)
        if todo:
            with torch.no_grad():
                soft[todo] = masks_for(todo)
        for i, checked in stopped.items():
            soft[i] = checked.soft
        selection = None
        order, soft_margin, bracket = self._final_order(f, x, soft, b, target, stopped, todo)
        if order is not None:
            forward_images[todo] += 1
            backward_images[todo] += 1
        if self.confidence == "soft" and self.select == "sufficient":
            if soft_margin is None:  # rank="soft": no ranking pass gave it
                with torch.no_grad():
                    soft_margin = losses.logit_margin(self._logits(f, soft * x + (1 - soft) * b), target)
                forward_images += 1
            need_soft = torch.maximum(need, soft_margin.clamp(max=_logit(self.keep_p)) - 1e-4)
            selection = self._select(f, x, soft, b, r, target, need_soft, refine=_FINAL_REFINE, order=order)
        if selection is None or not bool(selection.sufficient.all()):
            # the image's confidence: the rule, or the fallback where no top-k is as convincing as the soft evidence
            image = self._select(f, x, soft, b, r, target, need, refine=_FINAL_REFINE, order=order, bracket=bracket)
            selection = image if selection is None else prefer(selection, image)
        reasons = [p.reason for p in progress]
        for i, at in restarted.items():
            reasons[i] = (
                f"restarted per image after {at} refinement steps of the warm-started U-Net gave no sufficient "
                f"mask; {reasons[i]}"
            )
        for i in range(batch):
            if not bool(selection.sufficient[i]):
                reasons[i] += (
                    "; no sufficient mask smaller than the whole image: the decision is lost on every top-k of "
                    f"the pixels ranked by rank={self.rank!r}, so the whole image is reported"
                )
        return {
            "soft": soft,
            "selection": selection,
            "fill": b,
            "background": r,
            "history": {k: v[:run_steps] for k, v in history.items()},
            "steps": steps,
            "reasons": reasons,
            "forward_images": forward_images,
            "backward_images": backward_images,
        }

    # -- U-Nets: warm start, amortised fit, files ------------------------------------------------------
    def unet_state(self, case: int = 0) -> dict:
        """The trained U-Net of ``case`` from the last call, as a state dict (for ``warm_start``)."""
        if not self._last_unets:
            raise RuntimeError("No U-Net yet: call the explainer on an image first.")
        return {k: v.detach().clone() for k, v in self._last_unets[case].state_dict().items()}

    def fit(
        self,
        loader: Iterable,
        epochs: int = 1,
        lr: float = 1e-2,
        image_key: str = "image",
        max_batches: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> MedCAM:
        """Amortised Med-CAM: train one mask U-Net across a data set with the same loss.

        Every later call starts each case from this U-Net (``refine_steps`` steps before its first
        check) instead of a constant mask. Each batch's targets are the classifier's decisions;
        the loss is the per-case loss averaged over the batch, with the minimality scale at 1.
        Also records the data set's per-channel mean (the ``"mean"`` fill's default value).

        Args:
            loader: yields image batches ``(B, C, *spatial)``, tuples/lists whose first item is
                one, or dicts holding one at ``image_key`` (a MONAI ``DataLoader``). Iterated
                ``epochs + 1`` times (once for the mean).
            epochs: passes over the loader.
            lr: Adam learning rate (1e-2: measured on the saturated marker classifier of the tests,
                64 images x 16 epochs; 3e-3 left the masks at 5-12% of the image, off the marker).
            max_batches: at most this many batches per epoch.
            log: called with one line per epoch.

        Returns:
            ``self``, ready to explain; :meth:`save_unet` writes the U-Net for a bundle.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}.")

        def images(item) -> torch.Tensor:
            if isinstance(item, dict):
                if image_key not in item:
                    raise ValueError(f"a batch of the loader has no {image_key!r} (keys {sorted(item)}); set image_key.")
                item = item[image_key]
            elif isinstance(item, (tuple, list)):
                item = item[0]
            if not isinstance(item, torch.Tensor):
                raise ValueError(f"the loader must yield image tensors (B, C, *spatial), got {type(item).__name__}.")
            x = item.as_tensor() if hasattr(item, "as_tensor") else item
            check_image(x, name="a batch of the loader")
            return x.detach().float()

        total, count, first = None, 0, None
        for item in loader:
            xb = images(item)
            first = xb if first is None else first
            s = xb.transpose(0, 1).reshape(xb.shape[1], -1).double().sum(1)
            total = s if total is None else total + s
            count += xb[:, 0].numel()
        if first is None:
            raise ValueError("the loader is empty: fit needs images.")
        self.data_mean = (total / count).float()
        if self._mask_scale is None:
            self._fitted_scale = AMORTISED_MASK_SCALE
        device = first.device
        unet = self._new_unet(first.ndim - 2, first.shape[1], device, None)
        optimiser = torch.optim.Adam(unet.parameters(), lr=lr)
        start = time.perf_counter()
        with frozen(self.classifier) as f:
            if self.layers is None:
                self.layers = [deepest_layer(f, first[:1])]
            with LayerRecorder(f, self.layers) as recorder:
                for epoch in range(epochs):
                    seen, loss_sum = 0, 0.0
                    for n, item in enumerate(loader):
                        if max_batches is not None and n >= max_batches:
                            break
                        xb = images(item).to(device)
                        with torch.no_grad():
                            logits_x = check_class_logits(self._logits(f, xb), len(xb))
                            acts_x = [a.detach() for a in self._acts(recorder)]
                        target = logits_x.argmax(1)
                        gens = [torch.Generator().manual_seed(self.seed + 1 + n) for _ in range(len(xb))]
                        x_unet, to_mask = self._unet_input(xb)
                        with self._autocast(device):
                            m = to_mask(unet(x_unet))
                        terms = self._terms(f, recorder, xb, m, self._fill(xb), self._background(xb, gens), target, logits_x, acts_x, 1.0)
                        loss = terms["total"].mean()
                        if not bool(torch.isfinite(loss)):
                            raise FloatingPointError(f"Med-CAM fit loss became NaN/Inf in epoch {epoch + 1}: lower lr (now {lr}).")
                        optimiser.zero_grad(set_to_none=True)
                        loss.backward()
                        optimiser.step()
                        seen += len(xb)
                        loss_sum += float(loss.detach()) * len(xb)
                    if log is not None:
                        log(f"Med-CAM fit epoch {epoch + 1}/{epochs}: loss {loss_sum / max(seen, 1):.3f} ({time.perf_counter() - start:.0f} s)")
        self.warm_start = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        self.warm_start_source = "fit"
        return self

    def save_unet(self, path: str | Path) -> Path:
        """Write the fitted (or warm-start) U-Net with what it needs to be loaded (``warm_start=path``)."""
        if self.warm_start is None:
            raise RuntimeError("No U-Net to save: call fit(loader) first (or give warm_start).")
        first_conv = next(v for k, v in self.warm_start.items() if k.endswith("weight") and v.ndim >= 4)
        payload = {
            "format": UNET_FORMAT,
            "state_dict": self.warm_start,
            "spatial_dims": first_conv.ndim - 2,
            "in_channels": int(first_conv.shape[1]),
            "unet_features": list(self.unet_features),
            "mask_scale": self.mask_scale,
            "data_mean": None if self.data_mean is None else self.data_mean.tolist(),
            "fill": describe_fill(self.fill),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        torch.save(payload, tmp)
        tmp.replace(path)  # nothing half-written under the final name
        return path

    def load_unet(self, source: dict | str | Path) -> None:
        """Start every case from ``source``: a U-Net state dict or a file of :meth:`save_unet`."""
        if isinstance(source, dict) and "format" not in source:
            self.warm_start, self.warm_start_source = dict(source), "state_dict"
            return
        if isinstance(source, dict):
            payload, where = source, "the given payload"
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(
                    f"warm_start: no Med-CAM U-Net file at {path}; write one with MedCAM.fit(loader).save_unet(path), "
                    f"or leave warm_start unset to train each image's U-Net from scratch."
                )
            try:  # an untrusted file: tensors and plain containers only
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise ValueError(f"warm_start: {path} is not a Med-CAM U-Net file ({type(err).__name__}: {err}).") from None
            where = str(path)
        if not isinstance(payload, dict) or payload.get("format") != UNET_FORMAT or not isinstance(payload.get("state_dict"), dict):
            raise ValueError(f"warm_start: {where} is not a Med-CAM U-Net file (format {UNET_FORMAT!r}).")
        scale = payload.get("mask_scale")
        if not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise ValueError(f"warm_start: {where} has no valid mask_scale (got {scale!r}); fit and save it again.")
        if self._mask_scale is None:
            self._fitted_scale = float(scale)  # the U-Net works at the scale it was fitted at
        if list(payload.get("unet_features", [])) != list(self.unet_features) or float(scale) != self.mask_scale:
            raise ValueError(
                f"warm_start: {where} was fitted with unet_features={payload.get('unet_features')} and "
                f"mask_scale={payload.get('mask_scale')}; this explainer has {list(self.unet_features)} and "
                f"{self.mask_scale}. Pass the same settings or fit again."
            )
        self.warm_start = payload["state_dict"]
        self.warm_start_source = where
        if payload.get("data_mean") is not None:
            self.data_mean = torch.tensor(payload["data_mean"], dtype=torch.float32)
