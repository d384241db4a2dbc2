"""The contrastive losses as one autograd node each, eagerly (notes/host_path.md).

On the ops' path a loss is a chain of nodes: the unit kernel's door for the normalisation, the loss's
mean door (and for NT-Xent / DCL the views as one tensor between them). Each node is Python and
autograd-engine time that a small loss pays on the host every call, and a small loss's call is
bound by its host (issue 21). These doors run the same bodies and launchers as the ops
(``fastssl.ops.contrastive_doors``), in the same order, inside one node:
- ``two_view_node``: NT-Xent / DCL / DCLW, in one process (rows are the columns) or over several ranks
  (the gather inside the node);
- ``query_node``: InfoNCE whose keys need no gradient (MoCo's momentum keys), against the keys
  (MoCo v3, M-MoCo) or MoCo v2's queue.
They apply eagerly only (torch.compile takes the custom ops) and with ``OPTIONS["one_node"]`` and
``OPTIONS["fused_unit"]`` on; bench/contrastive.py's ``triton[nodes]`` times the ops' path beside them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from fastssl.ops import reference
from fastssl.ops.contrastive_doors import OPTIONS, _door_open, _queue_body, _rows_body, _unit_body
from fastssl.ops.distributed import all_gather_rows, reduce_scatter_rows


class _TwoViewDoor(torch.autograd.Function):
    """NT-Xent / DCL / DCLW, eagerly, as one autograd node: [z1; z2] normalised by the unit kernel,
    (``gathered``) all-gathered from every rank into rank-major columns (``_rank_major_index``), the
    loss of the local rows against the columns, its mean. Backward: in one process the symmetric pass
    (rows are the columns); gathered, the rows' and the columns' passes, the columns' gradient summed
    over ranks into our block (a reduce-scatter) and added onto the rows'; then the unit backward.
    The ops' path makes three nodes of it (unit rows, the gather or nothing, the loss's mean door):
    the same bodies and launchers in the same order (DCLW's weights from the same reference
    function); under torch.compile the ops' path runs."""

    @staticmethod
    def forward(ctx, z1, z2, pos_idx, excl_idx, temperature, exclude_pos, weight_sigma, gathered):
        rows, rn = _unit_body(z1, z2)
        cols = all_gather_rows(rows) if gathered else rows
        pos_weight = None
        if weight_sigma is not None:  # DCLW: the global weights from the (gathered) unit rows, ours kept
            n, rank = z1.shape[0], dist.get_rank() if gathered else 0
            local = reference.dclw_weights(cols.view(-1, 2, n, cols.shape[1]), weight_sigma)[rank * n : (rank + 1) * n]
            pos_weight = torch.cat([local, local])
        loss, lse2 = _rows_body(rows, cols, pos_idx, excl_idx, pos_weight, temperature, exclude_pos)
        ctx.save_for_backward(z1, z2, rn, rows, cols, pos_idx, excl_idx, pos_weight, lse2)
        ctx.temperature, ctx.exclude_pos, ctx.gathered = temperature, exclude_pos, gathered
        return loss.mean()

    @staticmethod
    def backward(ctx, dmean):
        from fastssl.kernels.contrastive import backward, unit_bwd

        z1, z2, rn, rows, cols, pos_idx, excl_idx, pos_weight, lse2 = ctx.saved_tensors
        m = rows.shape[0]
        drows, dcols = backward(rows, cols, pos_idx, excl_idx, pos_weight, lse2, dmean.expand(m), ctx.temperature,
                                ctx.exclude_pos, True, True, not ctx.gathered, 1.0 / m)  # mean_door's scale
        if ctx.gathered:
            drows += reduce_scatter_rows(dcols)  # our rows as every rank's columns
        dz1, dz2 = unit_bwd(z1, z2, rn, drows)
        return (dz1 if ctx.needs_input_grad[0] else None), (dz2 if ctx.needs_input_grad[1] else None), *([None] * 6)


