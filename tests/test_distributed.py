"""Data-parallel training: 2 CPU processes (torchrun, gloo) with the same global batch give the
weights of 1 process, for WCAM distillation (second-order path through the student); the CLI runs
unchanged under torchrun and rank 0 alone writes and logs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attrpreserve import pipeline
from attrpreserve.distributed import ShardedBatchSampler
from attrpreserve.engine import TrainConfig
from attrpreserve.loading import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker  # noqa: E402

# Float sums in another order (two half-batch means averaged vs one mean) over 8 SGD steps; the
# largest difference measured was 3e-8 (weights up to ~1).
TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    """One thread here, one per worker: fast on the shared 2-core machines."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "teacher"
    cfg = pipeline.TeacherConfig(data=distributed_worker.DATA, width=4,
                                 train=TrainConfig(epochs=1, progress=False))
    pipeline.train_teacher(cfg, out)
    return out


def test_sharded_batches_are_the_one_process_batches():
    """Rank shares of each global batch, drawn from the same generator, are the batch a
    one-process shuffled DataLoader yields; a tail smaller than the ranks is dropped."""
    from torch.utils.data import DataLoader
    plain = list(DataLoader(range(37), batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(3)))
    def share(rank):  # as DataConfig.loader builds it: one generator for loader and sampler
        gen = torch.Generator().manual_seed(3)
        sampler = ShardedBatchSampler(37, 8, True, gen, rank_=rank, world=3)
        return list(DataLoader(range(37), batch_sampler=sampler, generator=gen))

    shares = [share(r) for r in range(3)]
    assert [len(s) for s in shares] == [5, 5, 5]  # 4 full batches + a tail of 5 >= 3 ranks
    for i, batch in enumerate(plain):
        together = torch.cat([s[i] for s in shares])
        assert sorted(together.tolist()) == sorted(batch.tolist())
    assert len(ShardedBatchSampler(33, 8, rank_=0, world=2)) == 4  # tail of 1 < 2 ranks: dropped


@pytest.mark.numerics
def test_two_processes_match_one(teacher, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    distributed_worker.run_fit(str(teacher), str(one))  # plain process: DataLoader(shuffle=True)

    two = tmp_path / "two"
    two.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # torchrun and its workers in a session of their own: on a timeout the whole group is
    # killed (killing torchrun alone would leave the workers running, loading the machine).
    # About 15 s alone; the timeout leaves room for a loaded machine.
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", distributed_worker.__file__, str(teacher),
                             str(two), "--cli"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 300 s:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{stdout[-2000:]}\n{stderr[-3000:]}"

    ref = load_file(str(one / "fit-rank0.safetensors"))
    ranks = [load_file(str(two / f"fit-rank{r}.safetensors")) for r in range(2)]
    for key, value in ref.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # ranks hold one model
        torch.testing.assert_close(ranks[0][key], value, rtol=TOLERANCE, atol=TOLERANCE)
    h1, h2 = (json.loads((d / "fit-rank0.json").read_text()) for d in (one, two))
    assert h1["best_epoch"] == h2["best_epoch"]
    for r1, r2 in zip(h1["epochs"], h2["epochs"]):
        for key in ("loss", "kd", "match", "val_mAP"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), key

    model, meta = load_checkpoint(two / "cli")  # the CLI under torchrun: rank 0 wrote it
    assert meta["compression"]["matching"] == "wcam" and not (two / "cli" / ".state").exists()
    assert stdout.count("compressed model saved") == 1
