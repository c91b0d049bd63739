"""Layers by name, captured activations, and the guarantee that an explained network is left as found.

Every explainer goes through this module to touch a network: :func:`unwrap_model` to see past
DDP and refuse TorchScript, :func:`resolve_layer` to turn a ``named_modules()`` name into a module
(with the nearest valid names when the name is wrong), :class:`LayerRecorder` to capture outputs
(and make them differentiable leaves for gradient CAMs), and :func:`frozen` to freeze the network
for the run and restore its parameters' ``requires_grad``, every module's ``training`` flag and
its hook tables afterwards, also when the run raises.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "LayerNotFoundError",
    "unwrap_model",
    "resolve_layer",
    "layer_names",
    "deepest_layer",
    "output_shapes",
    "LayerRecorder",
    "frozen",
    "gradients_enabled",
]

_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


class LayerNotFoundError(KeyError):
    """A layer name that is not one of the network's ``named_modules()``."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside DDP / DataParallel wrappers; TorchScript is refused with the reason.

    Raises:
        TypeError: for a TorchScript module, which does not run Python hooks.
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "The network is a TorchScript module (e.g. a bundle's model.ts): TorchScript does not run "
            "Python forward/backward hooks, so activations and gradients cannot be captured. "
            "Explain from the eager network instead: build it from the bundle's `network_def` and load "
            "`models/model.pt` (a state dict)."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a torch.nn.Module, got {type(model).__name__}.")
    return model


