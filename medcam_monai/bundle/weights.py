"""Loading a bundle's weights with errors that say what is wrong and what to do.

MONAI's ``CheckpointLoader`` fails with ``FileNotFoundError`` for untrained bundles, an unpickling
error for TorchScript files and a long ``load_state_dict`` dump for weights of another network.
:class:`CheckedCheckpointLoader` is the same handler with those three cases explained.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from monai.handlers import CheckpointLoader

from medcam_monai.errors import InputError

__all__ = ["WeightsError", "is_torchscript_file", "check_weights_file", "CheckedCheckpointLoader"]


class WeightsError(InputError):
    """Weights that are missing, TorchScript, or do not fit the network (the user passes others or trains)."""


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True for a ``torch.jit.save`` archive (it holds compiled ``code/``; a state dict does not)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def check_weights_file(path: str | os.PathLike) -> None:
    """Raise :class:`WeightsError` when ``path`` is missing or is TorchScript, with the fix."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"No weights at {str(path)!r}. Train the bundle's weights (`medcam-monai train <bundle>` for the "
            f"project's bundles, `python -m monai.bundle run --config_file configs/train.json` for any bundle), "
            f"or pass a state dict of its network: --weights FILE on the command line (or --bundle-root FOLDER "
            f"holding models/model.pt), `ckpt_path`/the CheckpointLoader's `load_path` in the config."
        )
    if is_torchscript_file(path):
        raise WeightsError(
            f"{str(path)!r} is TorchScript (e.g. a bundle's model.ts). The explainers need forward and "
            f"backward hooks on the network's layers, and TorchScript does not run Python hooks, so it "
            f"cannot be explained. Use the eager network: the bundle's `network_def` with a state dict "
            f"(`models/model.pt`, saved by configs/train.json or by torch.save(model.state_dict(), ...))."
        )


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments) with clear errors for missing weights,
    TorchScript files and weights that do not fit the network (naming the mismatched tensors)."""

    def __call__(self, engine) -> None:
        check_weights_file(self.load_path)
        try:
            super().__call__(engine)
        except RuntimeError as e:
            text = str(e)
            if "size mismatch" not in text and "Missing key" not in text and "Unexpected key" not in text:
                raise
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()][1:6]
            raise WeightsError(
                f"The weights in {str(self.load_path)!r} do not fit the network built by `network_def` "
                f"(another architecture, or another number of classes/channels). First differences: "
                f"{' | '.join(lines)}. Train this bundle's weights (`medcam-monai train <bundle>`) or fix "
                f"`network_def` to match the checkpoint."
            ) from None
