"""What the train stage's fixed glibc mmap threshold costs per step (docs/benchmarks.md, "Peak memory").

    python docs/scripts/malloc_threshold_speed.py [image size, default 112]

One process, ResNet-18 from scratch, batch 64 of random images, alternating the threshold every
4 steps between 128 KiB (the train stage's) and 32 MiB (where glibc's own rule ends up); the first
step after each switch is not timed. Prints per-step wall and CPU (user + system) seconds, the
medians over 6 rounds.
"""
import ctypes
import resource
import statistics
import sys
import time

import timm
import torch

libc = ctypes.CDLL("libc.so.6")
size = int(sys.argv[1]) if len(sys.argv) > 1 else 112
torch.manual_seed(0)
model = timm.create_model("resnet18", num_classes=10); opt = torch.optim.AdamW(model.parameters())
x, y = torch.randn(64, 3, size, size), torch.randint(0, 10, (64,))
def step():
    torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step(); opt.zero_grad(set_to_none=True)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
for _ in range(2): step()
res = {"128KiB": ([], []), "32MiB": ([], [])}
for rnd in range(6):
    for name, thr in (("128KiB", 128 * 1024), ("32MiB", 32 << 20)):
        libc.mallopt(-3, thr); step()   # one step to settle the heap
        w, c = time.perf_counter(), cpu()
        for _ in range(3): step()
        res[name][0].append((time.perf_counter() - w) / 3); res[name][1].append((cpu() - c) / 3)
for name, (wall, cp) in res.items():
    print(
        f"{name}: wall {statistics.median(wall):.3f} s/step, cpu {statistics.median(cp):.3f} s/step (rounds: "
        f"{[round(v, 2) for v in wall]})"
    )
