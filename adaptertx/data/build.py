"""Regenerate ``adaptertx/data/bundled`` (compressed files, licenses, manifest, README)
from the shared data folder, deterministically.

    python -m adaptertx.data.build --src /path/to/data [--out adaptertx/data/bundled]

Files are stored xz-compressed (preset 9) in their release format, one folder per dataset
and language, so that the bundled loaders use the same readers as user files. Two
files are derived, one is repaired: ANLI's analysis CSVs are reduced to the ANLI release
jsonl fields; the English UD-POS train file is XTREME's English UD dev set minus every
sentence that also occurs in the bundled UD_English-EWT dev/test files; TyDiQA train
question ids (repeated in XTREME's files) are renumbered.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import json
import lzma
import shutil
import sys
from collections import Counter
from pathlib import Path

from adaptertx.data import FAMILIES, build_splits
from adaptertx.data.readers import read_conllu, read_udpos_tsv
from adaptertx.errors import AdaptertxError
from adaptertx.io import atomic_dir
from adaptertx.languages import name as lang_name
from adaptertx.languages import normalize

LICENSES = {
    "anli": "CC BY-NC 4.0", "siqa": "CC BY 4.0", "cosmosqa": "CC BY 4.0", "commonsenseqa": "MIT",
    "mrpc": "Microsoft Research license (research use)", "hellaswag": "MIT",
    "copa": "BSD-2-Clause", "xcopa": "CC BY 4.0", "xnli": "CC BY-NC 4.0",
    "pawsx": "free use with attribution (Google)", "udpos": "per treebank: CC BY-SA 4.0 / CC BY-NC-SA 3.0",
    "masakhaner": "CC BY-NC 4.0", "conll03": "Reuters RCV1 research agreement",
    "panx": "WikiANN (no explicit license; cite Pan et al. 2017, Rahimi et al. 2019)",
    "xquad": "CC BY-SA 4.0", "mlqa": "CC BY-SA 3.0", "tydiqa": "Apache-2.0",
    "tatoeba": "CC BY 2.0 FR (Tatoeba)", "bucc": "BUCC 2018 (research use)",
}

UD_TREEBANKS = {
    "af": "UD_Afrikaans-AfriBooms", "eu": "UD_Basque-BDT", "en": "UD_English-EWT", "mr": "UD_Marathi-UFAL",
    "ta": "UD_Tamil-TTB", "te": "UD_Telugu-MTG", "yo": "UD_Yoruba-YTB",
}
MASAKHA = ["amh", "hau", "ibo", "kin", "lug", "luo", "pcm", "swa", "wol", "yor"]


class _Builder:
    def __init__(self, src: Path, out: Path):
        self.src, self.out = src, out
        self.files: dict[str, dict[str, dict]] = {}

    def put(self, dataset: str, lang: str, orig: str, fmt: str, data: bytes, name: str) -> str:
        rel = f"{dataset}/{lang}/{name}.xz"
        target = self.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.compress(data, preset=9))
        self.files.setdefault(dataset, {}).setdefault(lang, {})[orig] = {"path": rel, "fmt": fmt}
        return rel

    def copy(self, dataset: str, lang: str, orig: str, fmt: str, rel_src: str) -> None:
        path = self.src / rel_src
        data = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
        name = path.name[:-4] if path.suffix == ".bz2" else path.name
        self.put(dataset, lang, orig, fmt, data, name)

    def notes(self, dataset: str, *rel_srcs: str, rename: dict[str, str] | None = None) -> None:
        for rel in rel_srcs:
            path = self.src / rel
            dest = self.out / dataset / (rename or {}).get(rel, path.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)


def _anli_jsonl(src: Path) -> bytes:
    lines = []
    for rnd in ("r1", "r2", "r3"):
        with open(src / f"anli/ANLI_analysis_{rnd}_dev.csv", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                lines.append(json.dumps({
                    "uid": row["uid"], "premise": row["context"], "hypothesis": row["statement"],
                    "label": row["gold_label"], "reason": row["reason"], "round": rnd,
                }, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _udpos_en_train(src: Path) -> bytes:
    """XTREME's English UD dev (UD 2.5, all English treebanks) minus EWT dev/test sentences."""
    ewt = src / "ud" / UD_TREEBANKS["en"]
    held = {tuple(ex["tokens"]) for f in ("en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu")
            for ex in read_conllu(ewt / f)}
    blocks = []
    for ex in read_udpos_tsv(src / "udpos_xtreme/dev-en.tsv"):
        if tuple(ex["tokens"]) in held:
            continue
        blocks.append("\n".join(f"{t}\t{g}" for t, g in zip(ex["tokens"], ex["tags"], strict=True)))
    return ("\n\n".join(blocks) + "\n").encode("utf-8")


