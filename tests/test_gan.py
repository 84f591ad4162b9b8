import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.counterfactuals import gan_training
from pipeline.config import GanParams
from pipeline.counterfactuals.gan_training import (LOSS_NAMES, CheckpointMismatch, ClassSampler, GanStreams,
                                                   GanTrainingOptions, NonFiniteLoss, check_losses, ema_beta_at,
                                                   ema_update, fingerprint, train)
from pipeline.models.gan import (MASK_START_LOGIT, Discriminator, EditGenerator, GanNets, Generator, StyleEncoder,
                                 Translator, apply_edit, generate, load_translator, save_translator)
from pipeline.runtime import stage_seed, torch_generator
from pipeline.stages import train_gan
from pipeline.storage import load_checkpoint, save_arrays, save_checkpoint, write_json
from tests.conftest import repo_params

CONFIG = {"n_classes": 3, "style_dim": 4, "latent_dim": 2, "width": 4}
CODE = "digest of the training code"


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """The toy networks are far too small to gain from parallel kernels; on a busy machine the threads of one
    kernel mostly wait for each other (a toy run then takes a minute instead of a second)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    return GanTrainingOptions(**values)


def fresh_nets(config=CONFIG):
    torch.manual_seed(0)
    return GanNets(config)


def seeded_streams(device="cpu", seed=1):
    return GanStreams.create(lambda name, on: torch_generator(stage_seed(seed, name, "test"), on), device)


def run(tmp_path, cfg, on_log=None, name="last.pt", device="cpu", streams=None):
    """Train fresh nets (of the generator ``cfg`` names) on the toy data on ``device``; ``streams`` (seeded 1 when
    None) are left advanced."""
    images, labels = (t.to(device) for t in toy_data())
    config = {**CONFIG, "generator": cfg.generator}
    nets = fresh_nets(config).to(device)
    stamp = fingerprint(cfg, config, 0, images, labels, CODE)
    streams = streams if streams is not None else seeded_streams(device)
    result = train(nets, images, labels, cfg, streams, tmp_path / name, stamp, on_log=on_log)
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


@pytest.mark.parametrize("choice", [{}, {"generator": "edit", "r1_every": 2}])
def test_interrupted_training_resumes_to_the_same_result(tmp_path, choice):
    cfg = tiny_cfg(**choice)
    full_nets, full = run(tmp_path, cfg, name="full.pt")

    class Interrupt(Exception):
        pass

    def interrupt_at_4(record, ema):
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
    assert all((r["g_mask"] > 0) == (cfg.generator == "edit") for r in resumed["history"])  # only an edit has a mask
    assert resumed["smoothed_losses"] == full["smoothed_losses"]
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 6

    # more iterations continue from the finished checkpoint; other params start over
    _, longer = run(tmp_path, tiny_cfg(iterations=8, **choice))
    assert longer["iterations_run"] == 2
    _, other = run(tmp_path, tiny_cfg(iterations=8, cycle_weight=2.0, **choice))
    assert other["iterations_run"] == 8


def test_nan_loss_stops_naming_iteration_and_loss_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_cycle_loss = gan_training.cycle_loss

    def cycle_loss_nan_from_5th_iteration(reconstructed, original):
        calls["n"] += 1
        value = real_cycle_loss(reconstructed, original)
        return value * float("nan") if calls["n"] >= 5 else value

    monkeypatch.setattr(gan_training, "cycle_loss", cycle_loss_nan_from_5th_iteration)
    with pytest.raises(NonFiniteLoss, match=r"g_cycle = nan is not finite at iteration 5.*iteration 4\) is kept"):
        run(tmp_path, tiny_cfg(iterations=8))
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4


def test_exploding_loss_is_named():
    losses = np.zeros((3, len(LOSS_NAMES)), dtype=np.float32)
    losses[1, LOSS_NAMES.index("d_r1")] = 5e4
    with pytest.raises(NonFiniteLoss, match=r"d_r1 = 50000.0 exceeds gan.max_loss = 10000 at iteration 11"):
        check_losses(losses, 10, GanTrainingOptions(), "no checkpoint was written yet")
    check_losses(losses[[0, 2]], 10, GanTrainingOptions(), "")  # finite and small: no error


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


@pytest.mark.parametrize("edited, matters", [
    ("counterfactuals/gan_training.py", True), ("models/gan.py", True), ("models/inference.py", True),
    ("data/tensors.py", True), ("models/classifiers.py", True), ("storage.py", True), ("plotting.py", False),
    ("config.py", False)])
def test_fingerprint_covers_the_code_of_every_module_training_imports(monkeypatch, edited, matters):
    """Imported at module level by the training module (directly or not) counts; figures and the params' schema do not."""
    images, labels = toy_data()

    def stamp():
        return fingerprint(tiny_cfg(), CONFIG, 0, images, labels, train_gan.training_code_digest())

    before = stamp()
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda path: read_bytes(path) + (b"\n# edited\n" if path.as_posix().endswith("pipeline/" + edited) else b""))
    assert (stamp() != before) == matters


