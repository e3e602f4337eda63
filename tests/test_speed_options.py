"""The performance options (channels-last, bf16 autocast, torch.compile) on the CPU."""

import os

import pyro
import pytest
import torch
from pyro import poutine

from vaekit import VAE, fit


def _fit(train_x, **kw):
    pyro.set_rng_seed(0)
    return fit(VAE(z_dim=4), train_x, epochs=1, batch_size=64, device="cpu", progress=False, **kw)


def test_channels_last_changes_speed_not_results(mnist_small):
    train_x, _ = mnist_small
    a = _fit(train_x[:256], channels_last=True).final["train_loss"]
    b = _fit(train_x[:256], channels_last=False).final["train_loss"]
    assert a == pytest.approx(b, rel=1e-4)


def test_bf16_autocast_keeps_the_likelihood_in_float32(mnist_small):
    train_x, _ = mnist_small
    vae = VAE(z_dim=4)
    x = torch.bernoulli(train_x[:8].float() / 255)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        assert vae.decoder(torch.zeros(1, 4)).dtype == torch.bfloat16  # the nets run in bf16
    assert model_tr.nodes["x"]["fn"].base_dist.logits.dtype == torch.float32
    assert guide_tr.nodes["z"]["fn"].base_dist.loc.dtype == torch.float32
    amp = _fit(train_x[:256], amp=True).final["train_loss"]
    fp32 = _fit(train_x[:256]).final["train_loss"]
    assert amp == pytest.approx(fp32, rel=0.02)  # bf16 rounding, same training


def test_compiled_networks_train_like_eager_ones(mnist_small):
    train_x, _ = mnist_small
    compiled = _fit(train_x[:128], compile=True)
    eager = _fit(train_x[:128])
    assert compiled.final["train_loss"] == pytest.approx(eager.final["train_loss"], rel=1e-3)
    assert set(compiled.vae.state_dict()) == set(eager.vae.state_dict())  # checkpoints unchanged


def test_compiled_cpu_kernels_are_cached_per_cpu_capability(monkeypatch):
    """Inductor reuses cached kernels across ATEN_CPU_CAPABILITY values (AVX2 code under AVX-512
    overruns its buffers and aborts): vaekit gives each capability its own cache folder."""
    from vaekit.devices import separate_compile_cache

    capability = torch.backends.cpu.get_cpu_capability().lower()
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    folder = separate_compile_cache()
    assert folder is not None and folder.endswith(f"cpu-{capability}")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == folder
    # torch's own default, which torch writes into the variable itself, is not a user's choice
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.path.dirname(folder))
    assert separate_compile_cache() == folder
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    assert separate_compile_cache() is None  # the user's folder is kept
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"


def test_amp_auto_decides_from_a_probe_keeps_the_decision_and_changes_no_draw(
        mnist_small, monkeypatch, tmp_path):
    from vaekit import devices, session
    from vaekit.settings import TrainSettings
    from vaekit.train import resume

    assert TrainSettings(amp=True).amp == "on" and TrainSettings(amp=False).amp == "off"
    train_x, _ = mnist_small
    lines = []
    monkeypatch.setattr("vaekit.tracking.Reporter.line", lambda self, text: lines.append(text))
    monkeypatch.setattr(session, "cpu_bf16_kernels", lambda: None)  # an AVX-512 CPU, any CI's
    for ratio, decided in ((1.3, True), (0.8, False)):
        monkeypatch.setattr(session, "amp_speedup", lambda step, device, r=ratio: r)
        lines.clear()
        run = tmp_path / f"auto{ratio}"
        r = _fit(train_x[:128], amp="auto", run_dir=run)
        assert any(f"measured {ratio:.2f}x" in line and ("on" if decided else "off") in line
                   for line in lines)
        assert torch.load(run / "checkpoint.pt", weights_only=False)["amp"] is decided
        monkeypatch.setattr(session, "amp_speedup", lambda step, device: 1 / 0)  # not probed
        resume(run, train_x[:128], epochs=2, progress=False, verbose=False)
        del r
    # the probe itself, for real: it runs both modes and restores the random state
    state = torch.get_rng_state()
    calls = []
    ratio = devices.amp_speedup(lambda amp: (calls.append(amp), torch.rand(3)), torch.device("cpu"))
    assert calls == [False, True] * 4 and ratio > 0  # a warm-up, then 3 timed of each
    assert torch.equal(torch.get_rng_state(), state)
    off = _fit(train_x[:128]).final["train_loss"]  # auto deciding off trains as off does
    monkeypatch.setattr(session, "amp_speedup", lambda step, device: 0.5)
    assert _fit(train_x[:128], amp="auto").final["train_loss"] == off


def test_amp_on_a_cpu_without_bf16_kernels_is_off_unmeasured(mnist_small, monkeypatch):
    """Where the CPU's kernels are AVX2 (bf16 emulated, 20x slower), auto decides off without a
    probe, and on says in one line that it is slower."""
    from vaekit import devices, session

    train_x, _ = mnist_small
    lines = []
    monkeypatch.setattr("vaekit.tracking.Reporter.line", lambda self, text: lines.append(text))
    monkeypatch.setattr(session, "cpu_bf16_kernels", lambda: "AVX2")
    monkeypatch.setattr(session, "amp_speedup", lambda step, device: 1 / 0)  # never probed
    off = _fit(train_x[:128]).final["train_loss"]
    assert _fit(train_x[:128], amp="auto").final["train_loss"] == off
    assert any(line.startswith("--amp auto: bf16 autocast off") and "AVX2" in line
               for line in lines)
    lines.clear()
    _fit(train_x[:128], amp="on")
    assert any(line.startswith("--amp on: bf16 autocast is slower") for line in lines)
    assert devices.cpu_bf16_kernels() in (None, torch.backends.cpu.get_cpu_capability())