def _renumber_squad(path: Path, prefix: str) -> bytes:
    """XTREME's TyDiQA-GoldP train files number questions per paragraph ("0", "1", ...), so
    ids repeat; give every question the unique id ``<prefix>-<n>`` in file order."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    n = 0
    for art in doc["data"]:
        for par in art["paragraphs"]:
            for qa in par["qas"]:
                qa["id"] = f"{prefix}-{n}"
                n += 1
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _gather(b: _Builder) -> None:
    src = b.src
    # English intermediate tasks
    b.put("anli", "en", "dev", "anli_jsonl", _anli_jsonl(src), "anli_dev_r1r2r3.jsonl")
    b.notes("anli", "anli/SOURCE.txt", "anli/LICENSE")
    b.copy("siqa", "en", "dev", "siqa_jsonl", "siqa/socialIQa_v1.4_dev.jsonl")
    b.copy("siqa", "en", "tst", "siqa_jsonl", "siqa/socialIQa_v1.4_tst.jsonl")
    b.notes("siqa", "siqa/SOURCE.txt", "siqa/LICENCE-CC-BY-4.txt")
    b.copy("cosmosqa", "en", "dev", "cosmosqa_csv", "cosmosqa/valid.csv")
    b.notes("cosmosqa", "cosmosqa/SOURCE.txt")
    b.copy("commonsenseqa", "en", "dev", "commonsenseqa_jsonl", "commonsenseqa/dev_rand_split.jsonl")
    b.notes("commonsenseqa", "commonsenseqa/SOURCE.txt")
    b.copy("mrpc", "en", "train", "mrpc_tsv", "mrpc/msr_paraphrase_train.txt")
    b.copy("mrpc", "en", "test", "mrpc_tsv", "mrpc/msr_paraphrase_test.txt")
    b.notes("mrpc", "mrpc/SOURCE.txt")
    b.copy("hellaswag", "en", "dev", "hellaswag_txt", "hellaswag/hellaswag_val_full.txt.bz2")
    b.notes("hellaswag", "hellaswag/SOURCE.txt", "hellaswag/LICENSE_klosax_MIT.txt")
    # COPA / XCOPA (English COPA test-en has hidden labels: not bundled)
    b.copy("copa", "en", "train", "copa_jsonl", "copa_en/train-en.jsonl")
    b.copy("copa", "en", "val", "copa_jsonl", "copa_en/val-en.jsonl")
    b.notes("copa", "copa_en/SOURCE.txt")
    for d in sorted((src / "xcopa/data").iterdir()):
        lang = normalize(d.name)
        for orig in ("val", "test"):
            b.copy("xcopa", lang, orig, "xcopa_jsonl", f"xcopa/data/{d.name}/{orig}.{d.name}.jsonl")
    b.notes("xcopa", "xcopa/SOURCE.txt", "xcopa/LICENSE.md")
    # XNLI, PAWS-X
    for ds, fmt in (("xnli", "xnli_tsv"), ("pawsx", "pawsx_tsv")):
        for f in sorted((src / ds).glob("dev-*.tsv")):
            b.copy(ds, normalize(f.stem.split("-")[1]), "dev", fmt, f"{ds}/{f.name}")
        b.notes(ds, f"{ds}/SOURCE.txt")
    # UD POS: raw CoNLL-U where bundled treebanks exist, else XTREME's UD 2.5 dev tsv
    for lang, tb in UD_TREEBANKS.items():
        for f in sorted((src / "ud" / tb).glob("*.conllu")):
            orig = f.stem.rsplit("-", 1)[1]
            b.copy("udpos", lang, orig, "conllu", f"ud/{tb}/{f.name}")
        b.notes("udpos", f"ud/{tb}/LICENSE.txt", rename={f"ud/{tb}/LICENSE.txt": f"LICENSE_{tb}.txt"})
    b.put("udpos", "en", "train", "udpos_tsv", _udpos_en_train(src), "train-en.tsv")
    for f in sorted((src / "udpos_xtreme").glob("dev-*.tsv")):
        lang = normalize(f.stem.split("-")[1])
        if lang not in UD_TREEBANKS:
            b.copy("udpos", lang, "dev", "udpos_tsv", f"udpos_xtreme/{f.name}")
    b.notes("udpos", "ud/SOURCE.txt", "udpos_xtreme/SOURCE.txt",
            rename={"udpos_xtreme/SOURCE.txt": "SOURCE_udpos_xtreme.txt"})
    # NER
    for code in MASAKHA:
        for orig in ("dev", "test"):
            b.copy("masakhaner", normalize(code), orig, "conll_ner", f"masakhaner/v1/{code}/{orig}.txt")
    b.notes("masakhaner", "masakhaner/SOURCE.txt", "masakhaner/README_v1.md", "masakhaner/LICENSE_code_apache2.txt")
    for orig in ("train", "dev", "test"):
        b.copy("conll03", "en", orig, "conll_ner", f"masakhaner/conll2003_en/{orig}.txt")
    b.notes("conll03", "masakhaner/SOURCE.txt")
    for d in sorted((src / "masakhaner/panx_small").iterdir()):
        for orig in ("train", "dev", "test"):
            b.copy("panx", normalize(d.name), orig, "conll_ner", f"masakhaner/panx_small/{d.name}/{orig}.txt")
    for orig in ("train", "dev", "test"):
        b.copy("panx", "af", orig, "panx_tsv", f"panx_af/{orig}-af.tsv")
    b.notes("panx", "masakhaner/SOURCE.txt", "panx_af/SOURCE.txt",
            rename={"panx_af/SOURCE.txt": "SOURCE_af.txt"})
    # QA
    for f in sorted((src / "xquad").glob("xquad.*.json")):
        b.copy("xquad", normalize(f.name.split(".")[1]), "dev", "squad_json", f"xquad/{f.name}")
    b.notes("xquad", "xquad/SOURCE.txt", "xquad/CC-BY-SA4.0.txt")
    for f in sorted((src / "mlqa/dev").glob("dev-context-*.json")):
        b.copy("mlqa", normalize(f.name.split("-")[2]), "dev", "squad_json", f"mlqa/dev/{f.name}")
    b.notes("mlqa", "mlqa/SOURCE.txt", "mlqa/LICENSE")
    for f in sorted((src / "tydiqa_goldp/dev").glob("*.json")):
        b.copy("tydiqa", normalize(f.name.split(".")[2]), "dev", "squad_json", f"tydiqa_goldp/dev/{f.name}")
    for f in sorted((src / "tydiqa_goldp/train").glob("*.json")):
        lang = normalize(f.name.split(".")[2])
        b.put("tydiqa", lang, "train", "squad_json", _renumber_squad(f, f"{lang}-train"), f.name)
    b.notes("tydiqa", "tydiqa_goldp/SOURCE.txt")
    # Retrieval
    for f in sorted((src / "tatoeba").glob("tatoeba.*-eng.eng")):
        code = f.name.split(".")[1].split("-")[0]
        lang = normalize(code)
        a = b.put("tatoeba", lang, "test", "tatoeba_pair", (src / f"tatoeba/tatoeba.{code}-eng.{code}").read_bytes(),
                  f"tatoeba.{code}-eng.{code}")
        t = b.put("tatoeba", lang, "test", "tatoeba_pair", f.read_bytes(), f.name)
        b.files["tatoeba"][lang]["test"] = {"path": [a, t], "fmt": "tatoeba_pair"}
    b.notes("tatoeba", "tatoeba/SOURCE.txt", "tatoeba/README.md")
    for part in ("zh", "en", "gold"):
        fmt = "bucc_gold" if part == "gold" else "bucc_sentences"
        b.copy("bucc", "zh", part, fmt, f"bucc2018/zh-en.dev.{part}")
    b.files["bucc"]["zh"] = {"source": b.files["bucc"]["zh"]["zh"], "target": b.files["bucc"]["zh"]["en"],
                             "gold": b.files["bucc"]["zh"]["gold"]}
    b.notes("bucc", "bucc2018/SOURCE.txt")


_RULES = """\
## Split rules

