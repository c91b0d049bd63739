"""Med-CAM: a minimal binary evidence mask for a frozen classifier's decision.

For each image ``x`` a small U-Net ``g`` (MONAI's ``BasicUNet``) is trained from scratch so that
``m = sigmoid(g(x))`` keeps the classifier's decision on ``e = m * x`` while covering as little as
possible (see :class:`~medcam_monai.medcam.config.LossWeights` for the loss).

Batches are explained together: each case has its own U-Net (the same seeded initial weights as
when explained alone), the classifier sees all masked images of a step in one forward pass, and
per-case losses are summed so every U-Net's gradient is exactly its own case's gradient. Adam is
element-wise, so one optimiser over all U-Nets equals one optimiser per U-Net. A case that stops
early leaves the batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn
from tqdm.auto import tqdm

from medcam_monai.explanation import MASK, Explanation, like_input
from medcam_monai.checks import check_class_logits, check_image
from medcam_monai.hooks import LayerRecorder, deepest_layer, frozen, unwrap_model
from medcam_monai.medcam import losses
from medcam_monai.medcam.config import EarlyStopping, LossWeights
from medcam_monai.perturbation import BACKGROUNDS, is_random_background, make_background
from medcam_monai.targets import TargetSpec, classifier_targets

__all__ = ["MedCAM", "MaskedInputError", "LOSS_TERMS"]

LOSS_TERMS = ("act", "ce", "kl", "area", "bin", "tv", "rob", "total")
_UNET_DEPTH = 16  # BasicUNet halves the grid four times
_UNET_MIN = 32  # and its instance norm needs more than one voxel at the bottom


def _mask_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """``1 - IoU`` of two binary masks; 0 when both are empty."""
    union = (before | after).sum()
    return 0.0 if int(union) == 0 else 1.0 - float((before & after).sum() / union)


class MaskedInputError(RuntimeError):
    """The classifier failed on a masked image although it ran on the original."""


class MedCAM:
    """Explain a frozen classifier's decisions with minimal binary evidence masks.

    Args:
        classifier: any ``nn.Module`` mapping ``(B, C, *spatial)`` to logits ``(B, num_classes)``
            (timm, MONAI, torchvision, DDP-wrapped). It is never changed: parameters, buffers,
            ``training`` flags, ``requires_grad`` flags and hooks are as before, also on errors.
        layer: the ``named_modules()`` name (or a list of names) whose post-ReLU outputs are matched
            between ``x`` and ``e``. Default: the deepest layer with a spatial (or token) output.
        layer_weights: ``alpha_l`` per layer (default 1 each).
        distance: ``"mse"`` or ``"cosine"`` for activation matching.
        weights: a :class:`LossWeights`, a preset name (``"bach"`` 10:100:10, ``"ham10000"``
            10:150:20) or a dict of lambdas overriding the default weights.
        background: robustness background, one of ``"blur"`` (default), ``"uniform"``,
            ``"gaussian"``, ``"constant"``, ``"shuffle"``.
        background_kwargs: extra arguments of the background generator (``sigma``, ``value``,
            ``patch``).
        steps: the most optimisation steps per case.
        lr: Adam learning rate of the U-Nets.
        threshold: the binary mask is ``m > threshold``.
        mask_scale: the U-Net works on the image resized by this factor and its mask is upsampled
            (linearly) to the input size; 0.25 makes it nearly free on 224x224 images.
        unet_features: ``BasicUNet`` features (6 numbers).
        early_stopping: an :class:`EarlyStopping`, or None to always run ``steps``.
        amp: ``"bf16"`` to run the classifier and the U-Net under bfloat16 autocast (losses in fp32),
            or None for fp32.
        post_relu: apply ReLU to recorded activations (the paper matches post-ReLU activations;
            harmless on layers that are already ReLU outputs).
        seed: seeds the U-Nets' initial weights and random backgrounds, so runs are reproducible
            on CPU and a case gets the same result alone or in a batch.
        progress: show a progress bar over steps.
        warm_start: a U-Net ``state_dict`` to start every case from instead of random weights
            (e.g. :meth:`unet_state` of an earlier run on similar images).
    """

    method = "medcam"

    def __init__(
        self,
        classifier: nn.Module,
        layer: Sequence[str] | str | None = None,
        layer_weights: Sequence[float] | None = None,
        distance: str = "mse",
        weights: LossWeights | str | dict | None = None,
        background: str = "blur",
        background_kwargs: dict | None = None,
        steps: int = 300,
        lr: float = 0.03,
        threshold: float = 0.5,
        mask_scale: float = 0.5,
        unet_features: Sequence[int] = (8, 8, 16, 32, 64, 8),
        early_stopping: EarlyStopping | None = EarlyStopping(),
        amp: str | None = None,
        post_relu: bool = True,
        seed: int = 0,
        progress: bool = False,
        warm_start: dict | None = None,
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
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, got {background!r}.")
        self.background = background
        self.background_kwargs = dict(background_kwargs or {})
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        self.steps = int(steps)
        self.lr = float(lr)
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.threshold = float(threshold)
        if not 0 < mask_scale <= 1:
            raise ValueError(f"mask_scale must be in (0, 1], got {mask_scale}.")
        self.mask_scale = float(mask_scale)
        if len(unet_features) != 6:
            raise ValueError(f"unet_features needs 6 numbers (BasicUNet), got {list(unet_features)}.")
        self.unet_features = tuple(int(f) for f in unet_features)
        self.early_stopping = early_stopping
        if amp not in (None, "bf16"):
            raise ValueError(f"amp must be None or 'bf16', got {amp!r}.")
        self.amp = amp
        self.post_relu = post_relu
        self.seed = int(seed)
        self.progress = progress
        self.warm_start = warm_start
        self._last_unets: list[nn.Module] = []

    # -- settings -------------------------------------------------------------------------------
    def settings(self) -> dict:
        """JSON-friendly settings of this explainer, stored with every explanation."""
        stop = self.early_stopping
        return {
            "layer": self.layers,
            "layer_weights": self.layer_weights,
            "distance": self.distance,
            "weights": self.weights.to_dict(),
            "background": self.background,
            "background_kwargs": self.background_kwargs,
            "steps": self.steps,
            "lr": self.lr,
            "threshold": self.threshold,
            "mask_scale": self.mask_scale,
            "unet_features": list(self.unet_features),
            "early_stopping": None if stop is None else stop.__dict__.copy(),
            "amp": self.amp,
            "post_relu": self.post_relu,
            "seed": self.seed,
            "warm_start": self.warm_start is not None,
        }

    # -- pieces -----------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if self.amp == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _new_unet(self, spatial_dims: int, channels: int, device: torch.device) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            unet = BasicUNet(spatial_dims=spatial_dims, in_channels=channels, out_channels=1, features=self.unet_features)
            if self.warm_start is not None:
                unet.load_state_dict(self.warm_start)
            else:
                # start from a mask of ~0.88 everywhere: the decision is kept and the mask shrinks
                nn.init.zeros_(unet.final_conv.weight)
                nn.init.constant_(unet.final_conv.bias, 2.0)
        return unet.to(device)

    def _work_size(self, spatial: Sequence[int]) -> list[int]:
        return [max(_UNET_MIN, math.ceil(s * self.mask_scale / _UNET_DEPTH) * _UNET_DEPTH) for s in spatial]

    def _forward(self, x: torch.Tensor, recorder: LayerRecorder) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = self.classifier(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        acts = [recorder.outputs[name] for name in self.layers]
        if self.post_relu:
            acts = [F.relu(a) for a in acts]
        return logits.float(), acts

    # -- main ---------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, target: TargetSpec = None) -> Explanation:
        """Explain the classifier's decision on each case of ``x``.

        Args:
            x: ``(B, C, *spatial)`` image batch (2D or 3D; a ``MetaTensor`` keeps its metadata).
            target: the class to explain: None (``argmax f(x)``), one int for all cases, or one per
                case (a list of ``B`` ints or a ``(B,)`` tensor); see :func:`~medcam_monai.targets.classifier_targets`.

        Returns:
            An :class:`~medcam_monai.explanation.Explanation` with ``kind="mask"``: ``map`` the
            binary mask ``(B, 1, *spatial)``, ``soft_map`` the continuous mask, ``evidence``
            ``e = m * x``, ``scores`` (probabilities of the target and of all classes on x, on e,
            on the binary evidence and on the robustness image; area fraction; decision kept),
            ``history`` (every loss term per step), ``steps``, ``stop_reason`` and ``seconds``.
        """
        start = time.perf_counter()
        spatial_dims = check_image(x, name="image", network=self.classifier)
        meta_source = x
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        x = x.detach().float()
        batch, channels, spatial = x.shape[0], x.shape[1], list(x.shape[2:])
        device = x.device
        with frozen(self.classifier) as f:
            with torch.no_grad(), self._autocast(device):
                check_class_logits(f(x[:1]), 1)
            if self.layers is None:
                self.layers = [deepest_layer(f, x[:1])]
            with LayerRecorder(f, self.layers) as recorder:
                with torch.no_grad(), self._autocast(device):
                    logits_x, acts_x = self._forward(x, recorder)
                logits_x = check_class_logits(logits_x, batch).float()
                acts_x = [a.detach().float() for a in acts_x]
                target_t = classifier_targets(target, logits_x, max_targets=1)[:, 0]
                result = self._optimise(x, target_t, logits_x, acts_x, recorder, spatial_dims, channels, spatial)
        masks, history, steps, reasons, background = result
        with torch.no_grad(), frozen(self.classifier) as f:
            binary = (masks > self.threshold).float()
            evidence = masks * x
            probe = torch.cat([evidence, binary * x, masks * x + (1 - masks) * background])
            with self._autocast(device):
                logits = f(probe)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            probs = torch.softmax(logits.float(), 1).split(batch)
        probs_x = torch.softmax(logits_x, 1)
        pick = lambda p: p.gather(1, target_t[:, None])[:, 0]  # noqa: E731
        scores = {
            "prob_x": pick(probs_x),
            "prob_e": pick(probs[0]),
            "prob_e_binary": pick(probs[1]),
            "prob_rob": pick(probs[2]),
            "probs_x": probs_x,
            "probs_e": probs[0],
            "probs_e_binary": probs[1],
            "probs_rob": probs[2],
            "area_fraction": binary.reshape(batch, -1).mean(1),
            "soft_area": masks.reshape(batch, -1).mean(1),
            "decision_kept": (probs[0].argmax(1) == target_t) & (probs[2].argmax(1) == target_t),
        }
        binary_map, soft_map, evidence = (like_input(meta_source, t) for t in (binary, masks, evidence))
        return Explanation(
            map=binary_map,
            kind=MASK,
            method=self.method,
            target=target_t[:, None],
            scores={k: v.detach() for k, v in scores.items()},
            soft_map=soft_map,
            evidence=evidence,
            history=history,
            steps=steps,
            stop_reason=reasons,
            seconds=time.perf_counter() - start,
            settings=self.settings(),
        )

    def _optimise(self, x, target, logits_x, acts_x, recorder, spatial_dims, channels, spatial):
        batch, device, w = x.shape[0], x.device, self.weights
        gens = [torch.Generator().manual_seed(self.seed + 1) for _ in range(batch)]
        kind, kwargs = self.background, self.background_kwargs
        fixed_background = None if is_random_background(kind) else make_background(x, kind, gens, **kwargs)
        work = self._work_size(spatial)
        resize = work != spatial
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        x_unet = F.interpolate(x, size=work, mode=mode, align_corners=False) if resize else x
        unets = [self._new_unet(spatial_dims, channels, device) for _ in range(batch)]
        self._last_unets = unets
        params = [p for u in unets for p in u.parameters()]
        optimiser = torch.optim.Adam(params, lr=self.lr)
        history = {k: torch.full((self.steps, batch), float("nan")) for k in LOSS_TERMS}
        steps = torch.zeros(batch, dtype=torch.long)
        reasons = ["max_steps"] * batch
        active = list(range(batch))
        last_binary: dict[int, torch.Tensor] = {}
        settled = [0] * batch
        stop = self.early_stopping
        background_out = torch.zeros_like(x) if fixed_background is None else fixed_background

        def masks_for(idx):
            with self._autocast(device):
                small = torch.cat([unets[i](x_unet[i : i + 1]) for i in idx]).float()
            if resize:
                small = F.interpolate(small, size=spatial, mode=mode, align_corners=False)
            return torch.sigmoid(small)

        bar = tqdm(range(self.steps), desc="Med-CAM", disable=not self.progress, leave=False)
        for step in bar:
            idx = active
            xi = x[idx]
            if fixed_background is None:
                r = make_background(xi, kind, [gens[i] for i in idx], **kwargs)
            else:
                r = fixed_background[idx]
            m = masks_for(idx)
            e = m * xi
            rob = e + (1 - m) * r
            try:
                with self._autocast(device):
                    logits, acts = self._forward(torch.cat([e, rob]), recorder)
            except Exception as err:  # the classifier ran on x, so this is about the masked input
                raise MaskedInputError(
                    f"The classifier raised on the masked image e = m * x ({type(err).__name__}: {err}). "
                    f"It accepted the original image of shape {tuple(x.shape)}; check that it does not "
                    f"depend on exact input values (e.g. a lookup by intensity) and that it is not in a "
                    f"state that fails on a batch of {2 * len(idx)}."
                ) from err
            k = len(idx)
            logits_e, logits_rob = logits[:k], logits[k:]
            terms = {
                "act": losses.activation_matching(
                    [a[idx] for a in acts_x], [a[:k] for a in acts], self.layer_weights, self.distance
                ),
                "ce": losses.cross_entropy(logits_e, target[idx]),
                "kl": losses.kl_divergence(logits_x[idx], logits_e),
                "area": losses.area(m),
                "bin": losses.binarisation(m),
                "tv": losses.total_variation(m),
                "rob": losses.cross_entropy(logits_rob, target[idx]),
            }
            total = (
                w.am * (w.act * terms["act"] + w.ce * terms["ce"] + w.kl * terms["kl"])
                + w.min * (w.area * terms["area"] + w.bin * terms["bin"] + w.tv * terms["tv"])
                + w.rob * w.rob_ce * terms["rob"]
            )
            terms["total"] = total
            if not bool(torch.isfinite(total).all()):
                bad = [idx[j] for j in torch.nonzero(~torch.isfinite(total)).flatten().tolist()]
                raise FloatingPointError(
                    f"Med-CAM loss became NaN/Inf at step {step} for case(s) {bad}: lower lr "
                    f"(now {self.lr}) or disable amp (now {self.amp})."
                )
            optimiser.zero_grad(set_to_none=True)
            total.sum().backward()
            optimiser.step()
            for name, value in terms.items():
                history[name][step, idx] = value.detach().float().cpu()
            for j, i in enumerate(idx):
                steps[i] = step + 1
                if fixed_background is None:
                    background_out[i] = r[j]
            if stop is not None and step + 1 >= stop.min_steps and (step + 1) % stop.check_every == 0:
                keep = logits_e.argmax(1) == target[idx]
                if stop.require_robust:
                    keep &= logits_rob.argmax(1) == target[idx]
                binary = (m.detach() > self.threshold)
                still = []
                for j, i in enumerate(idx):
                    prev = last_binary.get(i)
                    change = 1.0 if prev is None else _mask_change(prev, binary[j])
                    last_binary[i] = binary[j]
                    settled[i] = settled[i] + 1 if (bool(keep[j]) and change <= stop.mask_change) else 0
                    if settled[i] >= stop.patience:
                        reasons[i] = (
                            f"converged: decision kept and binary mask changed by <= {stop.mask_change:.0%} (1 - IoU) "
                            f"over {stop.patience} checks of {stop.check_every} steps"
                        )
                    else:
                        still.append(i)
                active = still
            if not active:
                break
        bar.close()
        run = int(steps.max())
        history = {k: v[:run] for k, v in history.items()}
        # each U-Net took one more step after its last evaluated mask: report the trained U-Net's mask
        with torch.no_grad():
            masks_out = masks_for(list(range(batch)))
        return masks_out, history, steps, reasons, background_out

    def unet_state(self, case: int = 0) -> dict:
        """The trained U-Net of ``case`` from the last call, as a state dict (for ``warm_start``)."""
        if not self._last_unets:
            raise RuntimeError("No U-Net yet: call the explainer on an image first.")
        return {k: v.detach().clone() for k, v in self._last_unets[case].state_dict().items()}
