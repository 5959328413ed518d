"""Models built in code, importable as Python factories (`neuron_runtime.zoo:<name>`) without any download.

Used by the benchmarks, the tests and the operator's examples. Each factory is deterministic: it seeds its own
`torch.Generator`, so the same arguments always give the same weights (and so the same compiled artifact).

| factory       | input(s)                                      | purpose                                          |
|---------------|-----------------------------------------------|--------------------------------------------------|
| `tiny_mlp`    | x: float32 [B, 256]                           | per-request overhead (compute is ~0.1 ms)        |
| `heavy_mlp`   | x: float32 [B, 1024]                          | ~100 MB of weights: batching pays (weight-bound) |
| `small_cnn`   | x: float32 [B, 3, 64, 64]                     | conv workload, 48 KiB payloads                   |
| `bert_like`   | input_ids, attention_mask: int64 [B, S]       | sequence buckets on axis 1                       |
| `poisoned_mlp`| x: float32 [B, 16]                            | TEST ONLY: fails on rows whose x[:, 0] == poison |
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


def _init(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if name.endswith("bias") or param.dim() < 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return module.eval()


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def tiny_mlp(*, in_features: int = 256, hidden: int = 1024, out_features: int = 10, seed: int = 0) -> nn.Module:
    """256 → 1024 → 1024 → 10: compute is negligible, so serving cost is all overhead."""
    return _init(_mlp([in_features, hidden, hidden, out_features]), seed)


def heavy_mlp(*, in_features: int = 1024, hidden: int = 4096, out_features: int = 1000, seed: int = 0) -> nn.Module:
    """1024 → 4096 → 4096 → 1000 (~96 MB fp32): streaming the weights dominates at small batch."""
    return _init(_mlp([in_features, hidden, hidden, out_features]), seed)


class _PoisonedMLP(nn.Module):
    """An MLP whose graph raises on rows whose first feature is `poison` (see `poisoned_mlp`)."""

    def __init__(self, mlp: nn.Module, poison: float) -> None:
        super().__init__()
        self.mlp = mlp
        self.poison: torch.Tensor
        self.guard: torch.Tensor
        self.register_buffer("poison", torch.tensor(poison, dtype=torch.float32))
        self.register_buffer("guard", torch.zeros(1))  # a one-entry table: only index 0 exists

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Data-dependent, so it stays in the traced graph: index 0 (in range) for a normal row, 1 (out of range) for
        # a poisoned one. torch.gather checks its indices and raises RuntimeError, eager and traced alike.
        hit = (x[:, 0] == self.poison).long()
        zero = torch.gather(self.guard, 0, hit)  # [B] zeros, or RuntimeError
        out: torch.Tensor = self.mlp(x) + zero.unsqueeze(1)
        return out


def poisoned_mlp(
    *, in_features: int = 16, hidden: int = 32, out_features: int = 4, poison: float = 7.0, seed: int = 0
) -> nn.Module:
    """TEST ONLY, never serve it: a "bad new model version" for tests of canary gates and rollouts.

    For every row whose first feature is not `poison` it returns exactly what `tiny_mlp` with the same sizes and
    seed returns (same weights, plus an exact 0). For every row whose first feature equals `poison` exactly,
    running the model raises RuntimeError from inside the graph: the row's index into a one-entry table becomes
    1, out of range, and `torch.gather` refuses it ("index 1 is out of bounds ..."). The check is tensor
    arithmetic, not Python control flow, so `torch.jit.trace` keeps it (no TracerWarning) and the traced graph
    fails on the poisoned rows only; the runtime's batch isolation answers those requests 400 ("the model failed
    on this request's values") and serves their batch-mates.

    A pod serving it becomes ready: the compile Job's reference cases (what the parity gate replays) are seeded
    standard normals (deterministic; hitting the default poison 7.0 would take a seven-sigma draw landing exactly
    on it), and the warm-up and isolation probe inputs are ones, so `poison` may not be 1.0. The failure is
    defined on the `cpu` target (TorchScript on the CPU); a Neuron graph need not check gather indices.

    Drop-in for the tests' MLP NeuronModel (`neuron_runtime.zoo:tiny_mlp` with in_features 16, hidden 32,
    out_features 4): same input x float32 [B, in_features], same single output [B, out_features].
    """
    if isinstance(poison, bool) or not isinstance(poison, int | float):
        raise TypeError(f"poison: expected a number, got {type(poison).__name__}")
    value = float(torch.tensor(float(poison), dtype=torch.float32))  # compared in float32, like the inputs
    if not math.isfinite(value):
        raise ValueError(f"poison: must be finite in float32 (a NaN never equals itself), got {poison!r}")
    if value == 1.0:
        raise ValueError("poison: must not be 1.0, the runtime's warm-up and known-good probe input (all ones)")
    return _PoisonedMLP(_init(_mlp([in_features, hidden, hidden, out_features]), seed), value).eval()


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class _SmallCNN(nn.Module):
    def __init__(self, widths: list[int], blocks: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(_BasicBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(x))
        logits: torch.Tensor = self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))
        return logits


def small_cnn(*, widths: list[int] | None = None, blocks: int = 2, classes: int = 10, seed: int = 0) -> nn.Module:
    """ResNet-like: 4 stages x 2 basic blocks, 32-256 channels, input [B, 3, 64, 64]."""
    model = _SmallCNN(widths or [32, 64, 128, 256], blocks, classes)
    _init(model, seed)
    for module in model.modules():  # BatchNorm in eval mode with non-trivial statistics
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            assert module.running_var is not None
            module.running_var.fill_(1.0)
    return model


class _BertLike(nn.Module):
    def __init__(self, vocab: int, d_model: int, heads: int, layers: int, max_len: int, labels: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        hidden = self.embed(input_ids) + self.position(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        logits: torch.Tensor = self.classifier(self.norm(hidden[:, 0]))
        return logits


def bert_like(
    *,
    vocab: int = 8192,
    d_model: int = 256,
    heads: int = 4,
    layers: int = 4,
    max_len: int = 512,
    labels: int = 2,
    seed: int = 0,
) -> nn.Module:
    """BERT-like encoder on (input_ids, attention_mask) int64 [B, S]; 1 = token, 0 = padding.

    The padding mask makes the [CLS] logits independent of padding, so sequence buckets (padding axis 1 to the
    next traced length) give the same answer as the unpadded sequence.
    """
    model = _BertLike(vocab, d_model, heads, layers, max_len, labels)
    _init(model, seed)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
    return model
