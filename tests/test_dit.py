import torch

from fundusgen.model.dit import DiT, sincos_2d


def _inputs(b=2, c=4, side=8, tokens=5):
    return torch.randn(b, c, side, side), torch.rand(b), torch.randn(b, tokens, 384), torch.ones(b, tokens, dtype=torch.bool)


def test_dit_predicts_a_velocity_of_the_latent_shape_at_several_resolutions():
    dit = DiT(hidden_size=32, depth=2, num_heads=2)
    for side in (8, 16):
        x, t, text, mask = _inputs(side=side)
        assert dit(x, t, text, mask).shape == x.shape


def test_dit_starts_as_zero_output_adaln_zero():
    dit = DiT(hidden_size=32, depth=2, num_heads=2)
    assert torch.count_nonzero(dit(*_inputs())) == 0


def test_padding_tokens_of_the_caption_are_ignored():
    torch.manual_seed(0)
    dit = DiT(hidden_size=32, depth=1, num_heads=2)
    for p in dit.parameters():  # move away from the zero init so the caption matters
        torch.nn.init.normal_(p, std=0.05)
    x, t, text, mask = _inputs(b=1)
    padded = torch.cat([text, torch.randn(1, 3, 384)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    assert torch.allclose(dit(x, t, text, mask), dit(x, t, padded, padded_mask), atol=1e-5)


def test_position_embeddings_differ_across_the_grid():
    pe = sincos_2d(32, 4, 4)
    assert pe.shape == (16, 32)
    assert torch.cdist(pe, pe).fill_diagonal_(1).min() > 0


def test_a_refiner_added_to_a_trained_transformer_changes_nothing_until_it_trains():
    torch.manual_seed(0)
    plain = DiT(hidden_size=32, depth=1, num_heads=2)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.05)
    refined = DiT(hidden_size=32, depth=1, num_heads=2, refiner_channels=8, refiner_depth=2)
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("refiner.") for k in missing)
    x, t, text, mask = _inputs()
    assert torch.equal(plain(x, t, text, mask), refined(x, t, text, mask))
    torch.nn.init.normal_(refined.refiner.out.weight, std=0.05)  # once trained, it corrects the velocity
    assert not torch.allclose(plain(x, t, text, mask), refined(x, t, text, mask))


def test_the_refiner_sees_across_patch_borders():
    """The transformer's linear head predicts each patch alone; the refiner's output at a pixel
    depends on the pixels of the neighbouring patch."""
    torch.manual_seed(0)
    dit = DiT(hidden_size=32, depth=1, num_heads=2, patch_size=2, refiner_channels=8, refiner_depth=2)
    for p in dit.refiner.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, t, text, mask = _inputs(b=1)
    x.requires_grad_(True)  # the transformer's head is still zero: every gradient below is the refiner's
    dit(x, t, text, mask)[0, :, 3, 3].sum().backward()  # pixel (3, 3): last row and column of patch (1, 1)
    assert x.grad[0, :, 4:6, 4:6].abs().sum() > 0  # patch (2, 2) reaches it
