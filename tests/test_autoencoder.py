import torch

from fundusgen.model.autoencoder import (AutoencoderLoss, AutoencoderLossWeights, FundusAutoencoder,
                                         PatchDiscriminator, adaptive_weight, green_edges, ssim)


def test_autoencoder_downsamples_by_eight_and_decodes_back_to_the_input_size():
    ae = FundusAutoencoder(block_out_channels=(8, 16, 16), norm_num_groups=4, latent_channels=4)
    assert ae.downsampling_factor == 8
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = ae.encode(x).mode()
    assert z.shape == (2, 4, 8, 8)
    assert ae.decode(z).shape == x.shape


def test_autoencoder_folder_round_trips_with_safetensors(tmp_path):
    ae = FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4, scaling_factor=0.5)
    ae.save_pretrained(str(tmp_path / "ae"))
    assert (tmp_path / "ae" / "config.json").exists()
    assert list((tmp_path / "ae").glob("*.safetensors"))
    back = FundusAutoencoder.from_pretrained(str(tmp_path / "ae"))
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(ae.encode(x).mean, back.encode(x).mean)
    assert back.config.scaling_factor == 0.5


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    x = torch.rand(2, 3, 32, 32)
    assert abs(float(ssim(x, x)) - 1) < 1e-5
    light = float(ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1)))
    heavy = float(ssim(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1)))
    assert heavy < light < 1


def test_edge_term_sees_a_blurred_vessel_that_l1_barely_notices():
    x = torch.full((1, 3, 32, 32), 0.6)
    x[:, 1, :, 15:17] = 0.2  # a thin dark 'vessel' in the green channel
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
    loss_edge = AutoencoderLoss(AutoencoderLossWeights(l1=0, ssim=0, edge=1, kl=0))
    ae = FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4)
    post = ae.encode(x * 2 - 1)
    _, terms = loss_edge(x * 2 - 1, blurred * 2 - 1, post)
    assert terms["edge"] > 2 * terms["l1"]
    assert float((green_edges(x) - green_edges(x)).abs().max()) == 0


def test_edge_term_can_be_switched_off_for_the_ablation():
    ae = FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    _, terms = AutoencoderLoss(AutoencoderLossWeights(edge=0))(x, x, ae.encode(x))
    assert "edge" not in terms


def test_adaptive_adversarial_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    """VQGAN's lambda = |grad L_rec| / (|grad L_GAN| + delta) at the decoder's last layer: the loss
    then holds exactly rec + adversarial * lambda * gan, and lambda carries no gradient."""
    torch.manual_seed(0)
    ae = FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4)
    disc = PatchDiscriminator(channels=8, layers=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, post = ae(x, sample=False)
    last = ae.vae.decoder.conv_out.weight
    w = AutoencoderLossWeights(adversarial=0.5, adversarial_adaptive=True)
    loss, terms = AutoencoderLoss(w)(x, recon, post, disc, last_layer=last)
    plain, _ = AutoencoderLoss(AutoencoderLossWeights())(x, recon, post)
    g_rec = torch.autograd.grad(plain, last, retain_graph=True)[0].norm()
    g_gan = torch.autograd.grad(-disc(recon).mean(), last, retain_graph=True)[0].norm()
    assert abs(terms["adversarial_lambda"] - float(g_rec / (g_gan + 1e-4))) < 1e-4 * terms["adversarial_lambda"]
    expected = plain.item() + 0.5 * terms["adversarial_lambda"] * terms["adversarial"]
    assert abs(loss.item() - expected) < 1e-5
    assert not adaptive_weight(plain, -disc(recon).mean(), last).requires_grad
    # a tiny adversarial gradient is clamped, not divided into infinity
    assert float(adaptive_weight(plain, 0 * recon.sum(), last)) <= 1e4
    # without the flag (or without the layer) the weight is the configured one
    fixed, terms = AutoencoderLoss(AutoencoderLossWeights(adversarial=0.5))(x, recon, post, disc, last_layer=last)
    assert "adversarial_lambda" not in terms and abs(fixed.item() - (plain.item() + 0.5 * terms["adversarial"])) < 1e-5
