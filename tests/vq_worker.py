"""The moving-average codebook under two processes, for test_vqvae.py.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/vq_worker.py OUT.pt

Every rank starts from the same codebook and quantizes its own shard of a fixed batch for
`STEPS` updates, twice: with dead codes re-seeded (each rank's random state differs, so only
the broadcast can keep them equal) and without (to compare with one process on the whole
batch). Rank 0 saves every rank's codebooks.
"""

import sys

import torch
import torch.distributed as dist

from vaekit.quantize import VectorQuantizer

STEPS = 5


def data() -> torch.Tensor:
    """The whole batch: 2 shards of 4 grids of 3-vectors, 5x5 each."""
    return torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def run(x: torch.Tensor, dead_below: float) -> VectorQuantizer:
    torch.manual_seed(0)  # the same codebook on every rank
    vq = VectorQuantizer(8, 3, decay=0.9, dead_below=dead_below)
    for step in range(STEPS):
        vq(x * (1 + 0.1 * step))
    return vq


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = data().chunk(world)[rank]
    out = {}
    for name, dead in (("reseeded", 4.0), ("plain", 0.0)):
        torch.manual_seed(100 + rank)  # each rank draws other re-seeds unless broadcast
        vq = run(shard, dead)
        books = [torch.zeros_like(vq.codebook) for _ in range(world)]
        dist.all_gather(books, vq.codebook.contiguous())
        out[name] = books
    if rank == 0:
        torch.save(out, sys.argv[1])
    dist.destroy_process_group()
