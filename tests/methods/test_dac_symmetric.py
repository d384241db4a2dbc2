"""DAC's ``small_feature`` (dac.txt Table 7): the asymmetric default (view A's encoder CLS through
``decoder_embed``) against the symmetric ablation (view A's decoder output CLS). The symmetric path
is checked against an eager reference written the way MAE's ``forward_decoder`` runs a view with
nothing masked (dense blocks, no mask tokens, the decoder's table resampled to view A's grid)."""
from __future__ import annotations

import copy

import pytest
import torch

from fastssl.methods.base import StepOutput
from fastssl.methods.dac import DACConfig
from fastssl.methods.masked_image import draw_masks
from fastssl.methods.parts import pair_metrics, param_dtype, simsiam_loss
from fastssl.models.vit.pos_embed import resample_patch_pos
from fastssl.ops import reference

import _masked_image_ref as ref
from test_masked_image import B, CTX, batch_for, make, run


def symmetric_eager(model, batch, ctx) -> StepOutput:
    """``ref.dac_forward`` with view A's feature taken after the decoder (both views' decoder CLS)."""
    dtype = param_dtype(model.encoder)
    full, small = batch["full"][0].to(dtype), batch["small"][0].to(dtype)
    b, p = full.shape[0], model.encoder.patch_size
    num_patches = model.encoder.grid[0] * model.encoder.grid[1]
    ids_keep, mask = draw_masks(ctx.generator(), 1, b, num_patches, model.cfg.mask_ratio, full.device)
    dec = model.decoder
    pred, cls_b = ref.decoder_eager(dec, ref.eager_encode(model.encoder, full, ids_keep), ids_keep)
    side = small.shape[-1] // p
    x = dec.decoder_embed(ref.eager_encode(model.encoder, small))  # [B, 1 + side², Dd], nothing masked
    pos = torch.cat([dec.pos_embed[:1], resample_patch_pos(dec.pos_embed[1:], dec.grid, (side, side))])
    cls_a = dec.norm(ref.dense_blocks(dec.blocks, x + pos.to(x.dtype).unsqueeze(0)))[:, 0]
    pr, z = model.heads(torch.cat([cls_a, cls_b]))
    l_con = simsiam_loss(pr, z)
    l_rec = reference.masked_patch_loss(pred, reference.patchify(full, p), mask, model.cfg.norm_pix)
    lam = model.rec_weight(ctx.epoch)
    metrics = {"loss_simsiam": l_con.detach(), "loss_rec": l_rec.detach(), "rec_weight": torch.tensor(lam)}
    metrics.update(pair_metrics(*z.chunk(2)))
    return StepOutput(loss=l_con + lam * l_rec, metrics=metrics)


def test_default_is_the_asymmetric_design():
    assert DACConfig().small_feature == "encoder"
    default, explicit = make("dac"), make("dac", small_feature="encoder")
    batch = batch_for(default)
    out_d, g_d = run(default, batch)
    out_e, g_e = run(explicit, batch)
    assert torch.equal(out_d.loss, out_e.loss)
    assert g_d.keys() == g_e.keys() and all(torch.equal(g_d[n], g_e[n]) for n in g_d)


def test_symmetric_equals_its_eager_reference():
    fast = make("dac", small_feature="decoder", backend="triton")
    eager = copy.deepcopy(fast)
    batch = batch_for(fast)
    out_f, g_f = run(fast, batch)
    out_e, g_e = run(eager, batch, symmetric_eager)
    torch.testing.assert_close(out_f.loss, out_e.loss, rtol=1e-5, atol=1e-6)
    for key in out_e.metrics:
        torch.testing.assert_close(out_f.metrics[key], out_e.metrics[key], rtol=1e-5, atol=1e-6, msg=key)
    trainable = {n for n, p in fast.named_parameters() if p.requires_grad}
    assert set(g_f) == set(g_e) == trainable, trainable ^ set(g_f)
    for n in g_e:
        err, scale = (g_f[n] - g_e[n]).abs().max().item(), g_e[n].abs().max().item()
        assert scale > 0, n
        assert err <= 1e-4 * scale + 1e-7, (n, err, scale)


def test_symmetric_differs_only_in_view_a_feature():
    asym = make("dac")
    sym = make("dac", small_feature="decoder")  # same seed: the same weights
    for (n, a), (_, s) in zip(asym.state_dict().items(), sym.state_dict().items()):
        assert torch.equal(a, s), n
    batch = batch_for(asym)
    out_a, out_s = asym(batch, CTX), sym(batch, CTX)
    # The same masks and the same view B: the reconstruction term is the same; the SimSiam term is not.
    assert torch.equal(out_a.metrics["loss_rec"], out_s.metrics["loss_rec"])
    assert not torch.allclose(out_a.metrics["loss_simsiam"], out_s.metrics["loss_simsiam"])
    assert not torch.allclose(out_a.loss, out_s.loss)


@pytest.mark.parametrize("feature", ["encoder", "decoder"])
def test_view_a_feature_reaches_the_decoder_only_when_symmetric(feature):
    """The gradient of view A's feature alone: the decoder's blocks and norm are on its path only in
    the symmetric design; its mask token and pixel head never are (view A masks nothing, reconstructs nothing)."""
    model = make("dac", small_feature=feature)
    batch = batch_for(model)
    ids_keep, _ = draw_masks(CTX.generator(), 1, B, 16, model.cfg.mask_ratio, torch.device("cpu"))
    _, h = model.features(batch["full"][0], batch["small"][0], ids_keep)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(h[:B].sum(), list(params.values()), allow_unused=True)
    reached = {n for n, g in zip(params, grads) if g is not None and g.abs().max() > 0}
    on_decoder = {n for n in reached if n.startswith("decoder.")}
    assert "encoder.cls_token" in reached and not any(n.startswith("heads.") for n in reached)
    if feature == "encoder":
        assert on_decoder == {"decoder.decoder_embed.weight", "decoder.decoder_embed.bias"}
    else:
        assert {"decoder.decoder_embed.weight", "decoder.norm.weight", "decoder.blocks.0.attn.qkv.weight",
                "decoder.blocks.1.mlp.fc2.weight"} <= on_decoder
        assert not on_decoder & {"decoder.mask_token", "decoder.pred.weight", "decoder.pred.bias"}
