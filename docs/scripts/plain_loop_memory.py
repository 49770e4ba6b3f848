"""The same fold as a plain timm-style loop, for comparison (docs/benchmarks.md, "Peak memory").

    python docs/scripts/plain_loop_memory.py <competition folder> <image size> [fixed]

ResNet-18 from scratch, images decoded and resized per item with PIL, normalised on the host,
batch 64, AdamW, cross-entropy; the training rows of fold "index % 5 != 0", then validation at
batch 64. With ``fixed``, glibc's mmap threshold is fixed first (what the train stage does on the CPU).
"""

import ctypes
import resource
import sys
import threading
import time


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


phase, peaks = ["import torch+timm, build the model"], {}


def sample() -> None:
    while True:
        peaks[phase[0]] = max(peaks.get(phase[0], 0.0), rss_mb())
        time.sleep(0.002)


threading.Thread(target=sample, daemon=True).start()
if len(sys.argv) > 3 and sys.argv[3] == "fixed":
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

folder, size = sys.argv[1], int(sys.argv[2])
train = pd.read_csv(f"{folder}/train.csv")
classes = sorted(train.label.unique())
labels = train.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
paths = [f"{folder}/train/{i}.jpg" for i in train.id]
mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class Images(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        image = np.array(Image.open(paths[row]).convert("RGB").resize((size, size), Image.BICUBIC))
        return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std, int(labels[row])


rows = np.arange(len(paths))
torch.manual_seed(0)
model = timm.create_model("resnet18", num_classes=len(classes))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
time.sleep(0.02)
phase[0] = "train an epoch"
model.train()
for x, y in torch.utils.data.DataLoader(Images(rows[rows % 5 != 0]), batch_size=64, shuffle=True, drop_last=True):
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
time.sleep(0.02)
phase[0] = "validate"
model.eval()
with torch.no_grad():
    for x, _ in torch.utils.data.DataLoader(Images(rows[rows % 5 == 0]), batch_size=64):
        model(x)
time.sleep(0.05)
print("peak RSS per phase (MB):")
for name, peak in peaks.items():
    print(f"  {name:36s} {peak:7.0f}")
print(f"process peak (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
