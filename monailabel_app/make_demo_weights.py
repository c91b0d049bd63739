"""Write seeded, untrained weights for the app's networks into its model folder.

For checking the plumbing only (server, transforms, geometry, Slicer display): untrained networks'
explanations mean nothing clinically. Real use puts the site's trained state dicts for the
definitions in ``lib/networks.py`` at the same paths. Nothing is downloaded.

    python make_demo_weights.py [--model-dir DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.networks import (  # noqa: E402
    CLASSIFIER_WEIGHTS,
    SEGMENTATION_WEIGHTS,
    classifier_network,
    segmentation_network,
    weights_path,
)

__all__ = ["write_demo_weights", "main"]


def write_demo_weights(model_dir: str, seed: int = 0) -> list[str]:
    """Save ``{"model": state_dict}`` of each network, seeded so every run writes the same weights."""
    os.makedirs(model_dir, exist_ok=True)
    written = []
    for name, build in ((SEGMENTATION_WEIGHTS, segmentation_network), (CLASSIFIER_WEIGHTS, classifier_network)):
        torch.manual_seed(seed)
        path = weights_path(model_dir, name)
        torch.save({"model": build().state_dict(), "note": "seeded untrained demo weights"}, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "model"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_demo_weights(args.model_dir, args.seed):
        print(path)


if __name__ == "__main__":
    main()
