"""The early-stopping judgement of one case (the rule is :class:`~medcam_monai.medcam.config.EarlyStopping`)."""

from __future__ import annotations

import math

from medcam_monai.medcam.config import EarlyStopping

__all__ = ["CaseProgress"]


class CaseProgress:
    """What the checks of one case have seen, its minimality scale, and why it stopped (or not).

    Args:
        rule: the :class:`EarlyStopping` rule.
        steps: the step budget (for the reason string).
    """

    def __init__(self, rule: EarlyStopping, steps: int) -> None:
        self.rule = rule
        self.steps = steps
        self.areas: list[float] = []  # smallest sufficient area per check (inf: none)
        self.scale = 1.0
        self.reason = f"max_steps ({steps})"
        self.converged = False

    def check(self, area: float, sufficient: bool, margin: float, need: float, thresholded_area: float) -> bool:
        """Record one check; return True when the case is done.

        Args:
            area: the selected mask's area (fraction of the image).
            sufficient: whether a mask smaller than the whole image keeps the decision.
            margin: the soft evidence's mean log-odds of the target over the last steps.
            need: the log-odds the evidence must reach.
            thresholded_area: the soft mask's area above the threshold.
        """
        rule = self.rule
        self.areas.append(area if sufficient else math.inf)
        earlier = self.areas[: -rule.patience]
        best_before = min(earlier) if earlier else math.inf
        stable = bool(earlier) and sufficient and area >= (1 - rule.shrink_tol) * best_before
        slack = margin - need
        binds = abs(slack) <= rule.bind_tol
        agrees = sufficient and thresholded_area > 0 and abs(math.log(thresholded_area / area)) <= math.log(2)
        found = f"smallest sufficient mask {area:.2%} of the image" if sufficient else "no sufficient mask smaller than the whole image yet"
        lost = slack < -rule.bind_tol or not sufficient
        pushed = self.scale >= rule.max_adapt  # the minimality weight is at its most and the mask did not shrink
        done = stable and (binds or (agrees and (lost or pushed)))
        if done:
            if binds:
                why = f"the soft evidence's decision binds (log-odds {margin:.2f}, needed {need:.2f})"
            elif lost:
                why = f"the soft mask agrees with it (thresholded area {thresholded_area:.2%})"
            else:
                why = (
                    f"the soft mask agrees with it (thresholded area {thresholded_area:.2%}) and did not shrink with "
                    f"the minimality weight at x{self.scale:.3g}"
                )
            self.reason = (
                f"converged: {found}, not shrunk by more than {rule.shrink_tol:.0%} over "
                f"{rule.patience * rule.check_every} steps; {why}"
            )
            self.converged = True
            return True
        if lost:
            self.scale = max(1 / rule.max_adapt, self.scale / rule.adapt)
            why = f"the soft evidence loses the decision (log-odds {margin:.2f} < {need:.2f} needed)"
        elif not stable:
            why = "the selected mask is still shrinking"
        else:  # stable with slack: the minimality terms can still shrink the mask
            self.scale = min(rule.max_adapt, self.scale * rule.adapt)
            why = f"the soft evidence keeps the decision with slack (log-odds {margin:.2f} > {need:.2f} needed): the mask may still shrink"
        self.reason = f"max_steps ({self.steps}): {why}; {found}; minimality weight x{self.scale:.3g}"
        return False
