"""Run ONNX models on the target interpreter (e.g. an emulated aarch64 python) for parity checks.

Standalone on purpose: it is executed as a script by another interpreter (``py-aarch64
arm_worker.py job.json``) that has only numpy and onnxruntime, not facedistill. The job file lists
models with an input .npy and an output .npy path; the script writes the first model output of
each and prints one JSON line describing the interpreter and what happened.
"""

import json
import os
import platform
import sys
import time


def main(argv):
    if len(argv) != 2:
        print("usage: arm_worker.py JOB.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        job = json.load(f)
    import numpy as np
    import onnxruntime as ort

    info = {"machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers(), "qemu_cpu": os.environ.get("QEMU_CPU"),
            "results": []}
    threads = int(job.get("threads", 1))
    for item in job["jobs"]:
        res = {"model": item["model"], "ok": False}
        try:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            t0 = time.perf_counter()
            sess = ort.InferenceSession(item["model"], so, providers=["CPUExecutionProvider"])
            res["load_s"] = time.perf_counter() - t0
            x = np.load(item["input"])
            t0 = time.perf_counter()
            y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            res["run_s"] = time.perf_counter() - t0
            np.save(item["output"], y)
            res["ok"] = True
        except Exception as e:  # reported to the host, which turns it into a clear failure
            res["error"] = f"{type(e).__name__}: {e}"
        info["results"].append(res)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
