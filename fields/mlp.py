"""Small fully connected networks for neural fields, with a flat parameter vector for storage.

Written by hand: the heads of Instant-NGP-style fields are a few ``Linear`` layers, but scenezip stores
them as one flat (float16) stream, so the order of the parameters in that vector is the contract:
layer after layer, each layer's weight ``[out, in]`` row-major, then its bias (when present).

The default mirrors the shape of tiny-cuda-nn's ``FullyFusedMLP`` (ReLU hidden layers, no biases);
scenezip runs it in torch on every device. tcnn's own network is not used: its parameters are
float16, its output layer is padded to 16 rows and its matrices have their own memory layouts, so it
would not share this layout (and a file would not decode the same on a CPU).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

OutputActivation = Literal["None", "Sigmoid"]


class MLP(nn.Module):
    """``n_hidden_layers`` hidden layers of ``hidden_dim`` with ReLU, then a linear output layer
    (optionally followed by a sigmoid).

    Weights start Xavier-uniform (tcnn's initialisation), biases at zero; ``seed`` makes them
    reproducible on any device.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        hidden_dim: int = 64,
        n_hidden_layers: int = 2,
        bias: bool = False,
        output_activation: OutputActivation = "None",
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, v, lo in (("n_input_dims", n_input_dims, 1), ("n_output_dims", n_output_dims, 1),
                            ("hidden_dim", hidden_dim, 1), ("n_hidden_layers", n_hidden_layers, 0)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if output_activation not in ("None", "Sigmoid"):
            raise ValueError(f"output_activation must be 'None' or 'Sigmoid', got {output_activation!r}")
        dims = [n_input_dims] + [hidden_dim] * n_hidden_layers + [n_output_dims]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.output_activation = output_activation
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.layers:
                bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * (2 * bound) - bound)
                if layer.bias is not None:
                    layer.bias.zero_()

    @property
    def n_input_dims(self) -> int:
        return self.layers[0].in_features

    @property
    def n_output_dims(self) -> int:
        return self.layers[-1].out_features

    def forward(self, x: Tensor) -> Tensor:  # [..., n_input_dims] -> [..., n_output_dims]
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(f"x must have shape [..., {self.n_input_dims}], got {tuple(x.shape)}")
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        x = self.layers[-1](x)
        return torch.sigmoid(x) if self.output_activation == "Sigmoid" else x

    def forward_split(self, shared: Tensor, per_view: Tensor) -> Tensor:
        """``forward(cat([shared, per_view], -1))`` with ``shared`` ``[N, A]`` broadcast against
        ``per_view`` ``[..., N, B]``; the first layer is applied to each part separately, so the
        shared part is multiplied once, not once per leading index. Returns ``[..., N, n_output_dims]``."""
        a, b = shared.shape[-1], per_view.shape[-1]
        if a + b != self.n_input_dims:
            raise ValueError(
                f"shared [..., {a}] and per_view [..., {b}] must together have {self.n_input_dims} features"
            )
        if shared.dim() != 2 or per_view.dim() < 2 or per_view.shape[-2] != shared.shape[0]:
            raise ValueError(
                f"shared must have shape [N, A] and per_view [..., N, B] with the same N, got "
                f"{tuple(shared.shape)} and {tuple(per_view.shape)}"
            )
        first = self.layers[0]
        x = shared @ first.weight[:, :a].t() + per_view @ first.weight[:, a:].t()
        if first.bias is not None:
            x = x + first.bias
        if len(self.layers) == 1:
            return torch.sigmoid(x) if self.output_activation == "Sigmoid" else x
        x = torch.relu(x)
        for layer in self.layers[1:-1]:
            x = torch.relu(layer(x))
        x = self.layers[-1](x)
        return torch.sigmoid(x) if self.output_activation == "Sigmoid" else x

    def n_params(self) -> int:
        return sum(p.numel() for p in self.flat_parameters())

    def flat_parameters(self) -> list[nn.Parameter]:
        """Parameters in storage order: per layer, weight then bias."""
        out = []
        for layer in self.layers:
            out.append(layer.weight)
            if layer.bias is not None:
                out.append(layer.bias)
        return out


def mlp_to_flat(mlp: MLP, dtype: torch.dtype = torch.float32) -> Tensor:  # -> [n_params]
    """All parameters of ``mlp`` as one vector in storage order, cast to ``dtype`` (on the CPU)."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in mlp.flat_parameters()]).to(dtype)


def mlp_load_flat(mlp: MLP, flat: Tensor) -> None:
    """Set the parameters of ``mlp`` from a vector written by :func:`mlp_to_flat` (any float dtype)."""
    n = mlp.n_params()
    if not isinstance(flat, Tensor) or flat.dim() != 1 or flat.numel() != n:
        shape = list(flat.shape) if isinstance(flat, Tensor) else type(flat).__name__
        raise ValueError(f"flat must have shape [{n}] for this MLP, got {shape}")
    if not flat.is_floating_point():
        raise ValueError(f"flat must be a floating-point tensor, got {flat.dtype}")
    with torch.no_grad():
        start = 0
        for p in mlp.flat_parameters():
            p.copy_(flat[start : start + p.numel()].reshape(p.shape).to(p.device, p.dtype))
            start += p.numel()