def test_fingerprint_follows_the_maths_not_the_cosmetics():
    images, labels = toy_data()
    base = fingerprint(tiny_cfg(), CONFIG, 0, images, labels, CODE)
    for harmless in (dict(log_every=3), dict(checkpoint_every=3), dict(max_loss=5.0), dict(iterations=60),
                     dict(cuda_graph=True)):
        assert fingerprint(tiny_cfg(**harmless), CONFIG, 0, images, labels, CODE) == base, harmless
    for maths in (dict(learning_rate=1e-3), dict(r1_weight=2.0), dict(batch_size=6), dict(ema_beta=0.9),
                  dict(generator="edit"), dict(r1_every=4)):
        assert fingerprint(tiny_cfg(**maths), CONFIG, 0, images, labels, CODE) != base, maths
    assert fingerprint(tiny_cfg(), CONFIG, 1, images, labels, CODE) != base
    assert fingerprint(tiny_cfg(), CONFIG, 0, images, labels, CODE, deterministic=True) != base
    assert fingerprint(tiny_cfg(), CONFIG, 0, images, labels, CODE + " edited") != base
    swapped = images.clone()  # two pixels of different value trade places: same sum, other data
    pixels = swapped[0, 0].view(-1)
    lit, dark = int(torch.nonzero(pixels)[0]), int(torch.nonzero(pixels == 0)[0])
    pixels[lit], pixels[dark] = pixels[dark].clone(), pixels[lit].clone()
    assert swapped.sum() == images.sum() and not torch.equal(swapped, images)
    assert fingerprint(tiny_cfg(), CONFIG, 0, swapped, labels, CODE) != base


def test_training_options_are_the_gan_params_but_the_figure_size():
    """The stage's options carry every ``gan`` param (same order and defaults, so gan.pt keeps its bytes)
    except ``n_grid_images``, which therefore reaches neither gan.pt nor the fingerprint."""
    params = [(f.name, f.default) for f in dataclasses.fields(GanParams)]
    options = [(f.name, f.default) for f in dataclasses.fields(GanTrainingOptions)]
    assert [p for p in params if p[0] != "n_grid_images"] == options
    assert train_gan.training_options(GanParams(n_grid_images=3)) == GanTrainingOptions()


def test_resume_refuses_a_checkpoint_trained_on_another_device(tmp_path):
    cfg = tiny_cfg(iterations=1, checkpoint_every=1, log_every=1)
    run(tmp_path, cfg)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["device"] == "cpu"
    state["device"] = "cuda"
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointMismatch, match=r"trained on cuda but this run is on cpu: set `device: cuda` to resume "
                                                 r"it, or delete .* to start fresh on cpu"):
        run(tmp_path, cfg)
    assert load_checkpoint(tmp_path / "last.pt")["device"] == "cuda"  # left as it was


def test_streams_draw_data_on_the_cpu_and_latent_codes_on_the_device():
    requested = {}

    def make(name, device):
        requested[name] = device.type
        return torch.Generator()

    GanStreams.create(make, "cuda")
    assert requested == {"batch": "cpu", "targets": "cpu", "references": "cpu", "latent": "cuda"}


