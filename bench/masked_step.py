"""Masked MoCo / Masked BYOL step throughput: n/m sweep, packed vs eager per-chunk batches.

    python bench/masked_step.py [--fmnist-grid] [--smoke]
    (``python bench/throughput.py --masked ...`` forwards here)

One step without the optimizer: both views' online branch (n chunks per image) forward + backward,
the target branch (full view or m chunks) forward without grad, heads and loss. Inputs are random
tensors on the device. Precision: bf16 autocast on CUDA, fp32 on CPU.

Providers:
  packed   the method's own forward: all chunks of all images in ONE ``PackedViT.encode`` call
           (block-diagonal attention, ``ChunkedView``), the target likewise
  eager    the usual code: timm modules (``encoder.to_timm()``), the patches embedded by timm's conv,
           each chunk of all images gathered into its own dense batch ``[2B, L_max + 1, D]`` (padded
           with a key-padding mask when chunk sizes differ) and run through timm's ``Block``s: n
           encoder calls online, m on the target. Same weights and the same chunks as packed (the
           first losses must agree).

Analytic FLOPs of a step (the counting of ``bench/throughput.py``: 2 FLOPs per weight per token
forward, ×3 with backward; attention QKᵀ and A·V 4·T²·D per layer forward):
  per image-view   online  6·P_enc·Σ_j T_j + 12·L·D·Σ_j T_j² + 6·(P_proj + P_pred)·n     (T_j = L_j + 1)
                   target  2·P_enc·Σ_j T_j + 4·L·D·Σ_j T_j² + 2·P_proj·m               (forward only)
  per step         2B × per image-view
The FLOP ratio is this count over the same method's n = 1, m = 1 count (MoCo v3 / BYOL); the time ratio
is the measured step time over the same provider's n = 1, m = 1 time. Each chunk adds a CLS token,
so on small grids (16 patches) the linear layers grow with n while the attention saving is
negligible; on 196 patches attention falls from 197² to Σ_j T_j² per layer.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import Record, device, measure_ceilings, parse_args, peak_memory_mib, plot, sync, time_fn, write_results  # noqa: E402
from fastssl.methods.base import StepContext  # noqa: E402
from fastssl.methods.masked import global_permutations  # noqa: E402
from fastssl.methods.mbyol import MBYOL, MBYOLConfig  # noqa: E402
from fastssl.methods.mmoco import MMoCo, MMoCoConfig  # noqa: E402
from fastssl.methods.parts import per_view_chunks  # noqa: E402
from fastssl.models.vit.chunks import chunk_sizes  # noqa: E402
from fastssl.models.encoder import build_vit  # noqa: E402
from fastssl.ops.contrastive import spherical_mean  # noqa: E402
from fastssl.data.batch import Batch  # noqa: E402

PROVIDERS = ("packed", "eager")


@dataclass
class Case:
    arch: str
    img: int
    patch: int
    batch: int
    hidden: int
    out: int


SMOKE = ([Case("test_vit", 16, 4, 4, 32, 16)], (1, 4), (1, 4))
# CPU: a 224 px / patch 16 grid (196 patches, where attention matters) at the smallest InfoNCE batch,
# so the 32-row sweep fits ~10 minutes on 2 shared cores. ``--fmnist-grid``: the fmnist configs' grid
# (28 px / patch 7, 16 patches), ~40 s a row there.
CPU = ([Case("vit_tiny_patch16_224", 224, 16, 2, 1024, 128)], (1, 2, 4, 8), (1, 4))
CPU_FMNIST = ([Case("vit_tiny_patch16_224", 28, 7, 16, 1024, 128)], (1, 2, 4, 8), (1, 4))
GPU = ([Case("vit_small_patch16_224", 224, 16, 128, 4096, 256)], (1, 2, 4, 8), (1, 4))


def build(name: str, case: Case, n: int, m: int, dev: torch.device):
    torch.manual_seed(0)
    enc = build_vit(case.arch, img_size=case.img, patch_size=case.patch)
    heads = dict(projector={"hidden_dim": case.hidden, "out_dim": case.out, "num_layers": 3, "norm": "layernorm", "last_norm": True},
                 predictor={"hidden_dim": case.hidden, "out_dim": case.out, "norm": "layernorm"})
    if name == "mmoco":
        method = MMoCo(MMoCoConfig(n_chunks=n, target_chunks=m, gather_distributed=False, kappa_monitor=False, **heads), enc)
    else:
        method = MBYOL(MBYOLConfig(n_chunks=n, target_chunks=m, kappa_monitor=False, **heads), enc)
    return method.to(dev).train()


def chunk_token_sums(num_patches: int, chunks: int) -> tuple[int, int]:
    """(Σ_j T_j, Σ_j T_j²) over the chunks of one image, T_j = patches + CLS."""
    sizes = chunk_sizes(num_patches, chunks)
    return sum(s + 1 for s in sizes), sum((s + 1) ** 2 for s in sizes)


def step_flops(method, batch: int, n: int, m: int) -> float:
    enc = method.encoder
    npatch = enc.grid[0] * enc.grid[1]
    p_enc = sum(p.numel() for k, p in enc.named_parameters() if k not in ("pos_embed", "cls_token"))
    p_proj = sum(p.numel() for p in method.projector.parameters())
    p_pred = sum(p.numel() for p in method.predictor.parameters())
    depth, dim = len(enc.blocks), enc.embed_dim
    t_on, a_on = chunk_token_sums(npatch, n)
    t_tg, a_tg = chunk_token_sums(npatch, m)
    online = 6 * p_enc * t_on + 12 * depth * dim * a_on + 6 * (p_proj + p_pred) * n
    target = 2 * p_enc * t_tg + 4 * depth * dim * a_tg + 2 * p_proj * m
    return 2 * batch * (online + target)


def eager_chunks(vit, images: torch.Tensor, perm: torch.Tensor | None, chunks: int) -> torch.Tensor:
    """timm ViT ``vit`` on each chunk as its own padded dense batch -> CLS ``[chunks, M, D]``."""
    x = vit.patch_embed(images) + vit.pos_embed[:, 1:]  # [M, N, D]
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    if chunks == 1:
        t = torch.cat([cls, x], dim=1)
        for blk in vit.blocks:
            t = blk(t)
        return vit.norm(t)[:, 0].unsqueeze(0)
    sizes = chunk_sizes(x.shape[1], chunks)
    lmax, out, start = max(sizes), [], 0
    for size in sizes:
        ids = perm[:, start:start + size]
        start += size
        t = torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        mask = None
        if size < lmax:  # pad to the longest chunk; padded keys masked out (True = attend)
            t = F.pad(t, (0, 0, 0, lmax - size))
            mask = (torch.arange(lmax + 1, device=x.device) <= size).view(1, 1, 1, -1)
        t = torch.cat([cls, t], dim=1)
        for blk in vit.blocks:
            t = blk(t, attn_mask=mask)
        out.append(vit.norm(t)[:, 0])
    return torch.stack(out)


def make_eager(method):
    """The eager provider's step function: timm copies of the online and target encoders."""
    online = method.encoder.to_timm().train()
    target = method.target.net[0].to_timm().requires_grad_(False)
    cfg = method.cfg

    def forward(batch: Batch, ctx: StepContext):
        views = batch["views"]
        v, b = views.shape[:2]
        images = views.flatten(0, 1)
        grid = images.shape[-1] // method.encoder.patch_size
        gen = ctx.generator()  # the same draws as the packed forward
        perm_q = global_permutations(gen, v, b, grid * grid, images.device) if cfg.n_chunks > 1 else None
        perm_k = global_permutations(gen, v, b, grid * grid, images.device) if cfg.target_chunks > 1 else None
        z = per_view_chunks(method.projector, eager_chunks(online, images, perm_q, cfg.n_chunks), v)
        q = per_view_chunks(method.predictor, z, v)
        with torch.no_grad():
            keys = per_view_chunks(method.target.net[-1], eager_chunks(target, images, perm_k, cfg.target_chunks), v)
            k = keys[0] if cfg.target_chunks == 1 else spherical_mean(keys)
        return method.loss(q, k)

    return forward, [p for p in online.parameters()]


