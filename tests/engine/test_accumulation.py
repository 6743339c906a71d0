"""Gradient accumulation (SOLVER.IMS_PER_DEVICE): the same optimizer steps however a step's
batch is split over processes and micro-batches, at a lower peak memory per step."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.training_utils import REPO_ROOT, subprocess_env, tiny_training_config

from grouppose.config import get_grouppose_cfg
from grouppose.engine import Trainer
from grouppose.engine.accumulation import micro_batches_per_step, people_in
from grouppose.modeling.criterion import num_people_across_workers, step_normaliser

# Run as a script: torch.multiprocessing starts the workers by importing its __main__.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import re
    import sys
    from pathlib import Path

    import torch
    from detectron2.utils import comm
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    sys.path.insert(0, {tests_dir!r})
    from helpers.training_utils import tiny_training_config

    from grouppose.engine import Trainer, launch


    def peak_kib():
        return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])


    class MeasuredSecondStep(Trainer):
        # The first step allocates the gradients and the optimizer state; the second step's
        # peak resident memory, above the memory before it, is that of its activations.
        def run_step(self):
            if self.iter == self.start_iter + 1:
                Path("/proc/self/clear_refs").write_text("5")  # peak := current (Linux)
                before = peak_kib()
                super().run_step()
                self.step_peak_kib = peak_kib() - before
            else:
                super().run_step()


    def count_synchronised_backward_passes(ddp_model, counter):
        # DDP all-reduces its buckets after a backward pass outside no_sync; bucket 0 once each.
        def counting_hook(process_group, bucket):
            counter["synchronised_backward_passes"] += bucket.index() == 0
            return allreduce_hook(process_group, bucket)

        ddp_model.register_comm_hook(None, counting_hook)


    def train(data_root, output_dir, opts):
        cfg = tiny_training_config(Path(data_root), Path(output_dir), opts)
        torch.manual_seed(0)  # the same initial weights in every run and process
        trainer = MeasuredSecondStep(cfg)
        trainer.resume_or_load(resume=False)
        counter = {{"synchronised_backward_passes": 0}}
        if comm.get_world_size() > 1:
            count_synchronised_backward_passes(trainer.model, counter)
        trainer.train()
        if comm.is_main_process():
            model = trainer.model.module if comm.get_world_size() > 1 else trainer.model
            torch.save({{
                "params": {{n: p.detach().clone() for n, p in model.named_parameters()}},
                "step_peak_kib": trainer.step_peak_kib,
                **counter,
            }}, Path(output_dir) / "result.pt")


    if __name__ == "__main__":
        data_root, output_dir, processes, *opts = sys.argv[1:]
        launch(train, int(processes), dist_url="auto", args=(data_root, output_dir, opts))
    """
)

# Exactness: FrozenBN (the paper's R50; BatchNorm statistics would be per micro-batch), no
# dropout (the default), fp32 on the CPU, and no augmentation that changes image sizes, so that
# no micro-batch is padded (training_utils.FAST_OPTS: every image is 128 x 128).
EXACT_OPTS = ["MODEL.RESNETS.NORM", "FrozenBN", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
              "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000"]


