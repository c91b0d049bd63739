"""Has the classifier learned? Its accuracy on the cases explained against chance, with a binomial test.

Explanations of a model at chance show what an untrained model happens to use; the report says so
rather than let a reader blame the explainer. The chance rate is what a model scores without looking
at the image: the larger of ``1 / num_classes`` and the share of the most common label among these
cases (always answering that label). With ``k`` of ``n`` cases right, the one-sided binomial test
gives ``P(X >= k)`` for ``X ~ Binomial(n, chance)`` (``scipy.stats.binomtest``): a small value
means the model does better than chance; on a handful of cases it cannot, whatever the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from scipy import stats

__all__ = ["AT_CHANCE", "NOT_SHOWN", "ABOVE_CHANCE", "ChanceTest", "chance_test"]

AT_CHANCE = "at chance"  # accuracy no better than the chance rate
NOT_SHOWN = "not shown above chance"  # better than the chance rate, but not significantly on these cases
ABOVE_CHANCE = "above chance"


@dataclass
class ChanceTest:
    """The classifier's accuracy on a set of cases against chance.

    Args:
        correct: cases whose predicted class is the label.
        cases: cases scored.
        num_classes: classes the classifier chooses from.
        chance: the accuracy of a model that does not look: ``max(1 / num_classes, most common label's share)``.
        p_value: one-sided binomial test, ``P(X >= correct)`` for ``X ~ Binomial(cases, chance)``.
        alpha: significance level of the verdict.
        single_class: the class predicted on every case when it is always the same (and ``cases > 1``), else None.
    """

    correct: int
    cases: int
    num_classes: int
    chance: float
    p_value: float
    alpha: float = 0.05
    single_class: int | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / self.cases

    @property
    def verdict(self) -> str:
        """:data:`AT_CHANCE`, :data:`NOT_SHOWN` or :data:`ABOVE_CHANCE`."""
        if self.accuracy <= self.chance:
            return AT_CHANCE
        return ABOVE_CHANCE if self.p_value < self.alpha else NOT_SHOWN

    @property
    def wrong_on_most(self) -> bool:
        """Wrong on more than half of the cases."""
        return self.correct < self.cases / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "correct": self.correct,
            "cases": self.cases,
            "accuracy": self.accuracy,
            "num_classes": self.num_classes,
            "chance": self.chance,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "verdict": self.verdict,
            "wrong_on_most": self.wrong_on_most,
            "single_class": self.single_class,
        }


def chance_test(
    labels: torch.Tensor | Sequence[int],
    predictions: torch.Tensor | Sequence[int],
    num_classes: int,
    alpha: float = 0.05,
) -> ChanceTest:
    """Compare the classifier's accuracy with chance.

    Args:
        labels: ``(N,)`` true classes.
        predictions: ``(N,)`` predicted classes.
        num_classes: classes the classifier chooses from (its number of outputs).
        alpha: significance level for :attr:`ChanceTest.verdict`.

    Returns:
        A :class:`ChanceTest`.
    """
    y = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    p = torch.as_tensor(predictions, dtype=torch.long).flatten().cpu()
    if y.shape != p.shape or y.numel() == 0:
        raise ValueError(f"Expected labels and predictions of the same length N >= 1, got {tuple(y.shape)} and {tuple(p.shape)}.")
    if num_classes < 2:
        raise ValueError(f"A classifier chooses from at least 2 classes, got num_classes={num_classes}.")
    n = y.numel()
    correct = int((y == p).sum())
    majority = float(torch.bincount(y).max()) / n
    chance = max(1.0 / num_classes, majority)
    p_value = float(stats.binomtest(correct, n, chance, alternative="greater").pvalue)
    single = int(p[0]) if n > 1 and bool((p == p[0]).all()) else None
    return ChanceTest(correct, n, num_classes, chance, p_value, alpha, single)