def layer_names(model: nn.Module) -> list[str]:
    """All non-empty ``named_modules()`` names of ``model``."""
    return [name for name, _ in unwrap_model(model).named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` in ``model.named_modules()``.

    Raises:
        LayerNotFoundError: naming the closest valid layer names, so a typo is a one-line fix.
    """
    model = unwrap_model(model)
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not near:  # a prefix match helps for deep names like "features.denseblock4"
        near = [n for n in names if n.startswith(name.split(".")[0])][:5]
    hint = f" Nearest valid names: {', '.join(near)}." if near else ""
    raise LayerNotFoundError(
        f"Layer {name!r} is not in {type(model).__name__}.named_modules().{hint} "
        f"The network has {len(names)} named layers; list them with "
        f"`medcam_monai.hooks.layer_names(model)`."
    )


def output_shapes(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, tuple[int, ...]]], object]:
    """``(name, shape)`` of every named layer's tensor output in execution order, and the network's
    output, from one no-grad forward pass of ``x``; every hook is removed afterwards."""
    model = unwrap_model(model)
    fired: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if name:

            def hook(module, inputs, output, name=name):
                if isinstance(output, torch.Tensor):
                    fired.append((name, tuple(output.shape)))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return fired, out


def _tokens_reaching_output(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[str]:
    """Those of the token layers ``names`` (outputs ``(B, N, D)``) whose tokens after the first reach
    the network's output (a nonzero gradient), in ``names``' order.

    One forward and one ``torch.autograd.grad`` call on a copy of ``x``: no parameter's ``.grad`` is
    written and the hooks are removed afterwards.
    """
    # also inside an evaluator's no_grad / inference_mode
    with LayerRecorder(model, names) as recorder, gradients_enabled():
        out = _first_tensor(model(x.detach().clone().requires_grad_(True)))
        outputs = recorder.outputs
        found = [n for n in names if n in outputs and outputs[n].requires_grad]
        if not found or not out.requires_grad:
            return []
        grads = torch.autograd.grad(out.float().sum(), [outputs[n] for n in found], allow_unused=True)
    return [n for n, g in zip(found, grads, strict=True) if g is not None and bool(g[:, 1:].abs().sum() > 0)]


def deepest_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The deepest feature layer: the last-run layer with the smallest spatial output, or for a
    transformer the last token layer whose patch tokens still reach the output.

    A feature map has the input's number of dims (``(B, C, *spatial)``) with at least one spatial
    axis longer than 1; an output of the network output's shape (a segmentation head on the input
    grid) is not one. Token outputs ``(B, N, D)`` with ``N > 1`` that run after the last feature map
    (a ViT: its patch embedding, then the blocks) are deeper: the last of them whose tokens after
    the first get a gradient from the output is taken. For a class-token ViT that is the last
    block's first norm (its attention reads it into the class token; the block's own output tokens
    do not reach the decision), as pytorch-grad-cam's recipe; the patch embedding, the smallest
    feature map, would be the shallowest layer of the network. One forward pass of ``x`` without
    gradients finds the layers, and one with gradients on a copy of ``x`` (no parameter gradients
    are written) where tokens follow.
    """
    model = unwrap_model(model)
    fired, out = output_shapes(model, x)
    out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    is_map = [len(s) == x.ndim and max(s[2:]) > 1 and s != out_shape for _, s in fired]
    token_at = [i for i, (_, s) in enumerate(fired) if len(s) == 3 and s[1] > 1]
    tokens: list[str] = []
    if token_at:
        # the residual stream: token outputs of the last one's shape (not a block's qkv or MLP width)
        stream = fired[token_at[-1]][1]
        at = [i for i in token_at if fired[i][1] == stream]
        if not any(is_map[at[-1] :]):  # no feature map after the tokens (else a conv decoder follows: UNETR)
            tokens = list(dict.fromkeys(fired[i][0] for i in at))
            reaching = _tokens_reaching_output(model, x, tokens)
            if reaching:
                return reaching[-1]
    spatial = [(n, s) for (n, s), m in zip(fired, is_map, strict=True) if m]
    if spatial:
        smallest = min(torch.Size(s[2:]).numel() for _, s in spatial)
        return [n for n, s in spatial if torch.Size(s[2:]).numel() == smallest][-1]
    if tokens:
        return tokens[-1]
    raise ValueError(
        f"{type(model).__name__} has no layer with a spatial or token output to explain; name one "
        f"explicitly (see medcam_monai.hooks.layer_names(model))."
    )


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"layer output of type {type(output).__name__} holds no tensor to explain")


class LayerRecorder:
    """Capture the outputs of named layers during forward passes; hooks are removed on exit.

    Args:
        model: the network (DDP is unwrapped).
        names: ``named_modules()`` names of the layers to record.
        as_leaf: replace each recorded output by a detached copy that requires grad, so that
            ``torch.autograd.grad(y, recorder.outputs[name])`` gives ``dy/dA`` even when the network's
            parameters and the input do not require grad (and no graph is kept before the layer).

    ``outputs[name]`` holds the last output of that layer (the first tensor of a tuple output).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], as_leaf: bool = False) -> None:
        self.model = unwrap_model(model)
        self.names = list(names)
        self.layers = {name: resolve_layer(self.model, name) for name in self.names}
        self.as_leaf = as_leaf
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            tensor = _first_tensor(output)
            if self.as_leaf:
                leaf = tensor.detach().requires_grad_(True)
                self.outputs[name] = leaf
                if isinstance(output, torch.Tensor):
                    return leaf
                return type(output)([leaf, *output[1:]])
            self.outputs[name] = tensor
            return None

        return hook

    def __enter__(self) -> LayerRecorder:
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextlib.contextmanager
def frozen(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Freeze ``model`` for an explanation and restore it exactly afterwards, also on exceptions.

    Inside: every parameter has ``requires_grad=False`` (no parameter gradients are computed) and,
    with ``eval_mode``, every module is in eval mode. On exit: each parameter's ``requires_grad``,
    each module's ``training`` flag and each module's hook tables are as they were on entry (hooks
    added inside and not removed are dropped). Parameters and buffers are never written here.
    """
    model = unwrap_model(model)
    modules = list(model.modules())
    training = [m.training for m in modules]
    hooks = [{t: set(getattr(m, t, {}).keys()) for t in _HOOK_TABLES} for m in modules]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        if eval_mode:
            model.eval()
        yield model
    finally:
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)
        for m, flag, before in zip(modules, training, hooks):
            m.training = flag
            for table, keys in before.items():
                current = getattr(m, table, None)
                if current is None:
                    continue
                for key in [k for k in current if k not in keys]:
                    del current[key]


@contextlib.contextmanager
def gradients_enabled() -> Iterator[None]:
    """Re-enable autograd inside MONAI evaluators, which run under ``no_grad``/``inference_mode``.

    Tensors created under inference mode cannot join a graph: clone inputs inside this context.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield
