"""One rank of the semi-supervised objective under 2 processes (Gloo, CPU).

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_m2_worker.py OUT.pt

Each rank builds the same seeded M2 and labelled set, takes `STEPS` steps' labelled shares and
runs the objective's forward on them; rank 0 saves every rank's indices (gathered) and the
epoch's classifier metrics (summed over the ranks by the objective) for the test to compare
with one process.
"""

import sys

import pyro
import torch
import torch.distributed as dist

from vaekit import VAE
from vaekit.semisupervised import SemiSupervised

STEPS = 3


def build() -> SemiSupervised:
    """The objective both the test and each rank build: 24 labelled images, batches of 10."""
    pyro.set_rng_seed(0)
    vae = VAE(num_classes=4, semi_supervised=True, z_dim=2, nets="mlp:8")
    gen = torch.Generator().manual_seed(1)
    # black and white: binarizing them draws nothing, so the ranks see one process's pixels
    images = (torch.rand(24, 1, 28, 28, generator=gen) > 0.5).to(torch.uint8) * 255
    labels = torch.arange(24) % 4
    return SemiSupervised(vae, images, labels, batch=10, seed=3)


def unlabelled() -> torch.Tensor:
    return torch.bernoulli(torch.full((2, 1, 28, 28), 0.5),
                           generator=torch.Generator().manual_seed(2))


def main(out: str) -> None:
    dist.init_process_group("gloo")
    obj = build()
    shares = []
    for _ in range(STEPS):
        state = obj.draws.get_state()
        shares.append(obj.labelled_indices())
        obj.draws.set_state(state)  # forward draws the same share again
        obj(unlabelled())
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, shares)
    metrics = obj.epoch_metrics()
    if dist.get_rank() == 0:
        torch.save({"shares": gathered, "metrics": metrics}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
