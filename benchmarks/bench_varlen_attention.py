"""varlen_attention vs its reference (length-grouped SDPA on gathered q/k/v) on Tatoeba-like packs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, main, rule_agreement  # noqa: E402

from adaptertx.kernels import varlen_attention, varlen_attention_ref  # noqa: E402


def make_cases(tiny: bool) -> list[Case]:
    # (sequences, heads, head dim): me5-small (12 x 32) and XLM-R base (12 x 64) shapes.
    shapes = [(12, 2, 16)] if tiny else [(512, 12, 32), (512, 12, 64)]
    cases = []
    for n, heads, hd in shapes:
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(6, 40, (n,), generator=g).sort().values  # length-sorted, as the encoder packs
        cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        for dtype in (torch.float32, torch.bfloat16):
            qkv = (torch.randn(int(cu[-1]), 3 * heads * hd, generator=g) * 2).to(dtype)
            ref32 = varlen_attention_ref(qkv.float(), cu, heads)
            name = f"varlen_attention {n} seqs ({int(cu[-1])} tok) {heads}x{hd} {str(dtype).replace('torch.', '')}"
            # Bind this shape's cu and heads: the cases run after the loop has moved on.
            cases.append(Case(name, lambda q=qkv, c=cu, h=heads: varlen_attention_ref(q, c, h),
                              lambda q=qkv, c=cu, h=heads: varlen_attention(q, c, h), rule_agreement(ref32)))
    return cases


if __name__ == "__main__":
    raise SystemExit(main("bench_varlen_attention", make_cases))
