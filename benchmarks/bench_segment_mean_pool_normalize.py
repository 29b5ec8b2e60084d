"""segment_mean_pool_normalize vs the reference (index_add) and vs padded masked mean pooling.

Shapes: about 4096 tokens of Tatoeba-like sentences (lengths 4..22, mean about 13).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, main, rule_agreement  # noqa: E402

from adaptertx.kernels import segment_mean_pool_normalize, segment_mean_pool_normalize_ref  # noqa: E402


def make_cases(tiny: bool) -> list[Case]:
    dims = [32] if tiny else [384, 768]
    tokens_target = 64 if tiny else 4096
    g = torch.Generator().manual_seed(0)
    lengths = []
    while sum(lengths) < tokens_target:
        lengths.append(int(torch.randint(4, 23, (1,), generator=g)))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    n, longest = len(lengths), max(lengths)
    cases = []
    for dim in dims:
        for dtype in (torch.float32, torch.bfloat16):
            hidden = (torch.randn(int(cu[-1]), dim, generator=g) + 0.2).to(dtype)
            padded = torch.zeros(n, longest, dim, dtype=dtype)
            mask = torch.zeros(n, longest, dtype=dtype)
            for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
                padded[i, : e - s] = hidden[s:e]
                mask[i, : e - s] = 1
            ref32 = segment_mean_pool_normalize_ref(hidden.float(), cu)

            def masked_mean(padded=padded, mask=mask):
                m = mask.unsqueeze(-1)
                return F.normalize((padded * m).sum(1) / m.sum(1), dim=1)

            tag = f"{n} sents/{int(cu[-1])} tok x{dim} {str(dtype).replace('torch.', '')}"
            cases.append(Case(f"pool vs ref {tag}", lambda h=hidden: segment_mean_pool_normalize_ref(h, cu),
                              lambda h=hidden: segment_mean_pool_normalize(h, cu), rule_agreement(ref32)))
            cases.append(Case(f"pool vs padded masked mean {tag}", masked_mean,
                              lambda h=hidden: segment_mean_pool_normalize(h, cu), rule_agreement(ref32)))
    return cases


if __name__ == "__main__":
    raise SystemExit(main("bench_segment_mean_pool_normalize", make_cases))