def run(args) -> None:
    dev = device()
    amp = dev.type == "cuda"
    cases, ns, ms = SMOKE if args.smoke else CPU_FMNIST if args.fmnist_grid else GPU if dev.type == "cuda" else CPU
    if dev.type == "cpu":  # a shared CPU: OpenMP threads spin against the other work (first row: 0.6 images/s on 2 threads, 11.4 on 1)
        torch.set_num_threads(1)
    providers = PROVIDERS  # both always: the ratios compare them
    ceilings = measure_ceilings(smoke=args.smoke or dev.type == "cpu")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"{dev} ({torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f})"
    print(f"device {name}", flush=True)
    records: list[Record] = []
    for case in cases:
        torch.manual_seed(1)
        views = torch.randn(2, case.batch, 3, case.img, case.img, device=dev)
        index = torch.arange(case.batch, device=dev)
        batch = Batch({"views": views}, index, index)
        ctx = StepContext(step=0, steps_per_epoch=1, total_steps=1, seed=0)
        for method_name in ("mmoco", "mbyol"):
            for n in ns:
                for m in ms:
                    method = build(method_name, case, n, m, dev)
                    first = None
                    for provider in providers:
                        model_params = [p for p in method.parameters() if p.requires_grad]
                        if provider == "packed":
                            fwd = lambda: method(batch, ctx).loss  # noqa: E731
                        else:
                            eager_fwd, timm_params = make_eager(method)
                            fwd = (lambda f: (lambda: f(batch, ctx)))(eager_fwd)
                            model_params = model_params + timm_params

                        def step(fwd=fwd, params=model_params):
                            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                                loss = fwd()
                            loss.backward()
                            for p in params:
                                p.grad = None
                            return loss

                        c = {"method": method_name, "arch": case.arch, "img": case.img, "patch": case.patch,
                             "batch": case.batch, "n": n, "m": m, "precision": "bf16-autocast" if amp else "fp32"}
                        try:
                            loss0 = step().detach().float()
                            first = loss0 if first is None else first
                            torch.testing.assert_close(loss0, first, rtol=2e-2, atol=2e-2)  # same weights, same chunks
                            sync()
                            # CPU: 3 timed steps after a warm-up (time_fn's short mode) to fit the sweep in minutes
                            t = time_fn(step, smoke=args.smoke or dev.type == "cpu", rep_ms=1500)
                            flops = step_flops(method, case.batch, n, m)
                            rec = Record(provider, c, total=t, peak_mem_mib=peak_memory_mib(step), extra={
                                "images_per_s": case.batch / (t.median / 1e3), "flops_per_step": flops,
                                "tflops": flops / t.median / 1e9, "first_loss": loss0.item()})
                        except Exception as err:  # record and go on (OOM at a large batch)
                            rec = Record(provider, c, error=f"{type(err).__name__}: {err}"[:500])
                        records.append(rec)
                        print(f"  {case.arch} {case.img}px B={case.batch} {method_name} n={n} m={m} {provider}: "
                              + (rec.error[:100] if rec.error else f"{rec.extra['images_per_s']:.1f} images/s"), flush=True)
                    del method
    _derive(records)
    path = write_results("throughput-masked" + ("-fmnist" if args.fmnist_grid else ""), records, ceilings, args, meta={
        "step": "masked method forward (online n chunks fwd+bwd, target m chunks fwd) + loss + backward, no optimizer",
        "flops_per_step": "2B*[6*P_enc*sum(T_j) + 12*L*D*sum(T_j^2) + 6*(P_proj+P_pred)*n + 2*P_enc*sum(T_k) + 4*L*D*sum(T_k^2) + 2*P_proj*m]",
        "threads": torch.get_num_threads(), "load_average": os.getloadavg()})
    png = plot(path, [("one step (fwd+bwd)", lambda r: r.total.median if r.total else None, "ms"),
                      ("throughput", lambda r: r.extra.get("images_per_s"), "images/s")],
               x_key="n", series_key=lambda c: f"{c['method']} {c['img']}px m={c['m']}")
    table(records)
    print(f"\nwrote {path} and {png}")