def test_translator_file_has_the_same_bytes_in_every_process(tmp_path, monkeypatch):
    nets = fresh_nets()
    written = []
    for pid in (1000, 2000):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)  # the temporary file is named after the process
        save_translator(tmp_path / "gan.pt", nets, CONFIG, iterations=3)
        written.append((tmp_path / "gan.pt").read_bytes())
    assert written[0] == written[1]


def write_prepared(dataset):
    """A toy prepared dataset under ./data/prepared/<dataset>, as prepare@<dataset> lays it out."""
    images, labels = toy_data()
    for split, n in (("train", 48), ("test", 6)):
        save_arrays(Path("data/prepared") / dataset / f"{split}.npz", images=images[:n].numpy(), labels=labels[:n].numpy())
    write_json(Path("data/prepared") / dataset / "meta.json", {"n_classes": 3, "class_names": ["red", "green", "blue"]})


def test_cosmetic_params_leave_gan_pt_byte_identical_and_metrics_free_of_wall_clock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_prepared("colored_mnist")
    gan = dict(iterations=2, batch_size=4, style_dim=4, latent_dim=2, width=4, checkpoint_every=2, log_every=2,
               n_grid_images=2)
    runs = []
    for cosmetic in ({}, dict(n_grid_images=1, log_every=1, checkpoint_every=1, max_loss=500.0)):
        Path("params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "gan": {**gan, **cosmetic}})))
        train_gan.main(["colored_mnist"])
        runs.append({
            "gan.pt": hashlib.sha256(Path("data/models/colored_mnist/gan.pt").read_bytes()).hexdigest(),
            "metrics": json.loads(Path("metrics/colored_mnist/train_gan.json").read_text()),
            "timing": json.loads(Path("metrics/colored_mnist/timing/train_gan.json").read_text()),
        })
    first, second = runs
    assert second["gan.pt"] == first["gan.pt"]
    assert second["metrics"] == first["metrics"]
    assert set(first["metrics"]) == {"iterations", "smoothed_discriminator_loss", "smoothed_generator_loss"}
    assert first["metrics"]["iterations"] == 2
    assert [r["timing"]["iterations_run"] for r in runs] == [2, 0]  # the second run resumed the finished checkpoint
    assert first["timing"]["training_seconds"] > 0 and first["timing"]["iterations_per_second"] > 0


def run_on(device, tmp_path, cfg, name):
    """(flat parameters, result, random-stream states after training) of :func:`run` on ``device``."""
    streams = seeded_streams(device)
    nets, result = run(tmp_path, cfg, name=name, device=device, streams=streams)
    return flat(nets), result, streams.state()


def same_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_runs_train_on_the_same_images_in_the_same_order(tmp_path, monkeypatch):
    cfg = tiny_cfg(iterations=3, checkpoint_every=3, log_every=3)
    drawn = {"cpu": [], "cuda": []}
    draw_indices = gan_training.draw_indices
    for device, seen in drawn.items():
        monkeypatch.setattr(gan_training, "draw_indices", lambda *args, seen=seen: seen.append(draw_indices(*args)) or seen[-1])
        run(tmp_path, cfg, name=f"{device}.pt", device=device)
    assert len(drawn["cpu"]) == len(drawn["cuda"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(drawn["cpu"], drawn["cuda"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_training_resumes_exactly_and_matches_eager(tmp_path, capsys):
    device = torch.device("cuda")
    cfg = tiny_cfg(iterations=12, checkpoint_every=6, log_every=6, cuda_graph=True)
    full, full_result, full_rng = run_on(device, tmp_path, cfg, "full.pt")
    assert "CUDA graph" not in capsys.readouterr().err  # captured and replayed, no fallback warning

    run_on(device, tmp_path, tiny_cfg(iterations=6, checkpoint_every=6, log_every=6, cuda_graph=True), "resumed.pt")
    resumed, resumed_result, resumed_rng = run_on(device, tmp_path, cfg, "resumed.pt")
    assert resumed_result["iterations_run"] == 6
    assert same_states(full_rng, resumed_rng)  # replays advanced the generators like eager steps would
    assert torch.allclose(full, resumed, atol=1e-5)

    eager, _, eager_rng = run_on(device, tmp_path, tiny_cfg(iterations=12, checkpoint_every=6, log_every=6), "eager.pt")
    assert same_states(full_rng, eager_rng)
    assert torch.allclose(full, eager, atol=1e-3)  # capturable vs. plain fused Adam: rounding only


# ---------------------------------------------------------------------------------------------
# image shapes
# ---------------------------------------------------------------------------------------------
# state_dict names and shapes of the 3 x 28 x 28 networks of CONFIG (width 4) as they were before the image
# shape came from the data: checkpoints and gan.pt files written then must still load.
GAN_NETS_WIDTH_4 = [
    ("generator.stem.weight", (4, 3, 3, 3)), ("generator.stem.bias", (4,)), ("generator.encoder.0.norm1.weight", (4,)),
    ("generator.encoder.0.norm1.bias", (4,)), ("generator.encoder.0.conv1.weight", (8, 4, 3, 3)),
    ("generator.encoder.0.conv1.bias", (8,)), ("generator.encoder.0.norm2.weight", (8,)),
    ("generator.encoder.0.norm2.bias", (8,)), ("generator.encoder.0.conv2.weight", (8, 8, 3, 3)),
    ("generator.encoder.0.conv2.bias", (8,)), ("generator.encoder.0.skip.weight", (8, 4, 1, 1)),
    ("generator.encoder.1.norm1.weight", (8,)), ("generator.encoder.1.norm1.bias", (8,)),
    ("generator.encoder.1.conv1.weight", (16, 8, 3, 3)), ("generator.encoder.1.conv1.bias", (16,)),
    ("generator.encoder.1.norm2.weight", (16,)), ("generator.encoder.1.norm2.bias", (16,)),
    ("generator.encoder.1.conv2.weight", (16, 16, 3, 3)), ("generator.encoder.1.conv2.bias", (16,)),
    ("generator.encoder.1.skip.weight", (16, 8, 1, 1)), ("generator.encoder.2.norm1.weight", (16,)),
    ("generator.encoder.2.norm1.bias", (16,)), ("generator.encoder.2.conv1.weight", (16, 16, 3, 3)),
    ("generator.encoder.2.conv1.bias", (16,)), ("generator.encoder.2.norm2.weight", (16,)),
    ("generator.encoder.2.norm2.bias", (16,)), ("generator.encoder.2.conv2.weight", (16, 16, 3, 3)),
    ("generator.encoder.2.conv2.bias", (16,)), ("generator.decoder.0.norm1.affine.weight", (32, 4)),
    ("generator.decoder.0.norm1.affine.bias", (32,)), ("generator.decoder.0.conv1.weight", (16, 16, 3, 3)),
    ("generator.decoder.0.conv1.bias", (16,)), ("generator.decoder.0.norm2.affine.weight", (32, 4)),
    ("generator.decoder.0.norm2.affine.bias", (32,)), ("generator.decoder.0.conv2.weight", (16, 16, 3, 3)),
    ("generator.decoder.0.conv2.bias", (16,)), ("generator.decoder.1.norm1.affine.weight", (32, 4)),
    ("generator.decoder.1.norm1.affine.bias", (32,)), ("generator.decoder.1.conv1.weight", (8, 16, 3, 3)),
    ("generator.decoder.1.conv1.bias", (8,)), ("generator.decoder.1.norm2.affine.weight", (16, 4)),
    ("generator.decoder.1.norm2.affine.bias", (16,)), ("generator.decoder.1.conv2.weight", (8, 8, 3, 3)),
    ("generator.decoder.1.conv2.bias", (8,)), ("generator.decoder.1.skip.weight", (8, 16, 1, 1)),
    ("generator.decoder.2.norm1.affine.weight", (16, 4)), ("generator.decoder.2.norm1.affine.bias", (16,)),
    ("generator.decoder.2.conv1.weight", (4, 8, 3, 3)), ("generator.decoder.2.conv1.bias", (4,)),
    ("generator.decoder.2.norm2.affine.weight", (8, 4)), ("generator.decoder.2.norm2.affine.bias", (8,)),
    ("generator.decoder.2.conv2.weight", (4, 4, 3, 3)), ("generator.decoder.2.conv2.bias", (4,)),
    ("generator.decoder.2.skip.weight", (4, 8, 1, 1)), ("generator.to_image.0.weight", (4,)),
    ("generator.to_image.0.bias", (4,)), ("generator.to_image.2.weight", (3, 4, 1, 1)),
    ("generator.to_image.2.bias", (3,)), ("mapping.shared.0.weight", (128, 2)), ("mapping.shared.0.bias", (128,)),
    ("mapping.shared.2.weight", (128, 128)), ("mapping.shared.2.bias", (128,)), ("mapping.shared.4.weight", (128, 128)),
    ("mapping.shared.4.bias", (128,)), ("mapping.heads.weight", (12, 128)), ("mapping.heads.bias", (12,)),
    ("style_encoder.trunk.0.weight", (4, 3, 3, 3)), ("style_encoder.trunk.0.bias", (4,)),
    ("style_encoder.trunk.2.weight", (8, 4, 3, 3)), ("style_encoder.trunk.2.bias", (8,)),
    ("style_encoder.trunk.5.weight", (16, 8, 3, 3)), ("style_encoder.trunk.5.bias", (16,)),
    ("style_encoder.trunk.8.weight", (16, 16, 3, 3)), ("style_encoder.trunk.8.bias", (16,)),
    ("style_encoder.trunk.10.weight", (16, 16, 7, 7)), ("style_encoder.trunk.10.bias", (16,)),
    ("style_encoder.heads.weight", (12, 16)), ("style_encoder.heads.bias", (12,)),
    ("discriminator.trunk.0.weight", (4, 3, 3, 3)), ("discriminator.trunk.0.bias", (4,)),
    ("discriminator.trunk.2.weight", (8, 4, 3, 3)), ("discriminator.trunk.2.bias", (8,)),
    ("discriminator.trunk.5.weight", (16, 8, 3, 3)), ("discriminator.trunk.5.bias", (16,)),
    ("discriminator.trunk.8.weight", (16, 16, 3, 3)), ("discriminator.trunk.8.bias", (16,)),
    ("discriminator.trunk.10.weight", (16, 16, 7, 7)), ("discriminator.trunk.10.bias", (16,)),
    ("discriminator.heads.weight", (3, 16)), ("discriminator.heads.bias", (3,)),
]


def test_3x28x28_gan_keeps_its_layers_and_its_initial_weights():
    legacy = fresh_nets()   # CONFIG has no "image_shape", as configs written before the key existed
    assert [(name, tuple(tensor.shape)) for name, tensor in legacy.state_dict().items()] == GAN_NETS_WIDTH_4
    torch.manual_seed(0)
    shaped = GanNets({**CONFIG, "image_shape": (3, 28, 28)})
    assert same_states(legacy.state_dict(), shaped.state_dict())
    assert legacy.image_shape == shaped.image_shape == (3, 28, 28)


def test_the_pool_after_the_last_convolution_changes_nothing_on_28x28_images():
    """The global average pool that lets the style encoder and discriminator take larger images sees a 1 x 1 map
    on a 28 x 28 image: outputs and gradients are exactly those of the trunk without it."""
    nets = fresh_nets()
    x = toy_data(4)[0].float() / 255
    for trunk in (nets.style_encoder.trunk, nets.discriminator.trunk):
        assert isinstance(trunk[-2], torch.nn.AdaptiveAvgPool2d)
        without = torch.nn.Sequential(*list(trunk)[:-2], torch.nn.Flatten())
        results = []
        for net in (trunk, without):
            inputs = x.clone().requires_grad_(True)
            out = net(inputs)
            (grad,) = torch.autograd.grad(out.square().sum(), inputs)
            results.append((out, grad))
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 32, 32), (3, 64, 64), (1, 32, 36)])
def test_the_gan_translates_and_judges_images_of_the_shape_of_its_config(shape, tmp_path):
    config = {**CONFIG, "image_shape": shape}
    torch.manual_seed(0)
    nets = GanNets(config)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([0, 2])
    style = nets.latent_style(torch.randn(2, 2), classes)
    assert nets(x, style).shape == (2, *shape)
    assert nets.reference_style(x, classes).shape == (2, CONFIG["style_dim"])
    assert nets.discriminator(x, classes).shape == (2,)
    save_translator(tmp_path / "gan.pt", nets, config)
    translator = load_translator(tmp_path / "gan.pt")
    assert translator.image_shape == shape
    assert torch.equal(translator(x, style), nets(x, style))


@pytest.mark.parametrize("shape", [(3, 30, 30), (3, 24, 24), (3, 32, 30), (1, 20, 28)])
def test_the_gan_refuses_an_image_shape_it_cannot_take(shape):
    for build in (lambda: GanNets({**CONFIG, "image_shape": shape}), lambda: Generator(4, 4, shape),
                  lambda: StyleEncoder(4, 3, 4, shape), lambda: Discriminator(3, 4, shape)):
        with pytest.raises(ValueError) as err:
            build()
        assert "the GAN needs height and width that are multiples of 4 and at least 28; got" in str(err.value)
        assert str(shape) in str(err.value)


def test_a_gan_file_written_before_configs_had_an_image_shape_loads_as_3x28x28(tmp_path):
    nets = fresh_nets()
    save_translator(tmp_path / "gan.pt", nets, CONFIG)   # CONFIG has no "image_shape"
    assert "image_shape" not in load_checkpoint(tmp_path / "gan.pt")["config"]
    translator = load_translator(tmp_path / "gan.pt")
    assert translator.image_shape == (3, 28, 28)
    x = toy_data(2)[0].float() / 255
    style = translator.latent_style(torch.randn(2, 2), torch.tensor([1, 2]))
    assert torch.equal(translator(x, style), nets.generator(x, style))


def test_the_stage_builds_the_gan_for_the_shape_of_the_prepared_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, labels = toy_data(16)
    wider = torch.zeros(16, 1, 32, 32, dtype=torch.uint8)
    wider[:, 0, 2:30, 2:30] = images.amax(1)
    for split in ("train", "test"):
        save_arrays(Path("data/prepared/colored_mnist") / f"{split}.npz", images=wider.numpy(), labels=labels.numpy())
    write_json(Path("data/prepared/colored_mnist/meta.json"), {"n_classes": 3, "class_names": ["red", "green", "blue"]})
    gan = dict(iterations=2, batch_size=4, style_dim=4, latent_dim=2, width=4, checkpoint_every=2, log_every=2,
               n_grid_images=2)
    Path("params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "gan": gan})))
    train_gan.main(["colored_mnist"])
    assert tuple(load_checkpoint("data/models/colored_mnist/gan.pt")["config"]["image_shape"]) == (1, 32, 32)
    assert load_translator("data/models/colored_mnist/gan.pt").image_shape == (1, 32, 32)


# ---------------------------------------------------------------------------------------------
# the edit generator, lazy R1, and the choice of generator
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 32, 36)])
def test_the_edit_generator_returns_a_colour_and_a_mask_in_the_unit_interval(shape):
    torch.manual_seed(0)
    generator = EditGenerator(style_dim=4, width=4, image_shape=shape)
    with torch.no_grad():  # a trained-looking head: large weights, so colour and mask reach both ends
        generator.head_out.weight.normal_(0, 50)
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(1))
    colour, mask = generator.edit(x, torch.randn(5, 4))
    assert colour.shape == (5, *shape) and mask.shape == (5, 1, *shape[1:])
    for values in (colour, mask):
        assert values.min() >= 0 and values.max() <= 1
        assert values.min() < 0.01 and values.max() > 0.99
    out = generator(x, torch.randn(5, 4))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_an_edit_leaves_the_pixels_outside_its_mask_unchanged():
    gen = torch.Generator().manual_seed(0)
    x, colour = torch.rand(2, 3, 28, 28, generator=gen), torch.rand(2, 3, 28, 28, generator=gen)
    mask = torch.zeros(2, 1, 28, 28)
    mask[:, :, :8, :8] = 1.0     # a square replaced by the colour
    mask[:, :, 20:, 20:] = 0.25  # a corner moved a quarter of the way towards it
    out = apply_edit(x, colour, mask)
    outside = (mask == 0).expand_as(x)
    assert torch.equal(out[outside], x[outside])
    assert torch.allclose(out[:, :, :8, :8], colour[:, :, :8, :8])
    assert torch.allclose(out[:, :, 20:, 20:], 0.75 * x[:, :, 20:, 20:] + 0.25 * colour[:, :, 20:, 20:])


