"""dropout (hash mask, one pass, no stored mask) vs torch's ``F.dropout``, forward and backward,
on the attention-probability and hidden-state shapes of an adapter training step.

Agreement: ours equals :func:`adaptertx.kernels.dropout_ref` bit for bit, and both ours and
torch drop a fraction of elements within five binomial standard deviations of p.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, main  # noqa: E402

from adaptertx.kernels import dropout, dropout_ref  # noqa: E402

P = 0.1
SEED = 1234


def _agreement(expected: torch.Tensor, p: float):
    def agree(base: torch.Tensor, ours: torch.Tensor) -> tuple[bool, str]:
        n = ours.numel()
        tol = 5 * math.sqrt(p * (1 - p) / n)
        rate_o, rate_b = (ours == 0).float().mean().item(), (base == 0).float().mean().item()
        exact = torch.equal(ours, expected)
        ok = exact and abs(rate_o - p) <= tol and abs(rate_b - p) <= tol
        return ok, f"{'= ref' if exact else '!= ref'}; dropped {rate_o:.4f} vs torch {rate_b:.4f}"

    return agree


def make_cases(tiny: bool) -> list[Case]:
    # (batch, heads, len, len) attention probabilities of a 16 x 128 batch; (tokens, hidden) states.
    shapes = [(2, 2, 16, 16)] if tiny else [(16, 12, 128, 128), (2048, 384), (2048, 768)]
    cases = []
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
            label = f"{'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}"
            expected = dropout_ref(x, P, SEED)
            cases.append(Case(f"dropout fwd {label}", lambda x=x: F.dropout(x, P, True),
                              lambda x=x: dropout(x, P, SEED), _agreement(expected, P)))
            leaf = x.clone().requires_grad_()
            grad = torch.ones_like(x)

            def torch_step(leaf=leaf, grad=grad):
                leaf.grad = None
                F.dropout(leaf, P, True).backward(grad)
                return leaf.grad

            def our_step(leaf=leaf, grad=grad):
                leaf.grad = None
                dropout(leaf, P, SEED).backward(grad)
                return leaf.grad

            cases.append(Case(f"dropout fwd+bwd {label}", torch_step, our_step,
                              _agreement(dropout_ref(torch.ones_like(x), P, SEED), P)))
    return cases


if __name__ == "__main__":
    raise SystemExit(main("bench_dropout", make_cases))