def _key(c: dict) -> tuple:
    return (c["method"], c["arch"], c["img"], c["batch"])


def _derive(records: list[Record]) -> None:
    """FLOP and time ratios against the same method's n = 1, m = 1 (same provider); eager / packed."""
    base = {(_key(r.case), r.provider): r for r in records if r.case["n"] == 1 and r.case["m"] == 1 and r.error is None}
    packed = {(_key(r.case), r.case["n"], r.case["m"]): r for r in records if r.provider == "packed" and r.error is None}
    for r in records:
        if r.error is not None:
            continue
        b = base.get((_key(r.case), r.provider))
        if b is not None:
            r.extra["flop_ratio"] = r.extra["flops_per_step"] / b.extra["flops_per_step"]
            r.extra["time_ratio"] = r.total.median / b.total.median
        p = packed.get((_key(r.case), r.case["n"], r.case["m"]))
        if p is not None:
            r.extra["time_vs_packed"] = r.total.median / p.total.median


def table(records: list[Record]) -> None:
    print(f"\n{'method':<7}{'arch':<22}{'px':>4}{'B':>5}{'n':>3}{'m':>3}  {'provider':<8}{'step ms':>9}{'img/s':>9}"
          f"{'FLOP ratio':>11}{'time ratio':>11}{'/packed':>9}")
    for r in records:
        c = r.case
        head = f"{c['method']:<7}{c['arch']:<22}{c['img']:>4}{c['batch']:>5}{c['n']:>3}{c['m']:>3}  {r.provider:<8}"
        if r.error:
            print(head + f"ERROR {r.error[:80]}")
            continue
        e = r.extra
        fmt = lambda k, w: f"{e[k]:{w}.2f}" if k in e else f"{'-':>{w}}"  # noqa: E731
        print(head + f"{r.total.median:9.1f}{e['images_per_s']:9.1f}{fmt('flop_ratio', 11)}{fmt('time_ratio', 11)}{fmt('time_vs_packed', 9)}")


def _add_args(p) -> None:
    p.add_argument("--fmnist-grid", action="store_true", help="the fmnist grid (28 px / patch 7) instead of 224 / 16")


def main(argv: list[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0], _add_args, argv))


if __name__ == "__main__":
    main()
