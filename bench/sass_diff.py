"""Which sm90 attention kernel instances two versions of csrc/ compile to differently, without a GPU.

    python3 bench/sass_diff.py main .                 # a git revision against the working tree's csrc/
    python3 bench/sass_diff.py path/to/csrc_a path/to/csrc_b

Each side is a csrc/ folder, a checkout holding one, or a git revision of this repository (its csrc/ is
archived to a temporary folder). Both are compiled for sm_90a with the library's flags and disassembled
(`cuobjdump`, as for bench/sass_loops.py), and each kernel function is compared with its addresses and
encodings stripped, so that "identical" means the same instructions in the same order. A refactor that
claims to leave the measured kernels alone is checked here before it is committed (bench/NOTES.md).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_loops import disassemble, instances, label  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def resolve(side: str, tmp: Path) -> Path:
    """A csrc/ folder for `side`: itself, its csrc/ child, or a git revision's csrc/ in `tmp`."""
    path = Path(side)
    for cand in (path, path / "csrc"):
        if (cand / "sage_abi.h").is_file():
            return cand.resolve()
    out = tmp / re.sub(r"[^\w.-]", "_", side)
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", side, "csrc"], capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"{side}: neither a csrc/ folder nor a git revision ({archive.stderr.decode().strip()})")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "csrc"


def functions(sass: str) -> dict[str, list[str]]:
    """Kernel function name -> its instructions in order (sass_loops.instances, addresses dropped)."""
    return {name: [text for _, text in ins] for name, ins in instances(sass)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="csrc/ folder, checkout or git revision")
    ap.add_argument("new", help="csrc/ folder, checkout or git revision")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sides = []
        for i, side in enumerate((args.old, args.new)):
            work = tmp / f"build{i}"
            work.mkdir()
            sides.append(functions(disassemble(work, resolve(side, tmp / "src"))))
    old, new = sides
    same = [n for n in old if new.get(n) == old[n]]
    changed = [n for n in old if n in new and new[n] != old[n]]
    print(f"{len(same)} identical, {len(changed)} differ, {len(set(old) - set(new))} only in {args.old}, "
          f"{len(set(new) - set(old))} only in {args.new}")
    for n in changed:
        print(f"  differs: {label(n)}")
    for n in sorted(set(old) ^ set(new)):
        print(f"  only in {args.old if n in old else args.new}: {label(n)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
