"""Export benchmark: full-size Gemma 4 E2B and E4B (random bf16 weights, real configs) → int4 model folders.

Prints wall time, peak resident memory of the export process and the bytes of each part of the output.
Targets on the 2-core CPU machine: peak RSS ≤ 4 GiB for both; E2B ≤ 10 min, E4B ≤ 20 min.

    python bench/export_bench.py [--kinds e2b e4b] [--workdir /tmp/webgemma-bench] [--quant int4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.full_size import write_checkpoint  # noqa: E402


# The export runs in its own process, which reports its peak resident set (VmHWM) itself: the parent's
# ru_maxrss for a child also counts the parent's memory the child held between fork and exec.
_CHILD = """
import sys
from webgemma.cli import main
code = main(sys.argv[1:])
print("VmHWM", next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
sys.exit(code)
"""


def run_export(checkpoint: Path, out: Path, quant: str) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of `webgemma export` in its own process."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "export", str(checkpoint), str(out), "--quant", quant],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"export failed:\n{proc.stderr}")
    peak_kib = int(proc.stdout.rsplit("VmHWM", 1)[1])
    return time.perf_counter() - start, peak_kib / 2**20


def parts(model: Path) -> dict[str, int]:
    m = json.loads((model / "manifest.json").read_text())
    return {
        "graph": m["decoder"]["graph"]["bytes"],
        "decoder weights": sum(f["bytes"] for f in m["decoder"]["external_data"]),
        "per-layer table": sum(f["bytes"] for f in m["per_layer_table"]["files"]),
        "tokenizer": m["tokenizer"]["bytes"],
        "files": len(m["decoder"]["external_data"]) + len(m["per_layer_table"]["files"]) + 3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["e2b", "e4b"], choices=["e2b", "e4b"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/webgemma-bench"))
    p.add_argument("--quant", default="int4")
    a = p.parse_args()
    rows = []
    for kind in a.kinds:
        checkpoint = write_checkpoint(kind, a.workdir / f"gemma-4-{kind}-random")
        wall, rss = run_export(checkpoint, a.workdir / f"{kind}-{a.quant}", a.quant)
        rows.append((kind, wall, rss, parts(a.workdir / f"{kind}-{a.quant}")))
    print(f"\n{'model':6} {'wall':>8} {'peak RSS':>9} {'graph':>9} {'decoder':>10} {'table':>10} {'tokenizer':>10} {'files':>6}")
    for kind, wall, rss, b in rows:
        print(f"{kind:6} {wall / 60:7.1f}m {rss:8.2f}G {b['graph'] / 2**20:8.1f}M {b['decoder weights'] / 2**30:9.2f}G "
              f"{b['per-layer table'] / 2**30:9.2f}G {b['tokenizer'] / 2**10:9.1f}K {b['files']:6}")


if __name__ == "__main__":
    main()