def two_view_node_applies(z1: Tensor, z2: Tensor) -> bool:
    """Whether NT-Xent / DCL on the kernels takes ``_TwoViewDoor``: eager, both switches on, the unit
    kernel taking both views."""
    if not (OPTIONS["one_node"] and OPTIONS["fused_unit"] and _door_open()):
        return False
    from fastssl.kernels.contrastive import unit_takes

    return unit_takes(z1, z2) and z1.stride(1) == 1 and z2.stride(1) == 1


def two_view_node(z1: Tensor, z2: Tensor, pos_idx: Tensor, self_idx: Tensor, temperature: float,
                  exclude_pos: bool, weight_sigma: float | None, gathered: bool) -> Tensor:
    """The two-view loss's mean through ``_TwoViewDoor`` (``two_view_node_applies``; ``pos_idx`` /
    ``self_idx``: the layout's index arrays; ``weight_sigma``: DCLW's σ; ``gathered``: over several
    ranks, whose sizes the caller checked)."""
    return _TwoViewDoor.apply(z1, z2, pos_idx, self_idx, float(temperature), exclude_pos, weight_sigma, gathered)


class _QueryDoor(torch.autograd.Function):
    """InfoNCE eagerly as one autograd node when only the queries need a gradient (MoCo's momentum
    keys): the query rows normalised by the unit kernel, their loss against the unit key columns
    (MoCo v3, M-MoCo) or against the queue with the keys as outside positives (MoCo v2), the mean.
    Two nodes on the ops' path (unit rows, the loss's mean door); same bodies and launchers."""

    @staticmethod
    def forward(ctx, q, cols, pos_idx, excl_idx, queue, temperature):
        rows, rn = _unit_body(q, None)
        if queue is None:
            loss, lse2 = _rows_body(rows, cols, pos_idx, excl_idx, None, temperature, False)
        else:
            loss, lse2 = _queue_body(rows, cols, pos_idx, queue, temperature)
        ctx.save_for_backward(q, rn, rows, cols, pos_idx, excl_idx, queue, loss if queue is not None else None, lse2)
        ctx.temperature = temperature
        return loss.mean()

    @staticmethod
    def backward(ctx, dmean):
        from fastssl.kernels.contrastive import backward, queue_backward, unit_bwd

        q, rn, rows, cols, pos_idx, excl_idx, queue, loss, lse2 = ctx.saved_tensors
        m, t = rows.shape[0], ctx.temperature
        dloss = dmean.expand(m)  # with the mean's 1/M as the kernels' scale (mean_door)
        if queue is None:
            drows, _ = backward(rows, cols, pos_idx, excl_idx, None, lse2, dloss, t, False, True, False, False, 1.0 / m)
        else:
            drows = queue_backward(rows, cols, pos_idx, queue, loss, lse2, dloss, t, 1.0 / m)
        return unit_bwd(q, None, rn, drows)[0], None, None, None, None, None


def query_node_applies(q: Tensor, k: Tensor) -> bool:
    """Whether InfoNCE on the kernels takes ``_QueryDoor``: eager, both switches on, the queries [M, D]
    needing a gradient and the keys none, the unit kernel taking the queries."""
    if not (OPTIONS["one_node"] and OPTIONS["fused_unit"] and _door_open()):
        return False
    if not (torch.is_grad_enabled() and q.requires_grad) or k.requires_grad or q.stride(1) != 1:
        return False
    from fastssl.kernels.contrastive import unit_takes

    return unit_takes(q)


def query_node(q: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor | None, queue: Tensor | None,
               temperature: float) -> Tensor:
    """``_QueryDoor`` after the checks the ops' path makes (``prepare`` / ``check_queue`` on the queries,
    which the unit rows match in shape, dtype and device)."""
    from fastssl.kernels.contrastive import check_queue, prepare

    if queue is None:
        pos_idx, excl_idx, _ = prepare(q, cols, pos_idx, excl_idx, temperature, None)
    else:
        check_queue(q, cols, pos_idx, queue, temperature)
    return _QueryDoor.apply(q, cols, pos_idx, excl_idx, queue, float(temperature))
