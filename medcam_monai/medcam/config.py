"""Med-CAM's settings: loss weights with the paper's presets, and the early-stopping rule."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

__all__ = ["LossWeights", "PRESETS", "EarlyStopping"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of Med-CAM's loss.

    ``L = am * (act * L_act + ce * L_dec + kl * L_KL)
        + s * min * (area * L_area + bin * L_bin + tv * L_tv)
        + rob * (rob_ce * L_dec(robustness image))``

    ``L_dec`` is the decision term chosen by ``MedCAM(decision=...)`` (the paper's cross-entropy, or
    the logit-margin hinge that does not saturate on confident classifiers); ``s`` is the per-case
    minimality scale that :class:`EarlyStopping` adapts (1 without it).

    The group weights ``am:min:rob`` are the paper's (10:100:10 for BACH with ViT-B/16, 10:150:20
    for HAM10000 with ConvNeXt-S). By default activation matching and KL are off (``act = kl = 0``):
    their scale differs between networks (activations of a ViT and of a ResNet differ by orders of
    magnitude) and they ask the evidence to reproduce the whole image's features, including those
    of the removed distractors, which grows the mask; the decision term alone keeps the decision.
    The presets keep the paper's terms (``act = 0.1``, ``kl = 1``).
    """

    am: float = 10.0
    min: float = 100.0
    rob: float = 10.0
    act: float = 0.0
    ce: float = 1.0
    kl: float = 0.0
    area: float = 1.0
    bin: float = 0.1
    tv: float = 0.1
    rob_ce: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ValueError(f"LossWeights.{f.name} must be a number >= 0, got {value!r}.")

    @classmethod
    def preset(cls, name: str, **overrides: float) -> LossWeights:
        """One of :data:`PRESETS` (``"bach"``, ``"ham10000"``), with any lambda overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown Med-CAM preset {name!r}; choose one of {sorted(PRESETS)}.")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


PRESETS: dict[str, LossWeights] = {
    # the paper's group weights with the paper's terms (activation matching, cross-entropy and KL)
    "bach": LossWeights(am=10.0, min=100.0, rob=10.0, act=0.1, ce=1.0, kl=1.0),
    "ham10000": LossWeights(am=10.0, min=150.0, rob=20.0, act=0.1, ce=1.0, kl=1.0),
}


@dataclass(frozen=True)
class EarlyStopping:
    """When a case's mask is done, and why it is not.

    Every ``check_every`` steps from ``min_steps`` on, the explainer selects the case's smallest
    sufficient mask (the smallest top-k of the ranked pixels that keeps the decision). The case is
    *converged* when all of these hold:

    - a mask smaller than the whole image is sufficient;
    - its area has not shrunk by more than ``shrink_tol`` over the last ``patience`` checks;
    - the optimisation has nothing left to shrink: the soft evidence's decision binds (its
      log-odds are within ``bind_tol`` of what is needed), or the soft mask agrees with the
      selected mask (its thresholded area is within a factor of 2 of it, so the ranking is the
      mask's own and not the uninformed order of a uniform mask) and either its evidence has no
      slack or the minimality weight has reached ``max_adapt`` without the mask shrinking.

    A mask that has stopped shrinking while its soft evidence keeps the decision with slack is
    not called converged: its minimality weight is multiplied by ``adapt`` at every such check (up
    to ``max_adapt``) so that it shrinks. A case whose soft evidence has lost the decision gets its
    minimality weight divided by ``adapt`` (down to ``1 / max_adapt``), so the decision term can
    grow the mask back onto the evidence. Every case reports its reason (``Explanation.stop_reason``).

    A U-Net fitted across a data set (``MedCAM.fit``) or given as ``warm_start`` is checked first
    after ``MedCAM.refine_steps`` steps; the case stops there if its selected mask is sufficient, else
    it restarts from the per-image start (a fresh U-Net and optimiser state) and continues under this
    rule as if it had begun there.
    """

    min_steps: int = 20
    check_every: int = 10
    patience: int = 2
    shrink_tol: float = 0.05
    bind_tol: float = 2.0
    adapt: float = 2.0
    max_adapt: float = 64.0

    def __post_init__(self) -> None:
        if self.check_every < 1 or self.patience < 1 or self.min_steps < 0:
            raise ValueError("EarlyStopping needs check_every >= 1, patience >= 1 and min_steps >= 0.")
        if not 0 <= self.shrink_tol < 1:
            raise ValueError(f"EarlyStopping.shrink_tol is a fraction in [0, 1), got {self.shrink_tol}.")
        if self.bind_tol < 0:
            raise ValueError(f"EarlyStopping.bind_tol is a log-odds difference >= 0, got {self.bind_tol}.")
        if self.adapt < 1 or self.max_adapt < 1:
            raise ValueError(f"EarlyStopping.adapt and max_adapt must be >= 1 (1: off), got {self.adapt}, {self.max_adapt}.")
