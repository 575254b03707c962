"""Fetch the public originals of the data directory and verify them (the target of `make data`).

    python scripts/download_data.py [--data-dir DIR] [--workers 16] [--keep-raw] [--mirror URL]
    python scripts/download_data.py --list-optional
    python scripts/download_data.py --optional azure_llm_2024      (also fetch the week-long Azure 2024 traces)

Skips files already present and verified; never overwrites a file whose sha256 differs (it says so and exits 1).
Optional sets (OPTIONAL below) are fetched only when named with --optional.
An interrupted download leaves `<file>.part`, which the next run resumes. The manifest (origins, commits, sha256,
licences) is common/datasets.py; --data-dir wins over $LOADWISE_DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from common.datapaths import ENV_VAR, locate_data_dir  # noqa: E402
from common.datasets import GITHUB_RAW, MANIFEST, SMARTMOE, download, sha256_file, sync  # noqa: E402


class OptionalFile(NamedTuple):
    """A public file worth having for some experiments but too large to fetch by default. (A NamedTuple, not a
    dataclass: tests load this script by path, without a sys.modules entry, which dataclasses need.)"""

    path: str  # relative to the data directory
    url: str  # where upstream publishes it
    licence: str
    note: str = ""


# The Azure LLM inference traces of 10-19 May 2024 (DynamoLLM; a week each, for day-scale patterns a one-hour 2023
# trace cannot show), as listed in Azure/AzurePublicDataset's AzureLLMInferenceDataset2024Links.txt. Same CSV columns
# as the 2023 traces (TIMESTAMP, ContextTokens, GeneratedTokens). Upstream publishes no checksum, so they are not
# pinned: the script prints each file's sha256 once it is here.
_AZURE_2024 = "https://azurepublicdatasettraces.blob.core.windows.net/azurellminfererencetrace"
_AZURE_2024_NOTE = ("cite Stojkovic et al., DynamoLLM, arXiv 2408.00741; upstream is moving its blob files to GitHub "
                    "release assets of Azure/AzurePublicDataset: if the URL fails, fetch the file from there by hand")
OPTIONAL: dict[str, tuple[OptionalFile, ...]] = {
    "azure_llm_2024": tuple(
        OptionalFile(f"azure_llm_inference_2024/AzureLLMInferenceTrace_{kind}_1week.csv",
                     f"{_AZURE_2024}/AzureLLMInferenceTrace_{kind}_1week.csv", "CC-BY-4.0", _AZURE_2024_NOTE)
        for kind in ("code", "conv")
    ),
}


def list_optional(optional: dict[str, tuple[OptionalFile, ...]]) -> None:
    for name, files in optional.items():
        print(f"{name}: (fetch with --optional {name})")
        for f in files:
            print(f"  {f.path}\n    from {f.url}\n    licence {f.licence}; {f.note}")


def fetch_optional(data_dir: Path, files: tuple[OptionalFile, ...], log=print) -> list[str]:
    """Fetch each file not yet in `data_dir` (resuming a `.part`); one problem line per file that failed."""
    problems = []
    for f in files:
        dest = data_dir / f.path
        if not dest.is_file():
            log(f"fetching {f.url} -> {dest}")
            try:
                download(f.url, dest)
            except Exception as exc:  # network and HTTP errors of every kind: report them, go on with the others
                problems.append(f"{f.path}: {type(exc).__name__}: {exc}")
                continue
        log(f"{f.path}: present, sha256 {sha256_file(dest)} (not pinned upstream)")
    return problems


def main(argv: list[str] | None = None, env=os.environ, manifest=None, smartmoe=None, optional=None) -> int:
    """`manifest` / `smartmoe` / `optional` replace common.datasets' and OPTIONAL (tests serve small files from a
    local mirror)."""
    optional = OPTIONAL if optional is None else optional
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help=f"target directory (default: ${ENV_VAR}, else ../shared/data, else ./data)")
    ap.add_argument("--workers", type=int, default=16, help="parallel downloads of the SmartMoE raw logs")
    ap.add_argument("--keep-raw", action="store_true", help="keep the 8,016 SmartMoE raw logs after converting")
    ap.add_argument("--mirror", default=GITHUB_RAW, help="base URL serving {repo}/{commit}/{path}")
    ap.add_argument("--optional", action="append", default=[], choices=sorted(optional),
                    help="also fetch this optional set (repeatable; --list-optional shows them)")
    ap.add_argument("--list-optional", action="store_true", help="list the optional sets and exit")
    args = ap.parse_args(argv)
    if args.list_optional:
        list_optional(optional)
        return 0
    data_dir = locate_data_dir(args.data_dir, env)
    print(f"data directory: {data_dir.describe().replace('paths.data_dir', '--data-dir')}")
    problems = sync(
        data_dir.path,
        MANIFEST if manifest is None else manifest,
        SMARTMOE if smartmoe is None else smartmoe,
        base=args.mirror,
        workers=args.workers,
        keep_raw=args.keep_raw,
        log=tqdm.write,
    )
    for name in dict.fromkeys(args.optional):
        problems += fetch_optional(data_dir.path, optional[name], log=tqdm.write)
    if problems:
        print(f"\n{len(problems)} problem(s):", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print("all files present and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
