"""The Med-CAM benchmark's classifier-pass timing (the floor its rows report)."""

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_medcam.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_medcam", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_pass_seconds_times_both_passes_and_leaves_the_model_as_found():
    bench = load_bench()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)  # a user's partly frozen model
    flags = [p.requires_grad for p in model.parameters()]
    t_forward, t_backward = bench.pass_seconds(model, torch.rand(2, 1, 16, 16))
    assert 0 < t_forward and 0 < t_backward
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # only the input's gradient was computed
