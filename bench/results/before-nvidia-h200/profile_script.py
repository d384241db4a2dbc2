"""One-off GPU diagnosis (not committed): where the time of main's contrastive and token ops goes."""
import os, sys, json, time, subprocess
sys.path.insert(0, os.getcwd())
import torch
from torch.profiler import profile, ProfilerActivity
OUT = os.environ.get("OUT", "/tmp")
res = {}

def prof(name, fn, iters=5):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 20 * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in p.key_averages():
        dt = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0))
        rows.append((e.key, e.count // iters, dt / iters / 1e3, e.cpu_time_total / iters / 1e3, getattr(e, "self_cpu_time_total", 0) / iters / 1e3))
    rows.sort(key=lambda r: -max(r[2], r[4]))
    print(f"\n== {name}: wall {wall:.3f} ms/iter")
    for r in rows[:28]:
        print(f"  {r[0][:70]:70s} n={r[1]:3d} dev={r[2]:.3f}ms cpu={r[3]:.3f} selfcpu={r[4]:.3f}")
    res[name] = {"wall_ms": wall, "rows": rows[:40]}
    p.export_chrome_trace(f"{OUT}/trace_{name}.json")

from fastssl.ops import nt_xent, gather_tokens, scatter_tokens
for m in (8192, 16384):
    n = m // 2
    z1 = torch.randn(n, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    z2 = torch.randn(n, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    def f():
        nt_xent(z1, z2, 0.1, backend="triton").backward()
    prof(f"ntxent_{m}_{os.environ.get('FASTSSL_TRITON_AUTOTUNE','1')}", f)

B, L, D = 256, 196, 768
keep = 49
x = torch.randn(B, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
pos = torch.randn(L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
ids = torch.rand(B, L, device="cuda").argsort(1)
ids_keep = ids[:, :keep]
ids_restore = ids.argsort(1)
try:
    def g():
        gather_tokens(x, ids_keep, pos).float().sum().backward()
    prof("gather_256", g)
    xk = torch.randn(B, keep, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mt = torch.randn(1, 1, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    def s():
        scatter_tokens(xk, ids_keep, L, mt, pos).float().sum().backward()
    prof("scatter_256", s)
except Exception as e:
    print("tokens failed:", repr(e)[:500])

import inspect
try:
    import torch.nn.attention.varlen as v
    print("varlen:", [n for n in dir(v) if not n.startswith("_")])
    for n in dir(v):
        if "attn" in n or "attention" in n:
            try: print(n, inspect.signature(getattr(v, n)))
            except Exception: pass
except Exception as e:
    print("no varlen:", e)
print("torch", torch.__version__, torch.version.cuda, "nproc", os.cpu_count())
print(subprocess.run([sys.executable, "-m", "pip", "list"], capture_output=True, text=True).stdout[-3000:])
json.dump(res, open(f"{OUT}/diag_{os.environ.get('FASTSSL_TRITON_AUTOTUNE','1')}.json", "w"), default=str)
