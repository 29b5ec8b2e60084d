"""The default model's Tatoeba and BUCC beside the published MTEB figures of intfloat/multilingual-e5-small.

MTEB scores Tatoeba x→en (its queries are the ``xxx`` side of ``xxx-eng``) by cosine nearest
neighbour, main score F1 (:func:`adaptertx.metrics.bitext_f1`), accuracy beside it; the model
card's model-index (revision 9080400076fbadbb4c4dcb136ff4eddc40b42553 of mteb/tatoeba-bitext-mining)
lists both. Here the bundled LASER test pairs (the same pairs) are encoded by adaptertx's packed
encoder with e5's prefix for symmetric tasks (``"query: "``, the default) and, for comparison,
with ``"passage: "``. Languages: the first 16 of MTEB's Tatoeba list.

BUCC is not the same task on both sides: adaptertx mines the bundled zh-en sample split as XTREME
does (ratio margin over every sentence, F1 at a tuned threshold), MTEB matches gold sentences
by nearest neighbour; its figure is printed for reference only.

Usage: ``python benchmarks/compare_mteb.py [--langs sq,de] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptertx.evaluation import evaluate_bucc, evaluate_tatoeba  # noqa: E402
from adaptertx.settings import DEFAULT_MODEL  # noqa: E402

#: intfloat/multilingual-e5-small's model card, model-index "MTEB Tatoeba (xxx-eng)": (accuracy, f1).
MTEB_TATOEBA = {
    "sq": (91.0, 88.55666666666666), "fy": (57.22543352601156, 51.03220478943021),
    "ku": (46.58536585365854, 39.66870798578116), "tr": (89.7, 86.77999999999999),
    "de": (97.39999999999999, 96.58333333333331), "nl": (92.4, 90.3), "ro": (86.9, 83.67190476190476),
    "ang": (50.0, 42.23229092632078), "io": (76.3, 70.86190476190477), "jv": (57.073170731707314, 50.658958927251604),
    "is": (68.2, 62.156507936507936), "sl": (77.52126366950182, 72.8496210148701),
    "cy": (70.78260869565217, 65.32422360248447), "kk": (78.43478260869566, 73.02608695652172),
    "et": (60.9, 55.309753694581275), "he": (72.89999999999999, 67.92023809523809),
}
#: The same card, "MTEB BUCC (zh-en)" (revision d51519689f32196a32af33b075a01d0e7c51e252): (accuracy, f1).
MTEB_BUCC_ZH = (89.25750394944708, 88.79234684921889)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--langs", default=",".join(MTEB_TATOEBA), help="Languages (default: the 16 above).")
    parser.add_argument("--json", help="Also write the figures here.")
    args = parser.parse_args(argv)
    langs = [code for code in args.langs.split(",") if code]
    unknown = [code for code in langs if code not in MTEB_TATOEBA]
    if unknown:
        parser.error(f"no MTEB figure here for {', '.join(unknown)}")
    query = {s.lang: s for s in evaluate_tatoeba(DEFAULT_MODEL, langs, progress=False)}
    passage = {s.lang: s for s in evaluate_tatoeba(DEFAULT_MODEL, langs, prefix="passage: ", progress=False)}
    print("| lang | pairs | MTEB acc | ours acc | Δ | MTEB F1 | ours F1 | Δ | ours acc, \"passage: \" | ours en→x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for code in langs:
        q, p = query[code], passage[code]
        acc, f1 = MTEB_TATOEBA[code]
        rows.append((acc, q.x_to_en, f1, q.x_to_en_f1, p.x_to_en, q.en_to_x))
        print(f"| {code}{' *' if q.low_resource else ''} | {q.pairs} | {acc:.1f} | {q.x_to_en:.1f} | "
              f"{q.x_to_en - acc:+.1f} | {f1:.1f} | {q.x_to_en_f1:.1f} | {q.x_to_en_f1 - f1:+.1f} | "
              f"{p.x_to_en:.1f} | {q.en_to_x:.1f} |")
    m = [_mean(col) for col in zip(*rows, strict=True)]
    print(f"| mean ({len(rows)}) | | {m[0]:.2f} | {m[1]:.2f} | {m[1] - m[0]:+.2f} | {m[2]:.2f} | {m[3]:.2f} | "
          f"{m[3] - m[2]:+.2f} | {m[4]:.2f} | {m[5]:.2f} |")
    bucc = {name: evaluate_bucc(DEFAULT_MODEL, "zh", prefix=prefix, progress=False)
            for name, prefix in (("query", None), ("passage", "passage: "))}
    print(f"\nBUCC zh-en: ours (XTREME mining F1, bundled sample split, {bucc['query'].gold} gold pairs) "
          f"\"query: \" {bucc['query'].f1:.1f}, \"passage: \" {bucc['passage'].f1:.1f}; "
          f"MTEB (gold-sentence matching) accuracy {MTEB_BUCC_ZH[0]:.1f}, F1 {MTEB_BUCC_ZH[1]:.1f}")
    if args.json:
        out = {"tatoeba": {code: {"mteb": MTEB_TATOEBA[code], "query": query[code].__dict__ | {"nearest": None},
                                  "passage": passage[code].__dict__ | {"nearest": None}} for code in langs},
               "bucc_zh": {name: s.__dict__ for name, s in bucc.items()}, "mteb_bucc_zh": MTEB_BUCC_ZH}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
