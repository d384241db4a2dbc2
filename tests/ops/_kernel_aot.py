"""Compile every kernel variant the launchers can pick for sm_90 without a GPU; report ptxas's numbers.

The Triton interpreter runs the kernels' Python, not their GPU code generation: a kernel can pass
every interpreter test and still fail to compile, need more shared memory than an H100 block gets
(227 KB), or spill registers to local memory. This module lowers each variant through Triton's
compiler for ``GPUTarget("cuda", 90, 32)``; Triton itself runs the bundled ``ptxas -v
--gpu-name=sm_90a`` on the PTX, and we capture that report (``TRITON_DUMP_PTXAS_LOG``) instead of
running ptxas a second time. Shared memory is Triton's own figure (``metadata.shared``, the dynamic
shared memory a launch requests: the number the launch checks against the device limit).

Variants:
- contrastive (``fastssl.kernels.contrastive``): forward, forward with a queue (``QUEUE``), dRows, dRows with a queue,
  the symmetric dRows + dCols pass (``SYM``), dCols × fp32/bf16/fp16 × one D per
  BLOCK_D class the launcher makes (16 … 256, and D > 256 with the D-block loop) × every config the
  autotuner keeps for that (kernel, dtype, D) (``launch_configs``), plus the LSE merge kernel;
- tokens / patchify: every constexpr combination the launchers use, × the three dtypes, at the MAE
  shapes (ViT-B encoder D = 768, decoder D = 512; 16-pixel RGB patches, and a 4-pixel one).

Launch-time specialisation is mimicked for a contiguous launch of round sizes: pointers and int
arguments divisible by 16, unit strides folded to constants (what Triton's JIT does).

Run as a script (it must run with TRITON_INTERPRET unset, hence a separate process):
    python tests/ops/_kernel_aot.py OUT.json [--jobs N] [--only SUBSTRING] [--dtypes fp32,bf16]
Each variant is compiled once per run, in a fresh Triton cache (so ptxas always runs and reports),
on ``--jobs`` processes; the JSON holds one record per variant. tests/ops/test_kernel_aot.py runs
it once per pytest session and asserts on the records.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.pop("TRITON_INTERPRET", None)

SM90_SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KB)
DTYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}
CONTRASTIVE_DS = (16, 32, 64, 128, 256, 512)  # one D per BLOCK_D class; 512: the D-loop path (any D > 256)
I32, F32, C = "i32", "*fp32", "constexpr"


def _signature(fn, types: dict, consts: dict, d: int | None = None):
    """Signature + attrs for ``fn``: ``types`` names the pointer/float args, ints default to i32;
    unit strides (names ending in ``d``) become constants, every other int and pointer gets
    divisibility 16 (D only when it is a multiple of 16)."""
    sig, attrs = {}, {}
    for i, a in enumerate(fn.arg_names):
        if i in fn.constexprs:
            sig[a] = C
        elif a in types:
            sig[a] = types[a]
        elif a.startswith("stride") and a.endswith("d"):
            sig[a], consts = C, {**consts, a: 1}
        else:
            sig[a] = I32
        if sig[a].startswith("*") or (sig[a] == I32 and (a != "D" or (d or 1) % 16 == 0)):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


# MASK_ALL (``OPTIONS["mask_all"]``: every streamed tile takes the masked update, the before of the
# mask-free tiles) is a choice the launchers can make, so it compiles too: at D = 256, the largest
# one-block D, where the masked path's extra registers would spill first. FASTSSL_AOT_MASK_ALL=1
# (bench/kernel_mix.py's "before") compiles every variant with it instead.
_MASK_ALL_ONLY = os.environ.get("FASTSSL_AOT_MASK_ALL", "0") == "1"


def _mask_all_choices(d: int) -> tuple[bool, ...]:
    return (True,) if _MASK_ALL_ONLY else (False, True) if d == 256 else (False,)


def _contrastive_variants():
    import fastssl.kernels.contrastive as K
    import fastssl.kernels.contrastive_tiles as tiles

    for dt, ptr in DTYPES.items():
        for d in CONTRASTIVE_DS:
            # fwd_queue / bwd_queue: the forward and dRows with QUEUE (info_nce with a MoCo v2 queue: the
            # positive key outside the columns), same tiles as fwd / bwd_rows.
            # bwd_sym: the dRows kernel with SYM (rows is cols: dS + dSᵀ in one pass), its own configs.
            for record, kname, queue in (("fwd", "fwd", False), ("fwd_queue", "fwd", True),
                                         ("bwd_rows", "bwd_rows", False), ("bwd_queue", "bwd_rows", True),
                                         ("bwd_sym", "bwd_sym", False), ("bwd_cols", "bwd_cols", False)):
                fn = K._KERNELS[kname]
                types = {a: ptr for a in ("rows_ptr", "cols_ptr", "keys_ptr", "drows_ptr", "dcols_ptr")}
                types.update({"pos_ptr": "*i32", "kpos_ptr": "*i32", "excl_ptr": "*i32", "qk_scale": "fp32", "inv_temp": "fp32"})
                types.update({a: F32 for a in fn.arg_names if a.endswith("_ptr") and a not in types})
                # Every config with the heavier side of each switch (DCLW's weights and excluded positives,
                # split partials, dCols added onto dRows); the fixed config once more with the lighter side
                # (NT-Xent / InfoNCE: no weights, positives kept, one split, dCols written), so that each
                # side of each switch a launcher can pick compiles. (The queue has neither weights nor an
                # excluded positive.) Every tile masked (MASK_ALL, the opt-in "before" of mask-free tiles
                # that bench/contrastive.py's triton[masked] rows time on NT-Xent) with the lighter side.
                configs = tiles.launch_configs(kname, dt, d)
                if queue:  # one side only: (config, MASK_ALL, light)
                    variants = [(c, m, False) for c in configs for m in _mask_all_choices(d)]
                else:
                    variants = [(c, _MASK_ALL_ONLY, False) for c in configs] + [(configs[0], m, True) for m in _mask_all_choices(d)]
                for cfg, mask_all, light in variants:
                    heavy = not queue and not light
                    consts = {**K.launch_flags(dt, d, has_w=heavy, exclude_pos=heavy), **cfg.kwargs, "MASK_ALL": mask_all}
                    if "QUEUE" in fn.arg_names:
                        consts["QUEUE"] = queue
                    consts.update({k: v for k, v in (("SPLIT", not light), ("ROUND", False), ("ACCUMULATE", not light),
                                                     ("SYM", kname == "bwd_sym")) if k in fn.arg_names})
                    sig, consts, attrs = _signature(fn, types, consts, d)
                    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
                    own, stream = (bn, bm) if kname == "bwd_cols" else (bm, bn)
                    need = tiles.smem_need(kname, own, stream, cfg.num_stages, consts["BLOCK_D"], consts["ONE_D"], dt)
                    tags = (["light"] if light else []) + (["mask_all"] if mask_all and not _MASK_ALL_ONLY else [])
                    flags = {"flags": "/".join(tags)} if tags else {}
                    yield dict(family="contrastive", kernel=record, dtype=dt, D=d, config=f"{bm}x{bn}w{cfg.num_warps}s{cfg.num_stages}",
                               smem_estimate=need, **flags), fn, sig, consts, attrs, cfg.num_warps, cfg.num_stages
    # the ops' fused row normalisation (``unit_fwd`` / ``unit_bwd``), at the projector widths and the largest D it takes
    for dt, ptr in DTYPES.items():
        for d in (128, 256, 4096):
            block_r, block_d = K._unit_tile(d)
            for fn, types in ((K._unit_fwd_kernel, {"x1_ptr": ptr, "x2_ptr": ptr, "y_ptr": ptr, "rn_ptr": F32}),
                              (K._unit_bwd_kernel, {"x1_ptr": ptr, "x2_ptr": ptr, "dy_ptr": ptr, "rn_ptr": F32,
                                                    "dx1_ptr": ptr, "dx2_ptr": ptr})):
                sig, consts, attrs = _signature(fn, types, {"EPS": K._UNIT_EPS, "RNE": False, "BLOCK_R": block_r, "BLOCK_D": block_d}, d)
                yield dict(family="contrastive", kernel=fn.__name__.strip("_").replace("_kernel", ""), dtype=dt, D=d,
                           config=f"{block_r}x{block_d}w4"), fn, sig, consts, attrs, 4, 3
    fn = K._contrastive_lse_merge_kernel
    sig, consts, attrs = _signature(fn, {"part_ptr": F32, "loss_ptr": F32, "lse_ptr": F32}, {"BLOCK": 1024})
    yield dict(family="contrastive", kernel="lse_merge", dtype="fp32", D=0, config="1024w4"), fn, sig, consts, attrs, 4, 3
    fn = K._sum_cast_kernel
    for dt, ptr in DTYPES.items():
        for acc in (True, False):
            sig, consts, attrs = _signature(fn, {"part_ptr": F32, "out_ptr": ptr}, {"ACCUMULATE": acc, "BLOCK": 1024})
            yield dict(family="contrastive", kernel="sum_cast", dtype=dt, D=0, config="1024w4", flags=f"acc={acc}"), \
                fn, sig, consts, attrs, 4, 3


def _token_variants():
    import fastssl.kernels.patchify as PF
    import fastssl.kernels.tokens as T

    for dt, X in DTYPES.items():
        for d in (768, 512):  # MAE ViT-B encoder width, MAE decoder width
            # the launch table's choices at MAE sizes (B 1024, L 196, K 49), rows and reducing kernels
            pr = T._plan(1024 * 49, 1, d, False, 132, None, T.TILE_ELEMS, T.SUM_WAVES, None)
            pe = T._plan(1024, 196, d, True, 132, None, T.TILE_ELEMS, T.SUM_WAVES, None)
            rows = {"BLOCK_R": pr.block_r, "BLOCK_D": pr.block_d}
            tile = {"KP": 64, "BLOCK_L": pe.block_l, "BLOCK_D": pe.block_d, "STAGES": pe.stages}
            jobs = [
                (T._rows_kernel, {"x_ptr": X, "ids_ptr": "*i64", "pos_ptr": X, "out_ptr": X}, rows, pr.warps,
                 [{"HAS_POS": h} for h in (True, False)]),
                (T._expand_kernel, {"x_ptr": X, "ids_ptr": "*i64", "mt_ptr": X, "pos_ptr": X, "out_ptr": X, "part_ptr": F32,
                                    "sum_ptr": X, "cnt_ptr": "*i32"},
                 tile, pe.warps,
                 [{"HAS_MT": False, "HAS_POS": False, "NEED_SUM": s, "FOLD": f} for s, f in ((True, True), (True, False), (False, False))]
                 + [{"HAS_MT": True, "HAS_POS": h, "NEED_SUM": False, "FOLD": False} for h in (True, False)]),  # scatter fwd
                (T._compress_kernel, {"g_ptr": X, "ids_ptr": "*i64", "dx_ptr": X, "pos_part_ptr": F32, "mt_part_ptr": F32,
                                      "pos_ptr": X, "mt_ptr": X, "cnt_ptr": "*i32"},
                 tile, pe.warps,
                 [{"NEED_DX": a, "NEED_DPOS": b, "NEED_DMT": c, "FOLD": f} for a, b, c, f in
                  ((True, True, True, True), (True, False, True, True), (True, True, False, True), (False, True, True, False),
                   (True, True, True, False))]),
            ]
            if d == 768:  # no D-dependent constexpr: one compile per dtype (a second would hit the cache)
                jobs.append((T._reduce_kernel, {"pos_part_ptr": F32, "pos_ptr": X, "mt_part_ptr": F32, "mt_ptr": X},
                             {"BLOCK_C": T._REDUCE_BLOCK_C, "BLOCK_D": T._REDUCE_BLOCK_D}, 4, [{}]))
            for fn, types, consts0, warps, flag_sets in jobs:
                for flags in flag_sets:
                    sig, consts, attrs = _signature(fn, types, {**flags, **consts0}, d)
                    name = fn.__name__.strip("_").replace("_kernel", "")
                    cfg = "x".join(str(v) for k, v in consts0.items() if k.startswith("BLOCK")) + f"w{warps}"
                    yield dict(family="tokens", kernel=name, dtype=dt, D=d, config=cfg,
                               flags=",".join(f"{k}={v}" for k, v in flags.items())), fn, sig, consts, attrs, warps, 3
        for patch, chans in ((16, 3), (4, 3)):
            P = patch * patch * chans
            geo = {"P": P, "PATCH": patch, "C": chans}
            block_r, block_p = PF._tile(P)
            for fn in (PF._patchify_fwd_kernel, PF._patchify_bwd_kernel):
                types = {"img_ptr": X, "out_ptr": X, "g_ptr": X, "dimg_ptr": X}
                sig, consts, attrs = _signature(fn, types, {**geo, "BLOCK_R": block_r, "BLOCK_P": block_p})
                yield dict(family="tokens", kernel=fn.__name__.strip("_").replace("_kernel", ""), dtype=dt, D=P,
                           config=f"{block_r}x{block_p}w4"), fn, sig, consts, attrs, 4, 3
            block_r, pp, qp = PF._noise_tile(patch, chans)
            fn = PF._patchify_noise_kernel
            types = {"img_ptr": X, "ids_ptr": "*i64", "sigma_ptr": F32, "inputs_ptr": X, "noise_ptr": X, "target_ptr": X}
            for has_ids in (True, False):
                for norm in (True, False):
                    sig, consts, attrs = _signature(fn, types, {**geo, "HAS_IDS": has_ids, "NORM": norm, "KP": 64,
                                                                "BLOCK_R": block_r, "PP": pp, "QP": qp})
                    yield dict(family="tokens", kernel="patchify_noise", dtype=dt, D=P, config=f"{block_r}x4x{pp}x{pp}w4",
                               flags=f"ids={has_ids},norm={norm}"), fn, sig, consts, attrs, 4, 3


def variants():
    """(record, fn, signature, constexprs, attrs, num_warps, num_stages) for every variant."""
    yield from _contrastive_variants()
    yield from _token_variants()


_PTXAS = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def loop_mix(sass: str) -> dict:
    """Opcode counts of the largest loop in a SASS listing (``cuobjdump -sass``): per warp, one
    iteration (one streamed tile) of a kernel's main loop, the input of the roofline estimate."""
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = [(int(b.group(1), 16), a) for a, t in ins if (b := re.search(r"BRA (?:`\(\.L_x_\d+\) )?0x([0-9a-f]+)", t))
             and int(b.group(1), 16) < a]
    if not loops:
        return {}
    lo, hi = max(loops, key=lambda p: p[1] - p[0])
    ops: dict = {}
    for a, t in ins:
        if lo <= a <= hi:
            op = re.sub(r"^@!?U?P\w+\s+", "", t).split()[0]
            ops[op] = ops.get(op, 0) + 1
    return ops


