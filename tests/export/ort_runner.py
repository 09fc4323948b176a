"""Run ONNX models with whatever onnxruntime this Python has; used from a venv pinned to another version.

    python ort_runner.py WORK_DIR   # for each WORK_DIR/NAME.onnx-path file: NAME.in.npz in, NAME.out.npz out

Only numpy and onnxruntime: it must import in the bare ORT 1.19 venv. Prints the version it ran.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(work: Path) -> None:
    jobs = json.loads((work / "jobs.json").read_text())
    for name, model in jobs.items():
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        feeds = dict(np.load(work / f"{name}.in.npz"))
        outputs = session.run(None, feeds)
        names = [o.name for o in session.get_outputs()]
        np.savez(work / f"{name}.out.npz", **dict(zip(names, outputs)))
    print(ort.__version__)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
