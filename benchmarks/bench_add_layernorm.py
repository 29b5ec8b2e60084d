"""add_layernorm vs ``F.layer_norm(x + residual)`` on BERT hidden shapes (tokens x dim)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, main, rule_agreement  # noqa: E402

from adaptertx.kernels import add_layernorm, add_layernorm_ref  # noqa: E402


def make_cases(tiny: bool) -> list[Case]:
    shapes = [(64, 48)] if tiny else [(4096, 384), (4096, 768)]
    cases = []
    for tokens, dim in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            x, r = (torch.randn(tokens, dim, generator=g).to(dtype) for _ in range(2))
            w = (1 + 0.1 * torch.randn(dim, generator=g)).to(dtype)
            b = (0.1 * torch.randn(dim, generator=g)).to(dtype)
            ref32 = F.layer_norm(x.float() + r.float(), (dim,), w.float(), b.float(), 1e-12)
            name = f"add_layernorm {tokens}x{dim} {str(dtype).replace('torch.', '')}"
            cases.append(Case(name, lambda x=x, r=r, w=w, b=b: add_layernorm_ref(x, r, w, b, 1e-12),
                              lambda x=x, r=r, w=w, b=b: add_layernorm(x, r, w, b, 1e-12), rule_agreement(ref32)))
    return cases


if __name__ == "__main__":
    raise SystemExit(main("bench_add_layernorm", make_cases))