def loop_paths(sass: str) -> list[dict]:
    """Opcode counts of each path through one iteration of the largest loop (``loop_mix``'s loop):
    a loop body with branches (the contrastive kernels' masked and unmasked tile updates) issues
    one path per iteration, so the mix of the whole body overstates each. Paths follow the
    branches inside the loop from its head to its back edge; sorted by length, shortest first."""
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    target = {a: int(b.group(1), 16) for a, t in ins if (b := re.search(r"BRA (?:`\(\.L_x_\d+\) )?(?:U?P\d, )?0x([0-9a-f]+)", t))}
    loops = [(t, a) for a, t in target.items() if t < a]
    if not loops:
        return []
    lo, hi = max(loops, key=lambda p: p[1] - p[0])
    body = [(a, t) for a, t in ins if lo <= a <= hi]
    index = {a: i for i, (a, _) in enumerate(body)}
    paths, stack = [], [(0, {})]
    while stack and len(paths) < 64:
        i, ops = stack.pop()
        while i < len(body):
            a, t = body[i]
            op = re.sub(r"^@!?U?P\w+\s+", "", t).split()[0]
            ops = {**ops, op: ops.get(op, 0) + 1}
            if a == hi:  # the back edge: one iteration
                paths.append(ops)
                break
            if a in target:
                dest = index.get(target[a])
                if t.startswith("@"):  # conditional: both ways
                    if dest is not None and dest > i:
                        stack.append((dest, ops))
                elif dest is not None and dest > i:
                    i = dest
                    continue
                else:
                    break
            i += 1
    return sorted(({"instructions": sum(p.values()), "ops": p} for p in paths), key=lambda p: p["instructions"])


