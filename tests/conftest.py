"""Shared test settings."""

import os

import torch

# pytest-xdist runs one worker per core: more intra-op threads per worker only make them wait on
# each other (measured: small ops ~300x slower with oversubscribed OpenMP threads on 2 busy cores).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
