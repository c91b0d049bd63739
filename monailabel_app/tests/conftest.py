"""The app's own tests run inside its venv (monailabel, pydicom 2): the app folder is importable as
MONAI Label makes it (``lib`` and ``main`` at the top level)."""

import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