def _sass(cubin: bytes) -> str:
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        tool = os.path.join(os.path.dirname(knobs.nvidia.ptxas.path), "cuobjdump")
        return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def _compile(index: int, mix: bool = False) -> dict:
    """Compile variant ``index`` (re-enumerated in the worker: JIT functions do not pickle); with
    ``mix`` also the opcode counts of its main loop (``loop_mix``)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rec, fn, sig, consts, attrs, warps, stages = list(variants())[index]
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": warps, "num_stages": stages})
    except Exception as err:  # a variant that does not compile is a finding, reported, not a crash
        return {**rec, "error": f"{type(err).__name__}: {str(err)[-800:]}"}
    rec = {**rec, "warps": warps, "stages": stages, "seconds": round(time.perf_counter() - t0, 2),
           "smem": k.metadata.shared, "cubin": bool(k.asm.get("cubin"))}
    text = log.getvalue()
    for key, pat in _PTXAS.items():
        m = pat.search(text)
        rec[key] = int(m.group(1)) if m else 0
    if "regs" not in rec or not _PTXAS["regs"].search(text):
        rec["error"] = "no ptxas report captured"
    ptx = k.asm["ptx"]
    rec["wgmma"] = len(re.findall(r"wgmma\.mma_async", ptx))
    rec["mma_sync"] = len(re.findall(r"\bmma\.sync", ptx))
    if mix:
        sass = _sass(k.asm["cubin"])
        rec["loop_mix"] = loop_mix(sass)
        rec["loop_paths"] = loop_paths(sass)
    return rec


def _init_worker(cache: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = cache


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="JSON file for the records")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", default="", help="compile only variants whose name contains this")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="compile only the variants of these dtypes (comma-separated)")
    p.add_argument("--mix", action="store_true", help="also record the SASS opcode counts of each main loop")
    args = p.parse_args(argv)
    import triton  # the build this run compiles with (a folder on PYTHONPATH can stand for the venv's)

    dtypes = args.dtypes.split(",")
    todo = [i for i, v in enumerate(variants()) if args.only in "/".join(str(x) for x in v[0].values()) and v[0]["dtype"] in dtypes]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # fresh: a cache hit would skip ptxas and its report
        with ProcessPoolExecutor(args.jobs, initializer=_init_worker, initargs=(cache,)) as pool:
            records = list(pool.map(functools.partial(_compile, mix=args.mix), todo, chunksize=1))
    with open(args.out, "w") as f:
        json.dump({"triton": triton.__version__, "smem_limit": SM90_SMEM_LIMIT, "variants": len(todo), "dtypes": dtypes,
                   "contrastive_ds": CONTRASTIVE_DS,
                   "seconds": round(time.perf_counter() - t0, 1), "records": records}, f, indent=1)
    bad = sum("error" in r for r in records)
    print(f"compiled {len(records) - bad} of {len(records)} kernel variants for sm_90 in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
