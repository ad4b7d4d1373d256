"""`python -m dspark_sglang.models {path,convert} [--what target] [--cache-dir DIR]`.

`path` prints the cached model's directory (converting it first if needed, so the printed path always
exists); `convert` does the same and says whether it converted. `--what drafter` prints the
default DSpark drafter shipped in the package.
"""
from __future__ import annotations

import argparse
import sys
import time

from dspark_sglang.models.default_drafter import default_drafter_path
from dspark_sglang.models.smollm2 import CONVERTED_NAME, smollm2_path

WHATS = ("target", "drafter")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dspark_sglang.models", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("path", "convert"))
    parser.add_argument("--what", choices=WHATS, default="target", help="which model (default: target)")
    parser.add_argument("--cache-dir", default=None, help="default: $DSPARK_CACHE_DIR or ~/.cache/dspark_sglang")
    args = parser.parse_args(argv)
    if args.what == "drafter":
        print(default_drafter_path())
        return 0
    start = time.perf_counter()
    path = smollm2_path(args.cache_dir)
    if args.command == "convert":
        print(f"{CONVERTED_NAME}: ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
