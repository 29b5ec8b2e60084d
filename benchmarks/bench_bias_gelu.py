"""bias_gelu vs ``F.gelu(x + bias)`` on FFN-intermediate shapes (tokens x ffn)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, main, rule_agreement  # noqa: E402

from adaptertx.kernels import bias_gelu, bias_gelu_ref  # noqa: E402


def make_cases(tiny: bool) -> list[Case]:
    shapes = [(64, 96)] if tiny else [(4096, 1536), (4096, 3072)]
    cases = []
    for tokens, ffn in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            x = (torch.randn(tokens, ffn, generator=g) * 2).to(dtype)
            b = torch.randn(ffn, generator=g).to(dtype)
            ref32 = F.gelu(x.float() + b.float())
            name = f"bias_gelu {tokens}x{ffn} {str(dtype).replace('torch.', '')}"
            cases.append(Case(name, lambda x=x, b=b: bias_gelu_ref(x, b), lambda x=x, b=b: bias_gelu(x, b),
                              rule_agreement(ref32)))
    return cases


if __name__ == "__main__":
    raise SystemExit(main("bench_bias_gelu", make_cases))
