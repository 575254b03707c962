"""Fetch the public originals of the data directory and verify them (the target of `make data`).

    python scripts/download_data.py [--data-dir DIR] [--workers 16] [--keep-raw] [--mirror URL]

Skips files already present and verified; never overwrites a file whose sha256 differs (it says so and exits 1).
An interrupted download leaves `<file>.part`, which the next run resumes. The manifest (origins, commits, sha256,
licences) is common/datasets.py; --data-dir wins over $LOADWISE_DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from common.datapaths import ENV_VAR, locate_data_dir  # noqa: E402
from common.datasets import GITHUB_RAW, MANIFEST, SMARTMOE, sync  # noqa: E402


def main(argv: list[str] | None = None, env=os.environ, manifest=None, smartmoe=None) -> int:
    """`manifest` / `smartmoe` replace common.datasets' (tests serve small files from a local mirror)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help=f"target directory (default: ${ENV_VAR}, else ../shared/data, else ./data)")
    ap.add_argument("--workers", type=int, default=16, help="parallel downloads of the SmartMoE raw logs")
    ap.add_argument("--keep-raw", action="store_true", help="keep the 8,016 SmartMoE raw logs after converting")
    ap.add_argument("--mirror", default=GITHUB_RAW, help="base URL serving {repo}/{commit}/{path}")
    args = ap.parse_args(argv)
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
    if problems:
        print(f"\n{len(problems)} problem(s):", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print("all files present and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
