"""What ptxas made of the sm90 attention kernel's K-tile loop, without a GPU.

    python3 bench/sass_loops.py                    # every INT8/FP8 instance, permuted K order
    python3 bench/sass_loops.py --filter "128, \\(sage::sm90::KOrder\\)0, 3>, false"   # one family

Compiles csrc/sm90/attn_sm90.cu for sm_90a with the library's own flags, disassembles it with
`cuobjdump -sass` (the `nvidia-cuda-cuobjdump` wheel carries one: `pip download --no-deps
nvidia-cuda-cuobjdump`, unzip, put its bin/ on PATH) and, for each kernel instance, prints the loops that
run one K tile per iteration (a backward branch over one tile's exp2s: 66 MUFU per thread), under a
line naming the instance's flags with the local-memory accesses (LDL/STL) of the whole kernel. For each
loop: its length, the spills inside it, and the order of the events that decide its speed:

    Q = the QK wgmmas, P = the P.V wgmmas, W1 / W0 = wgmma waits (wait_group 1 / 0), S = the row-max
    shuffles, E = the first and last exp2 (MUFU.EX2), B = a branch (a masked / unmasked split).

ptxas, not the source order, places the waits: it puts a wgmma wait at the top of its basic block, so
`Q P W1 W0 S E..E` means P.V(n-1) is waited for before the softmax starts. bench/NOTES.md (fourth
session) has what each placement measured on the H100; a change to kernel.cuh that moves these events is
worth checking here before spending device time on it.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sage_cli.kernels import builder  # noqa: E402

_INSTR = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_TARGET = re.compile(r"BRA\s.*?0x([0-9a-f]+)\s*$")
_INSTANCE = re.compile(r"Sm90AttnTraits<(?:\(int\))?(\d+), \(sage::sm90::KOrder\)(\d), (?:\(int\))?(\d)>((?:, (?:\(bool\))?\w+)+)>")
_FLAGS = ("causal", "ds", "narrow", "v_smem")  # sm90_attn_kernel's bool parameters, in order


def disassemble(out_dir: Path, root: Path | None = None) -> str:
    """SASS of the sm_90a attention translation unit of `root` (default: the library's csrc/), demangled."""
    for tool in ("cuobjdump", "c++filt"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH (see this script's docstring)")
    root = root or builder.csrc_dir()
    src = root / "sm90" / "attn_sm90.cu"
    cubin = out_dir / "attn_sm90.cubin"
    nvcc = builder.find_nvcc()
    subprocess.run([str(nvcc), *builder.flags("90a", root), "-cubin", str(src), "-o", str(cubin)], check=True)
    sass = subprocess.run(["cuobjdump", "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    return subprocess.run(["c++filt"], input=sass, check=True, capture_output=True, text=True).stdout


def instances(sass: str):
    """(name, [(address, instruction)]) per kernel function."""
    for block in re.split(r"\n\s+Function : ", sass)[1:]:
        name = block.split("\n", 1)[0].strip()
        ins = [(int(m.group(1), 16), m.group(2)) for m in map(_INSTR.match, block.split("\n")) if m]
        yield name, ins


def tile_loops(ins):
    """Loops over one K tile: a conditional backward branch whose body holds one tile's exp2s (64 + 2 per
    thread, twice where a masked and an unmasked path share the loop). The mbarrier retry stubs at the end
    of the function jump back unconditionally and are not loops of their own."""
    index = {a: i for i, (a, _) in enumerate(ins)}
    for i, (addr, text) in enumerate(ins):
        m = _TARGET.search(text)
        if not m or not text.startswith("@") or int(m.group(1), 16) >= addr or int(m.group(1), 16) not in index:
            continue
        body = ins[index[int(m.group(1), 16)] : i + 1]
        mufu = sum("MUFU.EX2" in t for _, t in body)
        if 60 <= mufu <= 140:
            yield body


def events(body) -> str:
    out, last = [], None
    for _, text in body:
        op = re.sub(r"^@!?U?P\w+\s+", "", text)
        tag = None
        if op.startswith("IGMMA"):
            tag = "Q"
        elif op.startswith("QGMMA"):
            tag = "P"
        elif op.startswith("WARPGROUP.DEPBAR"):
            tag = "W" + op.rsplit(",", 1)[-1].strip()[-1]
        elif op.startswith("SHFL"):
            tag = "S"
        elif op.startswith("MUFU.EX2"):
            tag = "E"
        elif op.startswith("BRA") and "@" in text:
            tag = "B"
        if tag and tag != last:
            out.append(tag)
        last = tag or last
    return " ".join(out)


def label(name: str) -> str:
    """'D=128 consumers=3 causal=false ...' for an attention kernel instance, else the name's start."""
    m = _INSTANCE.search(name)
    if not m:
        return name[:80]
    flags = [f.replace("(bool)", "").strip() for f in m.group(4).split(",")[1:]]
    return (f"D={m.group(1)} order={m.group(2)} consumers={m.group(3)} "
            + " ".join(f"{k}={v}" for k, v in zip(_FLAGS, flags)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default=r"KOrder\)0,", help="regex on the demangled kernel name")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sass = disassemble(Path(tmp))
    for name, ins in instances(sass):
        if "sm90_attn_kernel" not in name or not re.search(args.filter, name):
            continue
        spills = sum(("LDL" in t or "STL" in t) for _, t in ins)
        print(f"{label(name)}  (LDL/STL in the whole kernel: {spills})")
        for body in tile_loops(ins):
            count = lambda s: sum(s in t for _, t in body)  # noqa: E731
            print(f"  loop {body[0][0]:#x}-{body[-1][0]:#x}: {len(body)} instructions, LDL {count('LDL')}, "
                  f"STL {count('STL')}, MUFU {count('MUFU.EX2')}\n    {events(body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
