# One training step of tf_efficientnet_lite0 (96 px, batch 64, AdamW, label smoothing) on the CPU: memory format x
# bf16 autocast, the four variants alternating in one process (docs/benchmarks.md, "What the step lacked").
#   python docs/scripts/cpu_memory_format.py
import statistics, time, contextlib
import timm, torch
torch.manual_seed(0)
x = torch.randn(64, 3, 96, 96); y = torch.randint(0, 10, (64,))
crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
variants = [(cl, bf) for bf in (False, True) for cl in (False, True)]
state = {}
for cl, bf in variants:
    m = timm.create_model("tf_efficientnet_lite0", num_classes=10, drop_rate=0.2)
    if cl:
        m = m.to(memory_format=torch.channels_last)
    state[(cl, bf)] = (m, torch.optim.AdamW(m.parameters(), lr=5e-4))
times = {v: [] for v in variants}
for i in range(8):
    for v in variants:
        cl, bf = v
        m, opt = state[v]
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf else contextlib.nullcontext()
        t = time.perf_counter()
        with ctx:
            loss = crit(m(xi), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if i >= 2:
            times[v].append(time.perf_counter() - t)
for (cl, bf), ts in times.items():
    print(f"{'channels_last' if cl else 'contiguous':13s} {'bf16 autocast' if bf else 'fp32':13s} "
          f"{64 / statistics.median(ts):6.1f} img/s  steps {[round(t, 2) for t in ts]}")
