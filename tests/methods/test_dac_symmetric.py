"""DAC's ``small_feature`` (dac.txt Table 7): the asymmetric default (view A's encoder CLS through
``decoder_embed``) against the symmetric ablation (view A's decoder output CLS). The symmetric path
is checked against an eager reference written the way MAE's ``forward_decoder`` runs a view with
nothing masked (dense blocks, no mask tokens, the decoder's table resampled to view A's grid)."""
from __future__ import annotations

import pytest
import torch

from fastssl.methods.dac import DACConfig
from fastssl.methods.masked_image import draw_masks

from test_masked_image import B, CTX, assert_equals_eager_reference, batch_for, make, run


def test_default_is_the_asymmetric_design():
    assert DACConfig().small_feature == "encoder"
    default, explicit = make("dac"), make("dac", small_feature="encoder")
    batch = batch_for(default)
    out_d, g_d = run(default, batch)
    out_e, g_e = run(explicit, batch)
    assert torch.equal(out_d.loss, out_e.loss)
    assert g_d.keys() == g_e.keys() and all(torch.equal(g_d[n], g_e[n]) for n in g_d)


def test_symmetric_equals_its_eager_reference():
    """``_masked_image_ref.dac_forward`` runs view A through the decoder the way MAE's
    ``forward_decoder`` runs a view with nothing masked (dense blocks, the table resampled to its grid)."""
    assert_equals_eager_reference(make("dac", small_feature="decoder", backend="triton"))


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
