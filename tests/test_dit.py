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


def test_interpolated_positions_give_a_finer_grid_the_positions_a_model_knows():
    """pos_grid N: on N x N tokens the positions are the indices, as without it; on 2N x 2N every
    other token has the position of an N x N token (PixArt-alpha), so a model trained at 256 px
    starts a 512 px stage from a coherent image rather than from positions it never saw."""
    assert torch.equal(sincos_2d(32, 4, 4, grid=4), sincos_2d(32, 4, 4))
    fine = sincos_2d(32, 8, 8, grid=4).reshape(8, 8, 32)
    assert torch.allclose(fine[::2, ::2].reshape(16, 32), sincos_2d(32, 4, 4), atol=1e-6)
    assert torch.cdist(fine.reshape(64, 32), fine.reshape(64, 32)).fill_diagonal_(1).min() > 0
    torch.manual_seed(0)
    dit = DiT(hidden_size=32, depth=1, num_heads=2, pos_grid=4)
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    plain = DiT(hidden_size=32, depth=1, num_heads=2)
    plain.load_state_dict(dit.state_dict())  # a config value, not a weight: any trained model takes it
    x, t, text, mask = _inputs(side=8)   # patch 2: 4 x 4 tokens, positions as before
    assert torch.equal(dit(x, t, text, mask), plain(x, t, text, mask))
    x, t, text, mask = _inputs(side=16)  # 8 x 8 tokens: positions interpolated
    assert not torch.allclose(dit(x, t, text, mask), plain(x, t, text, mask))


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
