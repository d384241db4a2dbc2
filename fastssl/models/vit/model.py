"""A ViT that encodes any mix of views in one call: full images, masked views, resized views,
chunked views, multi-crop, each sequence attending only within itself.

Parameters carry timm's names and shapes (``cls_token [1,1,D]``, ``pos_embed [1,1+N,D]``,
``patch_embed.proj`` Conv2d, ``blocks.i.*``, ``norm``), so ``state_dict()`` loads into
``timm.create_model(name, img_size=..., patch_size=..., num_classes=0)`` with ``strict=True`` and
back. For full images ``forward_features`` / ``forward`` equal timm's.

    vit = PackedViT(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    out = vit.encode([ChunkedView(x1, n_chunks=8), ImageView(x2)], taps=(5,))
    q = out[0].cls          # [8, B, D]  one query per chunk
    k = out[1].cls          # [B, D]
    h = out[1].taps[5].mean # [B, D]     mean patch token after block 5
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastssl.models.vit.attention import AttentionDispatch, BackendName
from fastssl.models.vit.blocks import PackedBlock
from fastssl.models.vit.embed import EmbedParams, embed_view
from fastssl.models.vit.outputs import Encoded, ViewOutput, unpack_view
from fastssl.models.vit.packing import PackInfo, Segment, ViewSlot
from fastssl.models.vit.views import ImageView, View, view_batch


class PackedViT(nn.Module):
    """ViT (timm layout: learned absolute positions, CLS with a positional embedding, pre-norm
    blocks, final LayerNorm) on packed variable-length sequences.

    Args: img_size / patch_size / in_chans define the native grid ``(img/p)²`` whose positional
    table is learned; other grids are resampled. ``init_values``: LayerScale (None: off).
    ``drop_path_rate``: stochastic depth, linear in depth, per sequence. ``attn_backend``: "auto"
    or a name from ``fastssl.models.vit.attention.BACKENDS``. ``weight_init``: timm's modes
    ("" timm default, "jax", "moco"; "skip" leaves the parameters as constructed, for loading).
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, drop_path_rate: float = 0.0,
                 attn_backend: BackendName = "auto", weight_init: str = "") -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
                           drop_path_rate=drop_path_rate)
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.embed_dim = self.num_features = embed_dim
        self.dispatch = AttentionDispatch(attn_backend)
        # A module named patch_embed holding timm's Conv2d so the state_dict key is patch_embed.proj.*;
        # the conv is never called, its weight is used as the patch-embed matrix (embed.py).
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # timm's linear rule
        self.blocks = nn.ModuleList(
            PackedBlock(embed_dim, num_heads, self.dispatch, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                        init_values=init_values, drop_path=dpr[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.grad_checkpointing = False
        self.init_weights(weight_init)

    # ---------------------------------------------------------------- set-up
    def init_weights(self, mode: str = "") -> None:
        """timm's ViT initialisation (the module names match, so timm's name-based rules apply)."""
        from timm.layers import trunc_normal_
        from timm.models import named_apply
        from timm.models.vision_transformer import get_init_weights_vit

        if mode == "skip":
            return
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        named_apply(get_init_weights_vit(mode, 0.0), self)

    def set_attn_backend(self, backend: BackendName) -> None:
        self.dispatch.set_backend(backend)

    def attn_backend(self, device: torch.device | str, dtype: torch.dtype) -> str:
        """Probe (once, logged) what runs on this device type and dtype; return the forced backend
        or "auto" (then ``self.dispatch.pick(layout, ...)`` says what a given pack runs)."""
        return self.dispatch.resolve(torch.device(device), dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    # ---------------------------------------------------------------- timm interop
    @classmethod
    def from_timm(cls, model: nn.Module | str, *, attn_backend: BackendName = "auto", **create_kwargs) -> "PackedViT":
        """From a timm ``VisionTransformer`` (or a timm model name plus ``create_model`` kwargs such
        as ``img_size``, ``patch_size``, ``drop_path_rate``), weights copied, ``strict=True``."""
        if isinstance(model, str):
            import fastssl  # noqa: F401  (torchvision shim before timm)
            import timm

            model = timm.create_model(model, num_classes=0, **create_kwargs)
        _check_timm_supported(model)
        blk = model.blocks[0]
        ls = blk.ls1
        depth = len(model.blocks)
        # timm's stochastic depth grows linearly to drop_path_rate at the last block
        last_dp = getattr(model.blocks[-1].drop_path1, "drop_prob", 0.0)
        vit = cls(
            img_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0],
            in_chans=model.patch_embed.proj.in_channels, embed_dim=model.embed_dim, depth=depth,
            num_heads=blk.attn.num_heads, mlp_ratio=blk.mlp.fc1.out_features / model.embed_dim,
            qkv_bias=blk.attn.qkv.bias is not None,
            # any non-None value switches LayerScale on; the gammas themselves come with the state_dict
            init_values=float(getattr(ls, "init_values", 1.0)) if hasattr(ls, "gamma") else None,
            drop_path_rate=last_dp, attn_backend=attn_backend, weight_init="skip",
        )
        vit.load_state_dict(model.state_dict(), strict=True)
        return vit

    def timm_kwargs(self) -> dict:
        """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` giving the same network."""
        c = self.config
        return dict(img_size=c["img_size"], patch_size=c["patch_size"], in_chans=c["in_chans"], embed_dim=c["embed_dim"],
                    depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], qkv_bias=c["qkv_bias"],
                    init_values=c["init_values"], drop_path_rate=c["drop_path_rate"], num_classes=0)

    def to_timm(self) -> nn.Module:
        """A timm ``VisionTransformer`` holding a copy of these weights (``strict=True``)."""
        import fastssl  # noqa: F401
        from timm.models.vision_transformer import VisionTransformer

        m = VisionTransformer(**self.timm_kwargs())
        m.load_state_dict(self.state_dict(), strict=True)
        return m.to(self.pos_embed.device, self.pos_embed.dtype)

    # ---------------------------------------------------------------- packing
    def embed_params(self) -> EmbedParams:
        pos = self.pos_embed[0]
        return EmbedParams(self.patch_size, self.patch_embed.proj.weight, self.patch_embed.proj.bias,
                           self.cls_token[0, 0] + pos[0], pos[1:], self.grid)

    def pack(self, views: Sequence[View]) -> tuple[torch.Tensor, PackInfo, list[torch.Tensor]]:
        """Views -> packed input tokens ``x [T, D]``, the ``PackInfo``, and per view the grid index
        ``[P_v]`` of each of its patch tokens (in packed order)."""
        if not views:
            raise ValueError("encode needs at least one view")
        ep = self.embed_params()
        pieces, slots, patch_ids = [], [], []
        seq = tok = 0
        for vi, view in enumerate(views):
            kind, n_chunks, grid, segs = embed_view(view, ep)
            segments = []
            for s in segs:
                count, seqlen = s.tokens.shape[0], s.tokens.shape[1]
                segments.append(Segment(vi, seq, tok, count, s.patch_ids.shape[1], view.cls))
                seq += count
                tok += count * seqlen
                pieces.append(s.tokens.reshape(count * seqlen, -1))
            slots.append(ViewSlot(kind, view_batch(view), n_chunks, view.cls, grid, tuple(segments)))
            patch_ids.append(torch.cat([s.patch_ids.reshape(-1) for s in segs]))
        x = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return x, PackInfo.build(tuple(slots), x.device), patch_ids

    # ---------------------------------------------------------------- forward
    def forward_packed(self, x: torch.Tensor, pack: PackInfo, *, taps: Iterable[int] = (),
                       max_block: int | None = None) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """Blocks (and the final norm) on packed tokens ``x [T, D]``.

        Returns ``(hidden [T, D] after the final norm, or None when stopped early;
        {block index: [T, D] output of that block, before the final norm})``. ``max_block``: run
        blocks 0..max_block only (intermediate-loss methods that back-propagate from one stage).
        """
        depth = len(self.blocks)
        last = depth - 1 if max_block is None else _index(max_block, depth)
        want = sorted({_index(i, depth) for i in taps})
        if want and want[-1] > last:
            raise ValueError(f"tap {want[-1]} lies after max_block {last}")
        token_seq = pack.token_seq if (self.training and any(b.drop_path for b in self.blocks)) else None
        layout = pack.layout
        # the attention backend's choice and device-side inputs (flex's block mask) are made here,
        # outside the block stack, which engine.compile compiles as one region
        self.dispatch.prepare(layout, x.device, _compute_dtype(x))
        run = self.__dict__.get("_blocks_region") or run_blocks
        x, out = run(self, x, layout, token_seq, last, tuple(want))
        return (self.norm(x) if last == depth - 1 else None), out

    def compile_blocks(self, **compile_kwargs) -> None:
        """Compile the block stack (blocks 0..max_block with taps) as *one* region: one guard check and
        one compiled forward / backward per encoder call instead of one per block. Per-block regions
        measured host-bound on the H200 (M-MoCo 8 chunks: 31.0 ms wall over 20.0 ms of kernels)."""
        self.__dict__["_blocks_region"] = torch.compile(run_blocks, **compile_kwargs)

    def encode(self, views: Sequence[View], *, taps: Iterable[int] = (), max_block: int | None = None,
               tap_norm: bool = False) -> Encoded:
        """Encode a list of views in one packed forward; see ``outputs.ViewOutput`` for the result.

        ``taps``: block indices whose outputs are also returned (negative indices count from the
        end); ``tap_norm`` applies the final LayerNorm to them too. ``max_block``: stop after that
        block (then ``final`` and ``hidden`` are None).
        """
        x, pack, patch_ids = self.pack(views)
        hidden, tapped = self.forward_packed(x, pack, taps=taps, max_block=max_block)
        if tap_norm:
            tapped = {i: self.norm(t) for i, t in tapped.items()}
        outs = []
        for slot, pid in zip(pack.views, patch_ids):
            seq0 = slot.seq_start
            outs.append(ViewOutput(
                final=unpack_view(hidden, slot) if hidden is not None else None,
                taps={i: unpack_view(t, slot) for i, t in tapped.items()},
                patch_ids=pid,
                owner=pack.owner[seq0:seq0 + slot.num_seqs],
                slot=slot,
            ))
        return Encoded(tuple(outs), hidden, pack)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_features`` for whole images: ``[B, C, H, W] -> [B, 1+N, D]`` (normed)."""
        x, pack, _ = self.pack([ImageView(images)])
        hidden, _ = self.forward_packed(x, pack)
        return hidden.view(images.shape[0], -1, self.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """timm's ``forward`` with ``num_classes=0`` (token pooling): ``[B, C, H, W] -> [B, D]`` CLS."""
        return self.forward_features(images)[:, 0]


def run_blocks(vit: PackedViT, x: torch.Tensor, layout, token_seq: torch.Tensor | None, last: int,
               want: tuple[int, ...]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Blocks 0..last on packed tokens; returns the last output and {i: output of block i} for i in
    ``want``. A module-level function taking the ViT, so a compiled copy (``compile_blocks``) stays
    right for deep copies of the ViT (an EMA target made from a compiled encoder)."""
    out: dict[int, torch.Tensor] = {}
    for i in range(last + 1):
        blk = vit.blocks[i]
        if vit.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, x, layout, token_seq, use_reentrant=False)
        else:
            x = blk(x, layout, token_seq)
        if i in want:
            out[i] = x
    return x, out


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's when it is on for x's device (the residual stream then
    stays fp32 while q, k, v come out of the qkv projection in bf16/fp16), else x's own."""
    dev = x.device.type
    if dev in ("cuda", "cpu") and x.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _index(i: int, depth: int) -> int:
    j = i + depth if i < 0 else i
    if not 0 <= j < depth:
        raise ValueError(f"block index {i} out of range for depth {depth}")
    return j


def _check_timm_supported(m: nn.Module) -> None:
    """Only plain ViTs: CLS with a positional embedding, no registers, no pre-norm, no qk-norm,
    token pooling with the norm before the pool."""
    problems = []
    if getattr(m, "cls_token", None) is None:
        problems.append("no class token")
    if getattr(m, "reg_token", None) is not None:
        problems.append("register tokens")
    if getattr(m, "no_embed_class", False):
        problems.append("no_embed_class")
    if getattr(m, "pos_embed", None) is None:
        problems.append("no positional embedding")
    if not isinstance(getattr(m, "norm_pre", nn.Identity()), nn.Identity):
        problems.append("pre_norm")
    if not isinstance(getattr(m, "fc_norm", nn.Identity()), nn.Identity):
        problems.append("fc_norm")
    if getattr(m, "global_pool", "token") != "token":
        problems.append(f"global_pool={m.global_pool!r}")
    if getattr(m, "num_classes", 0):
        problems.append("a classifier head (create it with num_classes=0)")
    blk = m.blocks[0] if hasattr(m, "blocks") else None
    if blk is None or type(blk).__name__ != "Block" or not isinstance(blk.attn.q_norm, nn.Identity):
        problems.append("non-standard blocks (qk_norm, parallel, ...)")
    if problems:
        raise ValueError("PackedViT cannot mirror this timm model: " + ", ".join(problems))
