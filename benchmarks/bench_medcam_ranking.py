"""How Med-CAM's selection should rank pixels: the same soft masks, several rankings (issue 12).

The reported mask is the smallest sufficient top-k of a ranking of the pixels. For each family
(classifiers and held-out cases of ``bench_medcam.py``, cached there), Med-CAM runs once with
``rank="soft"`` and its soft masks are then selected under each ranking:

- ``soft``: the soft mask alone (``rank="soft"``);
- ``soft*abs(gain)`` / ``soft*relu(gain)``: weighted by the derivative of the target's log-odds on
  the soft evidence with respect to the mask (both signs / the raising sign only);
- ``soft*mean abs(gain)``: weighted by that derivative's magnitude averaged over 3 pixels;
- ``gate wW fF``: :func:`~medcam_monai.medcam.selection.relevance_order` (``rank="relevance"``,
  the default with W=3, F=0.2): the soft mask's order, pixels whose ``|gain|`` averaged over a
  W-pixel window is at most F times its maximum last.

Printed per family and ranking: median precision (mask inside the true marker dilated by 2 px),
median area / true area, decisions kept over a new background (another image's blur).

Usage::

    python benchmarks/bench_medcam_ranking.py --families resnet18 densenet121 --cases 12 --cache /tmp/mc12/cache
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench_medcam as bench  # noqa: E402


def rankings(soft: torch.Tensor, gain: torch.Tensor) -> dict[str, torch.Tensor]:
    from medcam_monai.medcam.selection import relevance_order

    pool = F.avg_pool3d if soft.ndim == 5 else F.avg_pool2d
    out = {
        "soft": soft,
        "soft*abs(gain)": soft * gain.abs(),
        "soft*relu(gain)": soft * gain.clamp_min(0),
        "soft*mean abs(gain)": soft * pool(gain.abs(), 3, 1, 1, count_include_pad=False),
    }
    for window, floor in ((5, 0.05), (3, 0.05), (5, 0.2), (3, 0.2)):
        out[f"gate w{window} f{floor:g}"] = relevance_order(soft, gain, window, floor)
    return out


def main(argv=None) -> int:
    from medcam_monai import MedCAM
    from medcam_monai.medcam import make_fill
    from medcam_monai.medcam.losses import logit_margin
    from medcam_monai.medcam.selection import smallest_sufficient
    from medcam_monai.perturbation import make_background

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--families", nargs="+", default=["resnet18", "densenet121", "mobilenetv2", "densenet3d"], choices=list(bench.FAMILIES)
    )
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--train", type=int, default=1200, help="classifier training images (densenet3d: 2000)")
    parser.add_argument("--amortised", action="store_true", help="rank the amortised U-Net's masks (fit on 128 images x 8 epochs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="outputs/bench_medcam12")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'amortised' if args.amortised else 'per-image'} soft masks")
    print("| family | ranking | cases | precision | area/true | kept (new bg) |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        train = 2000 if family == "densenet3d" else args.train
        model, info = bench.trained(family, 0.0, train, Path(args.cache), args.device)
        x, truth, y, new_bg, _ = bench.evaluation_cases(model, family, args.cases, args.device)
        medcam = MedCAM(model, rank="soft")
        if args.amortised:  # the fitted U-Net's masks after its refinement steps, as bench_medcam's amortised rows
            data = bench.phantoms(family, 128, seed=11).images
            medcam.fit([data[i : i + 16].to(args.device) for i in range(0, len(data), 16)], epochs=8)
        soft = medcam(x).soft_map.detach()
        fill = make_fill(x, "auto")
        background = make_background(x, "constant", [torch.Generator() for _ in range(len(x))])
        with torch.no_grad():
            need = medcam._need(model(x), y)  # the log-odds Med-CAM's selection asks for
        s = soft.clone().requires_grad_(True)
        gain = torch.autograd.grad(logit_margin(model(s * x + (1 - s) * fill), y).sum(), s)[0]
        for name, order in rankings(soft, gain).items():
            sel = smallest_sufficient(lambda t: model(t).detach(), x, soft, fill, background, y, need, refine=2, order=order)
            m = sel.binary
            precision, area = bench.marker_figures(m, truth)
            with torch.no_grad():
                kept = (model(m * x + (1 - m) * new_bg).argmax(1) == y).float().mean()
            print(
                f"| {family} | {name} | {len(x)} | {statistics.median(precision.tolist()):.2f} | "
                f"{statistics.median(area.tolist()):.2f} | {float(kept):.0%} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
