"""Compile the token and patchify kernels for a GPU target without a GPU (run as a script).

The Triton interpreter runs the kernels' Python, not their GPU code generation: a kernel can pass
every interpreter test and still fail to compile (types, layouts, constexpr use). This script
lowers each kernel, in the variants the launchers use, through Triton's compiler and the bundled
ptxas for sm_90 (H100). It must run with TRITON_INTERPRET unset, which is why it
is a separate process (tests/ops/test_tokens.py::test_kernels_compile_for_gpu).
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import fastssl.kernels.patchify as PF  # noqa: E402
import fastssl.kernels.tokens as T  # noqa: E402

I32, BF, F32, C = "i32", "*bf16", "*fp32", "constexpr"


def variants():
    tok = {"K": I32, "L": I32, "D": I32}
    yield "gather_fwd", T._gather_fwd_kernel, {"x_ptr": BF, "ids_ptr": "*i64", "pos_ptr": F32, "out_ptr": BF, "n_rows": I32, **tok,
                                               "HAS_POS": C, "BLOCK_R": C, "BLOCK_D": C}, [{"HAS_POS": h, "BLOCK_R": 16, "BLOCK_D": 256} for h in (True, False)]
    red = {"B": I32, **tok, "rows_per_prog": I32}
    yield "gather_bwd", T._gather_bwd_kernel, {"g_ptr": BF, "slot_ptr": "*i32", "dx_ptr": BF, "dpos_part_ptr": F32, **red,
                                               "NEED_DX": C, "NEED_DPOS": C, "BLOCK_R": C, "BLOCK_D": C}, [
        {"NEED_DX": a, "NEED_DPOS": b, "BLOCK_R": 16, "BLOCK_D": 256} for a, b in ((True, True), (True, False), (False, True))]
    yield "scatter_fwd", T._scatter_fwd_kernel, {"x_ptr": BF, "slot_ptr": "*i32", "mt_ptr": BF, "pos_ptr": BF, "out_ptr": BF, "n_rows": I32, **tok,
                                                 "HAS_POS": C, "BLOCK_R": C, "BLOCK_D": C}, [{"HAS_POS": h, "BLOCK_R": 8, "BLOCK_D": 512} for h in (True, False)]
    yield "scatter_bwd", T._scatter_bwd_kernel, {"g_ptr": BF, "slot_ptr": "*i32", "dx_ptr": BF, "dpos_part_ptr": F32, "dmt_part_ptr": F32, **red,
                                                 "NEED_DX": C, "NEED_DPOS": C, "NEED_DMT": C, "BLOCK_R": C, "BLOCK_D": C}, [
        {"NEED_DX": a, "NEED_DPOS": b, "NEED_DMT": c, "BLOCK_R": 8, "BLOCK_D": 512} for a, b, c in ((True, True, True), (True, False, False), (False, True, True))]
    geo = {"n_rows": I32, "L": I32, "H": I32, "W": I32, "w": I32, "P": C, "PATCH": C, "C": C, "BLOCK_R": C, "BLOCK_P": C}
    vit = {"P": 768, "PATCH": 16, "C": 3, "BLOCK_R": 2, "BLOCK_P": 1024}
    yield "patchify_fwd", PF._patchify_fwd_kernel, {"img_ptr": BF, "out_ptr": BF, **geo}, [vit]
    yield "patchify_bwd", PF._patchify_bwd_kernel, {"g_ptr": BF, "dimg_ptr": BF, **geo}, [vit]
    sig = {"img_ptr": BF, "slot_ptr": "*i32", "sigma_ptr": F32, "inputs_ptr": BF, "noise_ptr": BF, "target_ptr": BF, "seed": I32,
           "n_rows": I32, "K": I32, "L": I32, "H": I32, "W": I32, "w": I32, "P": C, "PATCH": C, "C": C, "HAS_IDS": C, "NORM": C,
           "BLOCK_R": C, "BLOCK_P": C}
    yield "patchify_noise", PF._patchify_noise_kernel, sig, [
        {"P": 768, "PATCH": 16, "C": 3, "HAS_IDS": i, "NORM": n, "BLOCK_R": 1, "BLOCK_P": 1024} for i in (True, False) for n in (True, False)
    ] + [{"P": 48, "PATCH": 4, "C": 3, "HAS_IDS": True, "NORM": True, "BLOCK_R": 32, "BLOCK_P": 64}]


def main() -> int:
    n = 0
    target = GPUTarget("cuda", 90, 32)
    for name, fn, sig, consts in variants():
        for const in consts:
            kernel = triton.compile(ASTSource(fn, sig, const), target=target, options={"num_warps": 4})
            assert kernel.asm.get("cubin"), (name, const)
            n += 1
    print(f"compiled {n} kernel variants for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
