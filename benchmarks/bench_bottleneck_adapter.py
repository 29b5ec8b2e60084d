"""bottleneck_adapter vs the torch composition ``residual + s * up(act(down(h)))``.

Shapes: tokens x dim with the Pfeiffer reduction factor 16 (bottleneck = dim / 16). The
"ref / its two bare GEMMs" rows time the reference (baseline column) against its two GEMMs
with nothing around them (ours column): the ratio bounds what fusing the elementwise work
can gain at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, main, rule_agreement  # noqa: E402

from adaptertx.kernels import bottleneck_adapter, bottleneck_adapter_ref  # noqa: E402


def make_cases(tiny: bool) -> list[Case]:
    shapes = [(64, 48, 8)] if tiny else [(4096, 384, 24), (4096, 768, 48)]
    cases = []
    for tokens, dim, r in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            h, res = (torch.randn(tokens, dim, generator=g).to(dtype) for _ in range(2))
            dw = (torch.randn(r, dim, generator=g) / dim**0.5).to(dtype)
            db = (0.1 * torch.randn(r, generator=g)).to(dtype)
            uw = (torch.randn(dim, r, generator=g) / r**0.5).to(dtype)
            ub = (0.1 * torch.randn(dim, generator=g)).to(dtype)
            args = (h, res, dw, db, uw, ub, "relu", 0.5)
            f32 = [t.float() for t in args[:6]]
            ref32 = f32[1] + 0.5 * F.linear(F.relu(F.linear(f32[0], f32[2], f32[3])), f32[4], f32[5])
            tag = f"{tokens}x{dim} r={r} {str(dtype).replace('torch.', '')}"
            cases.append(Case(f"bottleneck_adapter {tag}", lambda a=args: bottleneck_adapter_ref(*a),
                              lambda a=args: bottleneck_adapter(*a), rule_agreement(ref32)))

            def gemms_only(h=h, dw=dw, uw=uw):
                return torch.mm(torch.mm(h, dw.t()), uw.t())

            cases.append(Case(f"  ref / its two bare GEMMs {tag}", lambda a=args: bottleneck_adapter_ref(*a),
                              gemms_only, lambda b, o: (True, "timing only")))
    return cases


if __name__ == "__main__":
    raise SystemExit(main("bench_bottleneck_adapter", make_cases))
