"""The package's shape: a lazy root, light entry points, one registry, no import circles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medcam_monai"


@pytest.mark.parametrize("module", ["medcam_monai", "medcam_monai.pipeline", "medcam_monai.io", "medcam_monai.io.formats",
                                    "medcam_monai.bundle", "medcam_monai.registry", "medcam_monai.data.manifests"])
def test_importing_does_not_load_torch(module):
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'monai', 'highdicom') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import {module} loaded {out}"


def test_public_api_at_the_root():
    import medcam_monai

    for name in ("MedCAM", "SegHiResGradCAM", "SegGradCAM", "GradCAM", "HiResCAM", "Explanation", "write_dicom_seg",
                 "write_parametric_map", "write_nifti", "ExplanationHandler"):
        assert getattr(medcam_monai, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute"):
        medcam_monai.NoSuchThing  # noqa: B018


def test_registry_names_every_explainer_once_and_each_builds():
    from torch import nn

    from medcam_monai.registry import CLASSIFICATION, EXPLAINERS, SEGMENTATION, build_explainer, methods_for

    assert set(methods_for(CLASSIFICATION)) | set(methods_for(SEGMENTATION)) == set(EXPLAINERS)
    assert methods_for(CLASSIFICATION)[0] == "medcam" and methods_for(SEGMENTATION)[0] == "seg_hires_grad_cam"
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for name, spec in EXPLAINERS.items():
        explainer = build_explainer(name, net, inferer=None) if spec.takes_inferer else build_explainer(name, net, inferer=object())
        assert type(explainer).__name__ == spec.import_path.split(":")[1]
    with pytest.raises(ValueError, match="Unknown explainer 'gradcam\\+\\+'; choose one of"):
        build_explainer("gradcam++", net)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("medcam_monai")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circles_between_modules():
    """Module-level and function-level imports together form no cycle (a room imports only the rooms below it)."""
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    modules = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for r in map(resolve, deps) if r and r != m and not m.startswith(r + ".")} for m, deps in graph.items()}
    # a package's __init__ re-exporting its own submodules is not a circle
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            if d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
