"""Profile one load: py-spy on every Python-backend stub and the gateway, per-process CPU, Triton metrics.

    python bench/profile_stubs.py --repository DIR [--load S32] [--seconds 20] [--path gateway|triton] [--out DIR]

Needs py-spy (`pip install py-spy`; root or ptrace rights). Writes one collapsed-stack file per
process into --out and prints, per process, the functions holding the most samples.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import procstat  # noqa: E402

import bench  # noqa: E402


def top_frames(collapsed: Path, n: int = 12) -> list[str]:
    """Inclusive share of samples per function (file:function), highest first."""
    total, counts = 0, collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, k = line.rpartition(" ")
        if not k.isdigit():
            continue
        total += int(k)
        for frame in set(f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0] for f in stack.split(";")):
            counts[frame] += int(k)
    return [f"  {100 * c / total:5.1f}%  {f}" for f, c in counts.most_common(n)] if total else ["  (no samples)"]


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    cmd = [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
           "--duration", str(int(seconds)), "--rate", "200", "--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--load", default="S32", choices=[ld.name for ld in bench.LOADS])
    p.add_argument("--path", default="gateway", choices=["gateway", "triton"])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="profile-")))
    args = p.parse_args()
    load = next(ld for ld in bench.LOADS if ld.name == args.load)
    args.out.mkdir(parents=True, exist_ok=True)
    files = (args.out / "short.txt", args.out / "long.txt")
    short, long = bench.make_texts()
    files[0].write_text("\n".join(short) + "\n")
    files[1].write_text("\n".join(long) + "\n")
    stack = bench.start_stack([args.repository], args.out, bench.default_source(), reference=False)
    try:
        groups = stack.pids()
        url, api, model = bench.path_target(stack, args.path, bench.MODEL, None)
        bench.wrk(url, api, model, load, 3, "warm", files, groups, None)
        pids = {**procstat.stub_pids(stack.triton.process.pid), "gateway": stack.procs[0].pid}
        spies = {name: record(pid, args.seconds, args.out / f"{name}.txt") for name, pid in pids.items()}
        result: list = []
        worker = threading.Thread(target=lambda: result.append(bench.wrk(
            url, api, model, load, args.seconds, "prof", files, groups, stack.triton.metrics_url)))
        worker.start()
        worker.join()
        for spy in spies.values():
            spy.wait()
    finally:
        bench.stop_stack(stack)
    run = result[0]
    print(f"{args.load} via {args.path}: {run.texts_per_s:.1f} texts/s, errors {run.errors}")
    print("cores used: " + " ".join(f"{k} {v:.2f}" for k, v in run.cores.items()))
    for line in bench.triton_table([{(load.name, args.path): run}],
                                   bench.Plan([load], [args.path], args.seconds, 1, {})):
        print(line)
    for name in pids:
        print(f"\n{name} (py-spy, inclusive share of samples):")
        print("\n".join(top_frames(args.out / f"{name}.txt")))
    print(f"\ncollapsed stacks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
