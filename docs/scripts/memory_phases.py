"""Peak resident memory of one training fold, per phase of the train stage (docs/benchmarks.md, "Peak memory").

    PYTHONPATH=. python docs/scripts/memory_phases.py <competition yaml> <model> [key=value ...]

A thread samples VmRSS every 2 ms; the stage's functions are wrapped so each sample is
charged to the phase running (imports, opening the image stores, each training epoch,
validation, saving the state, prediction with TTA). Trains fold 0 with --force.
"""

import resource
import sys
import threading
import time


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


phase, peaks = ["import torch+timm"], {}


def sample() -> None:
    while True:
        peaks[phase[0]] = max(peaks.get(phase[0], 0.0), rss_mb())
        time.sleep(0.002)


def enter(name: str) -> None:
    time.sleep(0.01)
    phase[0] = name
    time.sleep(0.01)


threading.Thread(target=sample, daemon=True).start()
import timm  # noqa: E402,F401
import torch  # noqa: E402,F401

enter("import the pipeline, load the data")
import pipeline.train.checkpoint as checkpoint  # noqa: E402
import pipeline.train.loop as loop  # noqa: E402
import pipeline.train.stage as stage  # noqa: E402
from pipeline.cli import main  # noqa: E402


def charged(module, name: str, label: str) -> None:
    function = getattr(module, name)

    def wrapper(*args, **kwargs):
        enter(label)
        try:
            return function(*args, **kwargs)
        finally:
            enter(f"after {label}")

    setattr(module, name, wrapper)


for module, name, label in (
    (stage, "open_stores", "open the image stores"),
    (loop, "train_one_epoch", "train an epoch"),
    (loop, "evaluate", "validate"),
    (checkpoint, "save_state", "save the state"),
    (loop, "predict_fold", "predict with TTA"),
    (stage, "assemble_run", "assemble the run"),
):
    charged(module, name, label)
code = main(["train", "--config", sys.argv[1], "--model", sys.argv[2], "--folds", "0", "--force", *sys.argv[3:]])
enter("end")
time.sleep(0.05)
print("peak RSS per phase (MB):")
for name, peak in peaks.items():
    print(f"  {name:36s} {peak:7.0f}")
print(
    f"process peak (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
    f"loaded: {[m for m in ('sklearn', 'albumentations', 'cv2', 'pandas') if m in sys.modules]}"
)
sys.exit(code)