All hashing is `sha256("<dataset>:<key>")`, first 8 bytes as an integer, mod 100 (see
`adaptertx/data/splits.py`); ids of row formats without ids are `<released split>-<row>`.

* **anli, cosmosqa, commonsenseqa, hellaswag** (only a labelled dev release is bundled): key =
  example id; bucket < 80 → train, 80–89 → validation, ≥ 90 → test.
* **mrpc**: official test → test; official train → train (bucket < 90) / validation (≥ 90).
* **siqa**: the labelled `tst` file → test; dev → train (< 90) / validation (≥ 90).
* **copa** (English): XTREME-R's `test-en` has hidden labels (all 0) and is not bundled;
  `val-en` (100) → test; `train-en` (400) → train (< 90) / validation (≥ 90). `val-en` holds
  the English originals of XCOPA's validation items and XCOPA's test items are COPA's test
  set, so training on copa/en/train never sees an XCOPA item.
* **xcopa**: released val → validation, test → test. Question = the English template
  ("What was the cause?" / "What happened as a result?") in every language.
* **xnli, pawsx, xquad** (translations of the same English items; leakage rule): key = the
  item (xnli: `dev-<row>`, the same row in every language; pawsx: the group of rows whose
  English pairs share a sentence, since PAWS reuses sentences across pairs; xquad: the article
  title, so articles stay whole). bucket < 30 → **English train only** (these items appear in no
  other language's splits), 30–39 → validation, ≥ 40 → test, in every language. Every
  language's test holds exactly the same items, none of which is in English train.
* **mlqa**: the English dev set is offered whole as `train` (an English QA source for
  XQuAD/TyDiQA); other languages' dev sets → validation. Their questions are translations
  of MLQA-en items, so do not evaluate on mlqa after training on mlqa/en/train.
* **tydiqa**: GoldP dev → test (as XTREME does); train (en, ko, sw) → train. XTREME's
  train files repeat question ids (numbered per paragraph); the bundled copies renumber
  them `<lang>-train-<n>` in file order, nothing else changed.
* **udpos**: splits as released (dev → validation). af, eu, en, mr, ta, te, yo come from
  current UD CoNLL-U treebanks (UPOS; multiword ranges and empty nodes skipped); the other
  languages have XTREME's UD 2.5 dev set as validation. English train = XTREME's English
  UD 2.5 dev (EWT, GUM, LinES, ParTUT) minus every sentence also in EWT dev/test.
* **masakhaner**: dev → validation, test → test. **conll03**, **panx**: train/dev/test as
  released.
* **tatoeba**: test only, line-aligned pairs in file order. **bucc**: the zh-en gold pairs
  as test; `load_bucc("zh")` gives the full mining pools.
"""


def _readme(manifest: dict) -> str:
    rows = ["| dataset | task | languages | splits (examples) | license |", "| --- | --- | --- | --- | --- |"]
    for ds, info in manifest["datasets"].items():
        counts = info["counts"]
        langs = sorted(counts)
        totals: Counter = Counter()
        for s in counts.values():
            totals.update(s)
        split_txt = ", ".join(f"{k} {totals[k]}" for k in ("train", "validation", "test") if k in totals)
        if len(langs) == 1:
            lang_txt = langs[0]
        else:
            lang_txt = f"{len(langs)}: " + " ".join(langs) if len(langs) <= 36 else f"{len(langs)} (see manifest.json)"
            split_txt += " (all languages)"
        rows.append(f"| {ds} | {info['family']} | {lang_txt} | {split_txt} | {info['license']} |")
    per_lang = ["| dataset | language | train | validation | test |", "| --- | --- | --- | --- | --- |"]
    for ds, info in manifest["datasets"].items():
        if ds == "tatoeba":
            continue
        for lang, s in sorted(info["counts"].items()):
            per_lang.append(f"| {ds} | {lang} ({lang_name(lang)}) | {s.get('train', '')} | "
                            f"{s.get('validation', '')} | {s.get('test', '')} |")
    return (
        "# Bundled data\n\n"
        "Generated by `python -m adaptertx.data.build --src <data>`; do not edit by hand.\n"
        "Each folder keeps the dataset's SOURCE note (repository, commit, license) and license\n"
        "files. Files are xz-compressed in their release format and read with\n"
        "`adaptertx.data.read_file` formats. Counts are examples (sentences for tagging, pairs\n"
        "for retrieval, questions for QA). Tatoeba: per-language counts in manifest.json.\n\n"
        + "\n".join(rows) + "\n\n" + _RULES + "\n## Per language\n\n" + "\n".join(per_lang) + "\n"
    )


def build(src: Path, out: Path) -> dict:
    """Write the bundled folder ``out`` from the shared data folder ``src``; return the manifest."""
    if not (src / "xnli").is_dir():
        raise AdaptertxError(f"{src} does not look like the shared data folder (no xnli/ inside)")
    with atomic_dir(out) as tmp:
        b = _Builder(src, tmp)
        _gather(b)
        # The files first: building PAWS-X's splits reads the English files through the manifest.
        files_only = {"format": 1, "datasets": {ds: {"files": b.files[ds]} for ds in FAMILIES}}
        (tmp / "manifest.json").write_text(json.dumps(files_only, ensure_ascii=False), encoding="utf-8")
        manifest: dict = {"format": 1, "datasets": {}}
        for ds in FAMILIES:
            files = b.files[ds]
            counts = {}
            for lang in sorted(files):
                built = build_splits(ds, lang, tmp, files[lang])
                counts[lang] = {s: len(v) for s, v in built.items()}
            manifest["datasets"][ds] = {
                "family": FAMILIES[ds], "license": LICENSES[ds],
                "files": {lang: files[lang] for lang in sorted(files)}, "counts": counts,
            }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(manifest), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, type=Path, help="the shared data folder")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("bundled"), help="bundled folder to write")
    args = p.parse_args(argv)
    try:
        manifest = build(args.src, args.out)
    except AdaptertxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(sum(s.values()) for d in manifest["datasets"].values() for s in d["counts"].values())
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out}: {len(manifest['datasets'])} datasets, {n} examples, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