def train(tmp_path: Path, name: str, processes: int, opts) -> dict:
    """Train in a fresh process group (``processes`` CPU processes); the final parameters and
    the second step's peak memory."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT.format(tests_dir=str(REPO_ROOT / "tests")))
    output_dir = tmp_path / name
    env = subprocess_env()
    # Allocations from 64 KiB on get their own pages, returned when freed: the resident memory
    # then follows the live tensors (glibc otherwise keeps freed memory in its heap).
    env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), str(output_dir), str(processes),
         *opts], env=env, cwd=REPO_ROOT, check=True, timeout=600,
    )
    result = torch.load(output_dir / "result.pt", weights_only=False)
    result["metrics"] = [json.loads(line) for line in
                         (output_dir / "metrics.json").read_text().splitlines()]
    return result


def flat(params: dict) -> torch.Tensor:
    return torch.cat([params[name].flatten() for name in sorted(params)])


def test_steps_match_however_the_batch_is_split(tmp_path):
    """Two optimizer steps of 8 images: 1 process x 8 images, 1 process x 2 images x 4
    micro-batches, 2 processes x 2 images x 2 micro-batches end with the same weights, log the
    same losses per step, and the processes exchange gradients once per step."""
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "check",
                               [*EXACT_OPTS, "SOLVER.IMS_PER_BATCH", "8"])
    first_step = next(iter(Trainer.build_train_loader(cfg)))
    people = [people_in(first_step[index:index + 2]) for index in range(0, 8, 2)]
    # micro-batches with different people counts: a per-micro-batch normaliser would differ
    assert len(set(people)) > 1, people

    torch.manual_seed(0)  # as the training script: the runs' initial weights
    initial = dict(Trainer.build_model(cfg).named_parameters())
    runs = {
        (processes, per_device): train(tmp_path, f"{processes}x{per_device}", processes, [
            *EXACT_OPTS, "SOLVER.IMS_PER_BATCH", "8", "SOLVER.IMS_PER_DEVICE", str(per_device),
        ])
        for processes, per_device in ((1, 0), (1, 2), (2, 2))
    }
    one_pass = flat(runs[1, 0]["params"])
    moved = (one_pass - flat(initial).detach()).norm()
    for (processes, per_device), run in runs.items():
        # fp32 sums in another order; Adam's first steps amplify such differences of tiny
        # gradients, hence 1e-5 of the weights rather than float epsilon
        error = (flat(run["params"]) - one_pass).norm()
        assert error <= 1e-5 * one_pass.norm(), (processes, per_device, error.item())
        assert error <= 1e-3 * moved  # and far below what the two steps changed
        # logged per optimizer step: iteration 1 is the second and last step
        last = run["metrics"][-1]
        assert last["iteration"] == 1
        expected = runs[1, 0]["metrics"][-1]["total_loss"]
        assert last["total_loss"] == pytest.approx(expected, rel=1e-5)
    assert runs[2, 2]["synchronised_backward_passes"] == 2  # of 4: no_sync on the first of each


def test_accumulation_lowers_the_peak_memory_of_a_step(tmp_path):
    """The same 4-image step in micro-batches of 1 needs less memory than in one pass."""
    # Images upscaled to 256 px, so that the activations of one image outweigh the optimizer
    # step's temporaries (about the size of the weights), which every step has.
    opts = [*EXACT_OPTS, "SOLVER.IMS_PER_BATCH", "4", "INPUT.MIN_SIZE_TRAIN", "(256,)",
            "INPUT.MAX_SIZE_TRAIN", "256"]
    peaks = {per_device: train(tmp_path, f"peak{per_device}", 1,
                               [*opts, "SOLVER.IMS_PER_DEVICE", str(per_device)])["step_peak_kib"]
             for per_device in (1, 4)}
    # the activations of 1 image instead of 4 (measured: 0.38 x); 0.6 leaves room for the
    # memory every step needs
    assert peaks[1] < 0.6 * peaks[4], peaks


@pytest.mark.parametrize("batch, processes, per_device, expected", [
    (16, 8, 0, 1), (16, 8, 2, 1), (16, 4, 2, 2), (16, 2, 2, 4), (16, 1, 2, 8), (16, 1, 16, 1),
])
def test_micro_batches_per_step(batch, processes, per_device, expected):
    cfg = get_grouppose_cfg(opts=["SOLVER.IMS_PER_BATCH", str(batch),
                                  "SOLVER.IMS_PER_DEVICE", str(per_device)])
    assert micro_batches_per_step(cfg, processes) == expected


@pytest.mark.parametrize("batch, processes, per_device, message", [
    (16, 3, 0, "IMS_PER_BATCH (16) must be a positive multiple of the number of processes (3)"),
    (16, 3, 2, "IMS_PER_BATCH (16) must be a positive multiple of the number of processes (3) "
               "x SOLVER.IMS_PER_DEVICE (2)"),
    (16, 2, 3, "processes (2) x SOLVER.IMS_PER_DEVICE (3)"),
    (16, 4, 8, "processes (4) x SOLVER.IMS_PER_DEVICE (8)"),
    (16, 1, -1, "SOLVER.IMS_PER_DEVICE must be >= 0"),
])
def test_a_config_that_does_not_divide_is_refused(batch, processes, per_device, message):
    cfg = get_grouppose_cfg(opts=["SOLVER.IMS_PER_BATCH", str(batch),
                                  "SOLVER.IMS_PER_DEVICE", str(per_device)])
    with pytest.raises(ValueError, match=re.escape(message)):
        micro_batches_per_step(cfg, processes)


def test_reference_world_size_is_refused(tmp_path):
    """Detectron2's auto-scaling would change the recipe's batch and learning rate."""
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out",
                               ["SOLVER.REFERENCE_WORLD_SIZE", "8"])
    with pytest.raises(ValueError, match="REFERENCE_WORLD_SIZE .*SOLVER.IMS_PER_DEVICE"):
        Trainer(cfg)


def test_step_normaliser_replaces_the_batch_normaliser():
    targets = [{"keypoints": torch.zeros(3, 17, 2)}]
    assert num_people_across_workers(targets, torch.device("cpu")) == 3
    with step_normaliser(7.5):
        assert num_people_across_workers(targets, torch.device("cpu")) == 7.5
    with step_normaliser(0.0):  # a step without people: 1, as a batch without people
        assert num_people_across_workers(targets, torch.device("cpu")) == 1
    assert num_people_across_workers(targets, torch.device("cpu")) == 3
