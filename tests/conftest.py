"""Shared test settings."""

import os

import torch

# Test tensors are tiny and pytest-xdist runs one worker per core: more intra-op threads only make
# workers wait on each other (measured: small ops ~300x slower with oversubscribed OpenMP threads
# on 2 busy cores). Set MEDCAM_TEST_THREADS to change it.
torch.set_num_threads(int(os.environ.get("MEDCAM_TEST_THREADS", "1")))
