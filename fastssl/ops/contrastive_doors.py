"""The contrastive kernels as custom ops, with their eager doors (``fastssl.ops.contrastive``'s losses call them).

Bodies (they call ``fastssl.kernels.contrastive``'s launchers, imported lazily so that CPU-only use
never imports Triton), fake functions and autograd, registered once per op:
``fastssl::contrastive_rows`` (and ``_self`` for rows is cols), ``fastssl::queue_rows`` (MoCo v2) and
``fastssl::unit_rows`` (the fused normalisation), each with a ``_bwd`` op. Under torch.compile the
losses run through the ops (one graph node each); eager calls take the ops' eager doors
(``fastssl.ops.dispatch.eager_door`` and ``mean_door``, the reason and the measured cost there), and
the losses' one-node doors (``fastssl.ops.contrastive_nodes``) chain the same bodies.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from fastssl.ops.dispatch import backward_impl, eager_door, empty_flag, grad_scale, mean_door

OPTIONS = {
    # Outside torch.compile the kernels enter through the custom ops' eager doors (False: through the
    # custom ops, as main did before issue 21; bench/contrastive.py's triton[old] variant).
    "direct_eager": True,
    # The ops' L2 normalisation of kernel-bound operands as one Triton launch forward and one
    # backward (``unit_rows``) instead of ~5 + ~7 small torch launches: the first H200 run showed the
    # call host-bound (1.5 ms to issue vs 0.43 ms of kernels at 2N = 8192, tens of µs per launch).
    # FASTSSL_CONTRASTIVE_FUSED_UNIT=0 (or bench's triton[unfused]) goes back to torch.
    "fused_unit": os.environ.get("FASTSSL_CONTRASTIVE_FUSED_UNIT", "1") != "0",
    # Eagerly, each loss as one autograd node where it can be (``fastssl.ops.contrastive_nodes``: NT-Xent
    # / DCL in one process, InfoNCE with momentum keys) instead of two or three; False (bench's
    # triton[nodes]) keeps the ops' chain of nodes.
    "one_node": True,
}


def _door_open() -> bool:
    """Eager calls enter through the doors, compiled ones through the custom ops (``OPTIONS``)."""
    return OPTIONS["direct_eager"] and not torch.compiler.is_compiling()


def _loss_lse_fake(rows, *_):
    m = rows.shape[0]
    return rows.new_empty(m, dtype=torch.float32), rows.new_empty(m, dtype=torch.float32)


# --- contrastive rows: loss[a] = -w·s[a, pos] + LSE over allowed columns -----------------------
def _rows_body(rows: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor, pos_weight: Optional[Tensor],
               temperature: float, exclude_pos: bool) -> tuple[Tensor, Tensor]:
    """-> (loss [M] fp32, LSE₂ [M] fp32); indices int32, pos_weight fp32 (``kernels.contrastive.prepare``)."""
    from fastssl.kernels.contrastive import forward

    return forward(rows, cols, pos_idx, excl_idx, pos_weight, temperature, exclude_pos)


def _rows_self_body(rows: Tensor, pos_idx: Tensor, excl_idx: Tensor, pos_weight: Optional[Tensor],
                    temperature: float, exclude_pos: bool) -> tuple[Tensor, Tensor]:
    """``_rows_body`` with cols = rows (single-process NT-Xent/DCL). A separate op because the
    backward's one pass for both operands needs to know the two are one tensor, and an op's inputs
    do not say so (the wrapper decides with ``rows is cols``, which Dynamo resolves while tracing)."""
    return _rows_body(rows, rows, pos_idx, excl_idx, pos_weight, temperature, exclude_pos)


def _rows_bwd_body(rows: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor, pos_weight: Optional[Tensor],
                   lse2: Tensor, dloss: Tensor, temperature: float, exclude_pos: bool, need_rows: bool,
                   need_cols: bool, same: bool, grad_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """-> (dRows [M, D], dCols [C, D]) of grad_scale·Σ dloss·loss, empty where not needed; ``same``: the
    whole gradient in the dRows slot. dloss may be a mean's expanded (stride-0) gradient: the kernels
    read it with its stride."""
    from fastssl.kernels.contrastive import backward

    drows, dcols = backward(rows, cols, pos_idx, excl_idx, pos_weight, lse2, dloss, temperature, exclude_pos,
                            need_rows, need_cols, same, grad_scale)
    return (drows if drows is not None else empty_flag(rows)), (dcols if dcols is not None else empty_flag(cols))


_rows_op = torch.library.custom_op("fastssl::contrastive_rows", _rows_body, mutates_args=())
_rows_self_op = torch.library.custom_op("fastssl::contrastive_rows_self", _rows_self_body, mutates_args=())
_rows_bwd_op = torch.library.custom_op("fastssl::contrastive_rows_bwd", _rows_bwd_body, mutates_args=())
_rows_op.register_fake(_loss_lse_fake)
_rows_self_op.register_fake(_loss_lse_fake)


@_rows_bwd_op.register_fake
def _(rows, cols, pos_idx, excl_idx, pos_weight, lse2, dloss, temperature, exclude_pos, need_rows, need_cols, same,
      grad_scale=1.0):
    drows = rows.new_empty(rows.shape) if (need_rows or same) else empty_flag(rows)
    dcols = cols.new_empty(cols.shape) if (need_cols and not same) else empty_flag(cols)
    return drows, dcols


def _rows_setup(ctx, inputs, output):
    rows, cols, pos_idx, excl_idx, pos_weight, temperature, exclude_pos = inputs
    ctx.save_for_backward(rows, cols, pos_idx, excl_idx, pos_weight, output[1])
    ctx.temperature, ctx.exclude_pos = temperature, exclude_pos


def _rows_backward(ctx, dloss, _dlse2):
    rows, cols, pos_idx, excl_idx, pos_weight, lse2 = ctx.saved_tensors
    need_rows, need_cols = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_rows or need_cols):
        return None, None, None, None, None, None, None
    bwd = backward_impl(ctx, _rows_bwd_op, _rows_bwd_body)
    drows, dcols = bwd(rows, cols, pos_idx, excl_idx, pos_weight, lse2, dloss, ctx.temperature, ctx.exclude_pos,
                       need_rows, need_cols, False, grad_scale(ctx))  # no dK work for momentum keys (need_cols False)
    return (drows if need_rows else None), (dcols if need_cols else None), None, None, None, None, None


def _rows_self_setup(ctx, inputs, output):
    rows, pos_idx, excl_idx, pos_weight, temperature, exclude_pos = inputs
    ctx.save_for_backward(rows, pos_idx, excl_idx, pos_weight, output[1])
    ctx.temperature, ctx.exclude_pos = temperature, exclude_pos


def _rows_self_backward(ctx, dloss, _dlse2):
    """rows is cols: the gradient as rows and as cols, summed, returns through the one input (the
    kernels' symmetric pass, or dCols added onto dRows: no autograd add of two [M, D] tensors)."""
    rows, pos_idx, excl_idx, pos_weight, lse2 = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    bwd = backward_impl(ctx, _rows_bwd_op, _rows_bwd_body)
    drows, _ = bwd(rows, rows, pos_idx, excl_idx, pos_weight, lse2, dloss, ctx.temperature, ctx.exclude_pos,
                   True, True, True, grad_scale(ctx))
    return drows, None, None, None, None, None


_rows_op.register_autograd(_rows_backward, setup_context=_rows_setup)
_rows_self_op.register_autograd(_rows_self_backward, setup_context=_rows_self_setup)
_RowsDoor = eager_door(_rows_body, _rows_setup, _rows_backward)
_RowsSelfDoor = eager_door(_rows_self_body, _rows_self_setup, _rows_self_backward)
_RowsMeanDoor = mean_door(_rows_body, _rows_setup, _rows_backward)
_RowsSelfMeanDoor = mean_door(_rows_self_body, _rows_self_setup, _rows_self_backward)


def _enter(door, mean_door_, op, args: tuple, mean: bool) -> Tensor:
    """Run a loss op through its eager door (``mean``: the door that returns the mean, one autograd
    node for loss and mean) or, under torch.compile, through the custom op (the compiler fuses the
    mean): the per-row loss [M] fp32, or its mean."""
    if _door_open():
        return mean_door_.apply(*args) if mean else door.apply(*args)[0]
    loss = op(*args)[0]
    return loss.mean() if mean else loss


def triton_contrastive_rows(rows: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor, temperature: float,
                            pos_weight: Tensor | None = None, exclude_pos: bool = False, *, mean: bool = False) -> Tensor:
    """The kernels' twin of ``fastssl.ops.reference.contrastive_rows`` (same contract, same maths):
    loss [M] fp32, or its mean with ``mean=True`` (what every loss of this module returns; see
    ``fastssl.ops.dispatch.mean_door``). rows [M, D], cols [C, D]: one dtype of fp32/bf16/fp16 and
    one device, any strides."""
    from fastssl.kernels.contrastive import prepare

    pos_idx, excl_idx, pos_weight = prepare(rows, cols, pos_idx, excl_idx, temperature, pos_weight)
    t, excl = float(temperature), bool(exclude_pos)
    if rows is cols:
        return _enter(_RowsSelfDoor, _RowsSelfMeanDoor, _rows_self_op, (rows, pos_idx, excl_idx, pos_weight, t, excl), mean)
    return _enter(_RowsDoor, _RowsMeanDoor, _rows_op, (rows, cols, pos_idx, excl_idx, pos_weight, t, excl), mean)


# --- queue rows (MoCo v2): loss[a] = LSE(t_pos, rows·queueᵀ/τ) − t_pos, t_pos = <rows[a], keys[pos[a]]>/τ ---
def _queue_body(rows: Tensor, keys: Tensor, pos_idx: Tensor, queue: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """-> (loss [M] fp32, LSE₂ [M] fp32); pos_idx int32 [M], row a's positive keys[pos_idx[a]]."""
    from fastssl.kernels.contrastive import queue_forward

    return queue_forward(rows, keys, pos_idx, queue, temperature)


def _queue_bwd_body(rows: Tensor, keys: Tensor, pos_idx: Tensor, queue: Tensor, loss: Tensor, lse2: Tensor,
                    dloss: Tensor, temperature: float, grad_scale: float = 1.0) -> Tensor:
    """-> dRows [M, D] of grad_scale·Σ dloss·loss, the positive's term included (the queue never gets a
    gradient: no column pass)."""
    from fastssl.kernels.contrastive import queue_backward

    return queue_backward(rows, keys, pos_idx, queue, loss, lse2, dloss, temperature, grad_scale)


_queue_op = torch.library.custom_op("fastssl::queue_rows", _queue_body, mutates_args=())
_queue_bwd_op = torch.library.custom_op("fastssl::queue_rows_bwd", _queue_bwd_body, mutates_args=())
_queue_op.register_fake(_loss_lse_fake)
_queue_bwd_op.register_fake(lambda rows, *_: rows.new_empty(rows.shape))


def _queue_setup(ctx, inputs, output):
    rows, keys, pos_idx, queue, temperature = inputs
    ctx.save_for_backward(rows, keys, pos_idx, queue, output[0], output[1])
    ctx.temperature = temperature


def _queue_backward(ctx, dloss, _dlse2):
    """dRows (the positive's term included) from the kernels. The keys' gradient, O(M·D), only when
    they need one (MoCo's momentum keys never do): d loss[a] / d keys[pos[a]] = g·(P_pos[a] − 1)·rows[a]/τ,
    P_pos = 2^(t_pos₂ − LSE₂) = e^(−loss[a]), summed per key."""
    rows, keys, pos_idx, queue, loss, lse2 = ctx.saved_tensors
    dloss, tau, scale = dloss.float(), ctx.temperature, grad_scale(ctx)
    drows = dkeys = None
    if ctx.needs_input_grad[0]:
        drows = backward_impl(ctx, _queue_bwd_op, _queue_bwd_body)(rows, keys, pos_idx, queue, loss, lse2, dloss, tau,
                                                                    scale)
    if ctx.needs_input_grad[1]:
        idx = pos_idx.long()
        coef = dloss * (torch.exp(-loss) - 1.0) * (scale / tau)
        dkeys = torch.zeros(keys.shape, device=keys.device, dtype=torch.float32)
        dkeys = dkeys.index_add_(0, idx, coef[:, None] * rows.float()).to(keys.dtype)
    return drows, dkeys, None, None, None


_queue_op.register_autograd(_queue_backward, setup_context=_queue_setup)
_QueueDoor = eager_door(_queue_body, _queue_setup, _queue_backward)
_QueueMeanDoor = mean_door(_queue_body, _queue_setup, _queue_backward)


def triton_queue_rows(rows: Tensor, keys: Tensor, pos_idx: Tensor, queue: Tensor, temperature: float, *,
                      mean: bool = False) -> Tensor:
    """The kernels' twin of ``fastssl.ops.reference.queue_rows`` (MoCo v2: positive keys[pos_idx[a]], the
    queue as negatives), without the [M, 1+K] logits: the forward streams the queue in tiles with the
    positive seeded into the running logsumexp, dRows recomputes the tiles from LSE₂.

    rows [M, D] and queue [K, D] share one dtype (fp32, bf16 or fp16) and device; keys [N, D] any
    float dtype on that device; pos_idx int [M]. The positives run in the kernels (an fp32 row-wise dot
    in the forward; dRows' epilogue adds their gradient from the saved loss, P_pos = e^(−loss)): no
    eager ops or autograd nodes for them. Returns loss [M] fp32 (its mean with ``mean=True``); no
    gradient into the queue.
    """
    from fastssl.kernels.contrastive import _as_index, check_queue

    check_queue(rows, keys, pos_idx, queue, temperature)
    args = (rows, keys, _as_index(pos_idx, rows.device), queue.detach(), float(temperature))
    return _enter(_QueueDoor, _QueueMeanDoor, _queue_op, args, mean)


# --- unit rows: [x1; x2] / max(‖row‖, 1e-12), the ops' ``_unit`` in one launch each way ----------
def _unit_body(x1: Tensor, x2: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """-> (y [n1 + n2, D] in x1's dtype, 1/‖row‖ [n1 + n2] fp32)."""
    from fastssl.kernels.contrastive import unit_fwd

    return unit_fwd(x1, x2)


def _unit_bwd_body(x1: Tensor, x2: Optional[Tensor], rn: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """-> (dx1, dx2), dx2 empty without x2."""
    from fastssl.kernels.contrastive import unit_bwd

    dx1, dx2 = unit_bwd(x1, x2, rn, dy)
    return dx1, (dx2 if dx2 is not None else empty_flag(x1))


_unit_op = torch.library.custom_op("fastssl::unit_rows", _unit_body, mutates_args=())
_unit_bwd_op = torch.library.custom_op("fastssl::unit_rows_bwd", _unit_bwd_body, mutates_args=())


@_unit_op.register_fake
def _(x1, x2):
    n = x1.shape[0] + (x2.shape[0] if x2 is not None else 0)
    return x1.new_empty((n, x1.shape[1])), x1.new_empty(n, dtype=torch.float32)


@_unit_bwd_op.register_fake
def _(x1, x2, rn, dy):
    return torch.empty_like(x1), (torch.empty_like(x2) if x2 is not None else empty_flag(x1))


def _unit_setup(ctx, inputs, output):
    x1, x2 = inputs
    ctx.save_for_backward(x1, x2, output[1])


def _unit_backward(ctx, dy, _drn):
    x1, x2, rn = ctx.saved_tensors
    dx1, dx2 = backward_impl(ctx, _unit_bwd_op, _unit_bwd_body)(x1, x2, rn, dy)
    return (dx1 if ctx.needs_input_grad[0] else None), (dx2 if ctx.needs_input_grad[1] else None)


_unit_op.register_autograd(_unit_backward, setup_context=_unit_setup)
_UnitDoor = eager_door(_unit_body, _unit_setup, _unit_backward)


def fused_unit_rows(x1: Tensor, x2: Tensor | None = None) -> Tensor:
    """[x1; x2] (x2 may be None; [n_i, D], one dtype of fp32/bf16/fp16, unit stride along D) -> the
    rows / max(‖row‖, 1e-12) as one [n1 + n2, D] tensor in that dtype, the norm and the backward
    in fp32, as ``F.normalize(torch.cat([x1, x2]).float()).to(dtype)``, without the concatenation."""
    return (_UnitDoor.apply(x1, x2) if _door_open() else _unit_op(x1, x2))[0]


def unit_rows(x: Tensor, x2: Tensor | None = None) -> Tensor | None:
    """``fused_unit_rows`` of a 2-D operand (or of two, concatenated) when it applies (``OPTIONS["fused_unit"]``,
    the kernels take the operands, not under torch.compile, which fuses the eager normalisation
    itself); None otherwise, and the caller normalises in torch."""
    if not OPTIONS["fused_unit"] or torch.compiler.is_compiling():
        return None
    from fastssl.kernels.contrastive import unit_fwd, unit_takes

    if not unit_takes(x, x2):
        return None
    if x.stride(1) != 1:
        x = x.contiguous()
    if x2 is not None and x2.stride(1) != 1:
        x2 = x2.contiguous()
    if not (torch.is_grad_enabled() and (x.requires_grad or (x2 is not None and x2.requires_grad))):
        return unit_fwd(x, x2)[0]  # nothing to differentiate (momentum keys, the queue): no autograd node
    return fused_unit_rows(x, x2)