def test_the_edit_generator_applies_its_own_edit_and_starts_as_almost_the_identity():
    torch.manual_seed(0)
    generator = EditGenerator(style_dim=4, width=4)
    x = toy_data(4)[0].float() / 255
    style = torch.randn(4, 4)
    colour, mask = generator.edit(x, style)
    assert torch.equal(generator(x, style), apply_edit(x, colour, mask))
    translated, returned_mask = generate(generator, x, style)
    assert torch.equal(translated, generator(x, style)) and torch.equal(returned_mask, mask)
    stargan = Generator(style_dim=4, width=4)
    assert generate(stargan, x, style)[1] is None and torch.equal(generate(stargan, x, style)[0], stargan(x, style))
    # untrained: mid-grey colour, the mask closed at sigmoid(MASK_START_LOGIT) everywhere
    assert torch.allclose(colour, torch.full_like(colour, 0.5))
    assert torch.allclose(mask, torch.full_like(mask, torch.sigmoid(torch.tensor(MASK_START_LOGIT)).item()))
    assert (generator(x, style) - x).abs().max() <= 0.5 * torch.sigmoid(torch.tensor(MASK_START_LOGIT)) + 1e-6


def test_the_config_chooses_the_generator_and_a_config_without_one_is_stargan(tmp_path):
    assert isinstance(GanNets(CONFIG).generator, Generator)   # written before configs named the generator
    assert isinstance(GanNets({**CONFIG, "generator": "stargan"}).generator, Generator)
    nets = fresh_nets({**CONFIG, "generator": "edit"})
    assert isinstance(nets.generator, EditGenerator)
    save_translator(tmp_path / "gan.pt", nets, nets.config)
    translator = load_translator(tmp_path / "gan.pt")
    assert isinstance(translator.generator, EditGenerator)
    x = toy_data(2)[0].float() / 255
    style = translator.latent_style(torch.randn(2, 2), torch.tensor([0, 2]))
    assert torch.equal(translator(x, style), nets(x, style))
    assert gan_training.net_config(tiny_cfg(generator="edit"), 3, (3, 28, 28))["generator"] == "edit"


