"""Every tutorial notebook is committed executed and runs top to bottom on small settings; the
kernel's stop button (a KeyboardInterrupt inside `vaekit.fit`) leaves a resumable run folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("*.ipynb"))


def test_there_are_tutorials_and_each_is_committed_executed():
    import nbformat

    assert TUTORIALS, "docs/tutorials holds no notebook"
    for path in TUTORIALS:
        nb = nbformat.read(path, 4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.execution_count for c in code), \
            f"{path.name} is not executed: run it top to bottom and commit its outputs"
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
            f"{path.name} was not executed in order from a fresh kernel"
        assert not any(o.output_type == "error" for c in code for o in c.outputs), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_the_tutorial_runs_on_small_settings(path, tmp_path, mnist_root, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.setenv("VAEKIT_TUTORIAL_EPOCHS", "1")
    monkeypatch.setenv("VAEKIT_TUTORIAL_LIMIT", "512")
    nb = nbformat.read(path, 4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)


def test_a_keyboard_interrupt_inside_fit_leaves_a_resumable_run_folder(tmp_path, monkeypatch):
    import vaekit
    from vaekit import session
    from vaekit.runs import read_metrics

    x = torch.bernoulli(torch.rand(96, 1, 28, 28)).mul(255).to(torch.uint8)
    calls = {"n": 0}
    real_update = session.TrainingState.update

    def stop_at_the_fourth_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # as the kernel's interrupt lands in the middle of a step
            raise KeyboardInterrupt
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(session.TrainingState, "update", stop_at_the_fourth_step)
    kw = dict(epochs=2, batch_size=32, run_dir=tmp_path / "run", progress=False, verbose=False)
    vae = vaekit.VAE(z_dim=4, nets="mlp:16")
    with pytest.raises(KeyboardInterrupt):
        vaekit.fit(vae, x[:64], x[64:], **kw)
    monkeypatch.setattr(session.TrainingState, "update", real_update)
    result = vaekit.resume(tmp_path / "run", x[:64], x[64:], progress=False, verbose=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert len(read_metrics(tmp_path / "run")) == 2
    assert os.path.exists(tmp_path / "run" / "checkpoint.pt")
