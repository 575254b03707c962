"""Fetch the public originals of the data directory and verify them (the target of `make data`).

    python scripts/download_data.py [--data-dir DIR] [--workers 16] [--keep-raw] [--mirror URL]

Skips files already present and verified; never overwrites a file whose sha256 differs (it says so and exits 1).
The manifest (origins, commits, sha256, licences) is common/datasets.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from common.datapaths import ENV_VAR, resolve_data_dir  # noqa: E402
from common.datasets import GITHUB_RAW, sync  # noqa: E402


def main(argv: list[str] | None = None, env=os.environ) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help=f"target directory (default: ${ENV_VAR}, else ../shared/data, else ./data)")
    ap.add_argument("--workers", type=int, default=16, help="parallel downloads of the SmartMoE raw logs")
    ap.add_argument("--keep-raw", action="store_true", help="keep the 8,016 SmartMoE raw logs after converting")
    ap.add_argument("--mirror", default=GITHUB_RAW, help="base URL serving {repo}/{commit}/{path}")
    args = ap.parse_args(argv)
    data_dir = Path(args.data_dir) if args.data_dir else resolve_data_dir(None, env)
    print(f"data directory: {data_dir}")
    problems = sync(data_dir, base=args.mirror, workers=args.workers, keep_raw=args.keep_raw)
    if problems:
        print(f"\n{len(problems)} problem(s):", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print("all files present and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