def test_lazy_r1_takes_the_penalty_every_kth_step_weighted_k_times(tmp_path, monkeypatch):
    calls = []
    real_penalty = gan_training.r1_penalty
    monkeypatch.setattr(gan_training, "r1_penalty", lambda *args: calls.append(1) or real_penalty(*args))
    _, result = run(tmp_path, tiny_cfg(iterations=6, r1_every=3, log_every=1, checkpoint_every=6))
    assert len(calls) == 2  # iterations 1 and 4 (counted from 1)
    r1 = [record["d_r1"] for record in result["history"]]
    assert [value > 0 for value in r1] == [True, False, False, True, False, False]
    # the first step is the same in both runs: the lazy penalty is the plain one, three times
    _, every_step = run(tmp_path, tiny_cfg(iterations=1, log_every=1, checkpoint_every=1), name="every.pt")
    assert r1[0] == pytest.approx(3 * every_step["history"][0]["d_r1"], rel=1e-5)


def test_the_benchmark_records_its_command_without_this_machine_s_folders():
    from benchmarks.gan_time_to_evidence import reproducing_command

    argv = ["--cases", "clever_hans", "--work", "/scratch/x", "--out=/results/y.json", "--set", "width=8"]
    assert reproducing_command(argv) == "python -m benchmarks.gan_time_to_evidence --cases clever_hans --set width=8"


def test_the_benchmark_takes_data_and_classifier_from_a_data_config_and_nothing_else(tmp_path):
    import yaml

    from benchmarks.gan_time_to_evidence import case_params

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"data": {"train_size": 12000}, "classifier": {"width": 16}, "gan": {"width": 4}}))
    committed, small = case_params("clever_hans", str(tmp_path)), case_params("clever_hans", str(tmp_path), config)
    assert committed["data"]["train_size"] is None and small["data"]["train_size"] == 12000
    assert small["classifier"]["width"] == 16 and small["classifier"]["epochs"] == committed["classifier"]["epochs"]
    assert small["gan"] == committed["gan"] and list(small["datasets"]) == ["clever_hans"]
