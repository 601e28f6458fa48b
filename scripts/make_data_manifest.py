"""Regenerate src/xlsteer/data/sources.json from a verified data folder (its SHA256SUMS and file sizes).

The manifest is what ``xlsteer data fetch`` downloads and verifies: for every file of the data
dir layout, the upstream repository, pinned commit and path (as listed in the data folder's
README), plus the SHA256 and size of the file as it must end up on disk. Run it only when the
data set itself changes:

    python scripts/make_data_manifest.py ../shared/data
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MGSM = ("google-research/url-nlp", "452a21ad3dae5668c06ceeac21ff073e1e40f9be")
XCOPA = ("cambridgeltl/xcopa", "e2e9d7f105a758ee869cd13e0fe251ef93a29840")
XQUAD = ("google-deepmind/xquad", "7d30520c717524000f0d9d2f9c10a069acd9d285")
NTREX = ("MicrosoftTranslator/NTREX", "8561f6a622db9edad1217683e5c83daefd8bb2bf")
XNLI_DATA = ("wuhjie/few_shots_that_matters_wu", "6bfe6324e428ec21a777b5543cd8e50ec82dcb3c")
XNLI_META = ("facebookresearch/XNLI", "9624695001060244cf8d5d893b5236093a21a42c")
LCB = ("for-ai/language-confusion", "0cfdbb4a64502648938c456b2fa9689968f22298")
#: Dataset folders that keep their own SHA256SUMS (paths relative to the folder).
NESTED = ("lcb",)
#: The shared folder's unpacked copy of test_sets.zip: xlsteer reads the archive (the upstream
#: file); the copy's files equal the archive's members (tests/test_fetch.py checks it).
SKIP_PREFIXES = ("lcb/test_sets/",)

DATASETS = {
    "mgsm": {"title": "MGSM", "license": "CC BY 4.0", "non_commercial": False,
             "terms": "credit the source (Shi et al. 2022)"},
    "xcopa": {"title": "XCOPA (incl. data-gmt)", "license": "CC BY 4.0", "non_commercial": False,
              "terms": "credit the source; also cite COPA (Roemmele et al. 2011)"},
    "xquad": {"title": "XQuAD", "license": "CC BY-SA 4.0", "non_commercial": False,
              "terms": "share-alike: modified copies must stay CC BY-SA 4.0 and credit the source"},
    "ntrex128": {"title": "NTREX-128", "license": "CC BY-SA 4.0", "non_commercial": False,
                 "terms": "share-alike: modified copies must stay CC BY-SA 4.0 and credit the source"},
    "xnli": {"title": "XNLI dev (XTREME copy)", "license": "CC BY-NC 4.0", "non_commercial": True,
             "terms": "NON-COMMERCIAL use only; keep it out of commercially distributed artifacts"},
    "lcb": {"title": "LCB (Language Confusion Benchmark)",
            "license": "Apache-2.0 repository; prompts from Aya, Dolly, Okapi (CC BY-NC 4.0) and ShareGPT (terms unclear)",
            "non_commercial": True,
            "terms": "research use only: the Okapi-derived prompts are non-commercial and ShareGPT's terms are "
                     "unclear; keep them out of commercially distributed artifacts"},
}


def upstream(rel: str) -> tuple[tuple[str, str], str, str | None]:
    """(repo, commit), upstream path, conversion for one file of the data dir layout."""
    folder, name = rel.split("/", 1)
    if folder == "mgsm":
        if name == "mgsm_exemplars.json":
            return MGSM, "mgsm/exemplars.py", "python-literals-to-json"
        return MGSM, {"LICENSE": "LICENSE", "README.upstream.md": "mgsm/README.md"}.get(name, f"mgsm/{name}"), None
    if folder == "xcopa":
        return XCOPA, {"README.upstream.md": "README.md"}.get(name, name), None
    if folder == "xquad":
        return XQUAD, {"README.upstream.md": "README.md"}.get(name, name), None
    if folder == "ntrex128":
        if re.fullmatch(r"newstest2019-.*\.txt", name):
            return NTREX, f"NTREX-128/{name}", None
        return NTREX, {"README.upstream.md": "README.md"}.get(name, name), None
    if folder == "xnli":
        if name in ("LICENSE", "README.upstream.md"):
            return XNLI_META, "README.md" if name == "README.upstream.md" else name, None
        return XNLI_DATA, f"data/xnli/{name}", None
    if folder == "lcb":
        if name == "few_shot_examples.json":
            return LCB, "few_shot_prompting.py", "python-literals-to-json"
        return LCB, {"README.upstream.md": "README.md", "requirements.upstream.txt": "requirements.txt"}.get(name, name), None
    raise SystemExit(f"no upstream rule for {rel}")


def listed(root: Path) -> list[tuple[str, str]]:
    """(sha256, path) of the data folder's SHA256SUMS, then of each nested list (paths prefixed)."""
    out = []
    for prefix, sums in [("", root / "SHA256SUMS"), *((f"{d}/", root / d / "SHA256SUMS") for d in NESTED)]:
        for line in sums.read_text(encoding="utf-8").splitlines():
            sha, rel = line.split(None, 1)
            rel = prefix + rel.removeprefix("./")
            if not rel.startswith(SKIP_PREFIXES):
                out.append((sha, rel))
    return out


def main(data_dir: str) -> None:
    root = Path(data_dir)
    files = []
    for sha, rel in listed(root):
        (repo, commit), path, convert = upstream(rel)
        entry = {"path": rel, "dataset": rel.split("/", 1)[0], "repo": repo, "commit": commit,
                 "upstream": path, "sha256": sha, "size": (root / rel).stat().st_size}
        if convert:
            entry["convert"] = convert
        files.append(entry)
    out = Path(__file__).resolve().parents[1] / "src/xlsteer/data/sources.json"
    doc = {"format": 1, "base_url": "https://raw.githubusercontent.com", "datasets": DATASETS, "files": files}
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(files)} files")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
