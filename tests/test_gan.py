import numpy as np
import pytest
import torch

from pipeline import train_gan
from pipeline.config import GanParams
from pipeline.gan_models import GanNets, Translator, load_translator, save_translator
from pipeline.train_gan import (LOSS_NAMES, ClassSampler, NonFiniteLoss, check_losses, ema_beta_at, ema_update,
                                fingerprint, train)
from pipeline.storage import load_checkpoint

CONFIG = {"n_classes": 3, "style_dim": 4, "latent_dim": 2, "width": 4}


def toy_data(n=48, seed=0):
    """Class = which channel is lit."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    shapes = (torch.rand(n, 28, 28, generator=gen) > 0.7).to(torch.uint8) * 200
    images[torch.arange(n), labels] = shapes
    return images, labels


def tiny_cfg(**overrides):
    values = dict(iterations=6, batch_size=4, style_dim=4, latent_dim=2, width=4, checkpoint_every=2, log_every=2,
                  mixed_precision=False)
    values.update(overrides)
    return GanParams(**values)


def fresh_nets():
    torch.manual_seed(0)
    return GanNets(CONFIG)


def run(tmp_path, cfg, on_log=None, name="last.pt", device="cpu", generator=None):
    """Train fresh nets on the toy data on ``device``; ``generator`` (seeded 1 when None) is left advanced."""
    images, labels = (t.to(device) for t in toy_data())
    nets = fresh_nets().to(device)
    stamp = fingerprint(cfg, CONFIG, 0, images, labels)
    generator = generator if generator is not None else torch.Generator(device=device).manual_seed(1)
    result = train(nets, images, labels, cfg, generator, tmp_path / name, stamp, on_log=on_log)
    return nets, result


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_ema_update_is_an_exponential_moving_average():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before, current = flat(ema).clone(), flat(model)
    ema_update(ema, model, beta=0.9)
    assert torch.allclose(flat(ema), 0.9 * before + 0.1 * current, atol=1e-7)
    ema_update(ema, model, beta=0.0)
    assert torch.equal(flat(ema), current)
    # the warm-up never exceeds beta and reaches it late in training
    assert ema_beta_at(0, 0.999) == pytest.approx(0.1)
    assert ema_beta_at(100_000, 0.999) == 0.999


def test_ema_of_translator_tracks_only_translator_weights():
    nets = fresh_nets()
    ema = Translator(CONFIG)
    ema.load_state_dict({k: v for k, v in nets.state_dict().items() if not k.startswith("discriminator.")})
    with torch.no_grad():
        for p in nets.parameters():
            p.add_(1.0)
    ema_update(ema, nets, beta=0.5)
    for name, p in ema.named_parameters():
        assert torch.allclose(p, dict(nets.named_parameters())[name] - 0.5), name


def test_class_sampler_draws_only_requested_classes():
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1])
    sampler = ClassSampler(labels, 3)
    wanted = torch.tensor([0, 1, 2] * 50)
    drawn = sampler.sample(wanted, torch.Generator().manual_seed(0))
    assert torch.equal(labels[drawn], wanted)
    with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
        ClassSampler(labels, 4)


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    cfg = tiny_cfg()
    full_nets, full = run(tmp_path, cfg, name="full.pt")

    class Interrupt(Exception):
        pass

    def interrupt_at_4(record):
        if record["iteration"] == 4:  # after the losses of 3-4 were checked, before checkpoint 4 is written
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path, cfg, on_log=interrupt_at_4)
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2
    resumed_nets, resumed = run(tmp_path, cfg)
    assert resumed["iterations_run"] == 4
    assert torch.equal(flat(resumed_nets), flat(full_nets))
    assert torch.equal(flat(resumed["ema"]), flat(full["ema"]))
    assert [r["iteration"] for r in resumed["history"]] == [2, 4, 6]
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 6

    # more iterations continue from the finished checkpoint; other params start over
    _, longer = run(tmp_path, tiny_cfg(iterations=8))
    assert longer["iterations_run"] == 2
    _, other = run(tmp_path, tiny_cfg(iterations=8, cycle_weight=2.0))
    assert other["iterations_run"] == 8


def test_nan_loss_stops_naming_iteration_and_loss_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_cycle_loss = train_gan.cycle_loss

    def cycle_loss_nan_from_5th_iteration(reconstructed, original):
        calls["n"] += 1
        value = real_cycle_loss(reconstructed, original)
        return value * float("nan") if calls["n"] >= 5 else value

    monkeypatch.setattr(train_gan, "cycle_loss", cycle_loss_nan_from_5th_iteration)
    with pytest.raises(NonFiniteLoss, match=r"g_cycle = nan is not finite at iteration 5.*iteration 4\) is kept"):
        run(tmp_path, tiny_cfg(iterations=8))
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4


def test_exploding_loss_is_named():
    losses = np.zeros((3, len(LOSS_NAMES)), dtype=np.float32)
    losses[1, LOSS_NAMES.index("d_r1")] = 5e4
    with pytest.raises(NonFiniteLoss, match=r"d_r1 = 50000.0 exceeds gan.max_loss = 10000 at iteration 11"):
        check_losses(losses, 10, GanParams(), "no checkpoint was written yet")
    check_losses(losses[[0, 2]], 10, GanParams(), "")  # finite and small: no error


def test_translator_round_trips_and_translates_to_valid_images(tmp_path):
    nets = fresh_nets()
    save_translator(tmp_path / "gan.pt", nets, CONFIG)
    translator = load_translator(tmp_path / "gan.pt")
    x = toy_data(4)[0].float() / 255
    classes = torch.tensor([0, 1, 2, 0])
    style = translator.latent_style(torch.randn(4, 2), classes)
    out = translator(x, style)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, nets.generator(x, style), atol=1e-6)
    assert torch.allclose(translator.reference_style(x, classes), nets.style_encoder(x, classes), atol=1e-6)


def run_on(device, tmp_path, cfg, name):
    """(flat parameters, result, generator state after training) of :func:`run` on ``device``."""
    generator = torch.Generator(device=device).manual_seed(1)
    nets, result = run(tmp_path, cfg, name=name, device=device, generator=generator)
    return flat(nets), result, generator.get_state()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_training_resumes_exactly_and_matches_eager(tmp_path, capsys):
    device = torch.device("cuda")
    cfg = tiny_cfg(iterations=12, checkpoint_every=6, log_every=6, cuda_graph=True)
    full, full_result, full_rng = run_on(device, tmp_path, cfg, "full.pt")
    assert "CUDA graph" not in capsys.readouterr().err  # captured and replayed, no fallback warning

    run_on(device, tmp_path, tiny_cfg(iterations=6, checkpoint_every=6, log_every=6, cuda_graph=True), "resumed.pt")
    resumed, resumed_result, resumed_rng = run_on(device, tmp_path, cfg, "resumed.pt")
    assert resumed_result["iterations_run"] == 6
    assert torch.equal(full_rng, resumed_rng)  # replays advanced the generator like eager steps would
    assert torch.allclose(full, resumed, atol=1e-5)

    eager, _, eager_rng = run_on(device, tmp_path, tiny_cfg(iterations=12, checkpoint_every=6, log_every=6), "eager.pt")
    assert torch.equal(full_rng, eager_rng)
    assert torch.allclose(full, eager, atol=1e-3)  # fused vs. foreach Adam: rounding only
