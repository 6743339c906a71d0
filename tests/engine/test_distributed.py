"""Two CPU processes (gloo) with the same total batch compute the same losses and gradients as
one process: the data stream splits the batch, the criterion all-reduces the number of people,
naiveSyncBN averages the batch statistics and DistributedDataParallel averages the gradients."""

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.training_utils import REPO_ROOT, subprocess_env

# Run as a script: torch.multiprocessing starts the workers by importing its __main__.
ONE_STEP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from detectron2.utils import comm

    sys.path.insert(0, {tests_dir!r})
    from helpers.training_utils import tiny_training_config

    from grouppose.engine import Trainer, launch
    from grouppose.engine.trainer import distributed_model


    def one_step(data_root, result_file, norm):
        cfg = tiny_training_config(Path(data_root), Path(result_file).parent,
                                   ["MODEL.RESNETS.NORM", norm])
        torch.manual_seed(0)
        model = Trainer.build_model(cfg)
        batch = next(iter(Trainer.build_train_loader(cfg)))
        ddp_model = distributed_model(model)  # referenced until after backward
        losses = ddp_model(batch)
        sum(losses.values()).backward()
        # what Detectron2 logs: each term averaged over the processes
        per_process = comm.all_gather({{k: v.item() for k, v in losses.items()}})
        people = comm.all_gather(sum(len(x["instances"]) for x in batch))
        if comm.is_main_process():
            torch.save({{
                "losses": {{k: sum(p[k] for p in per_process) / len(per_process)
                           for k in per_process[0]}},
                "grads": {{n: p.grad for n, p in model.named_parameters()}},
                "people": people,
            }}, result_file)


    if __name__ == "__main__":
        data_root, result_file, processes, norm = sys.argv[1:]
        launch(one_step, int(processes), dist_url="auto", args=(data_root, result_file, norm))
    """
)


def one_step(script, data_root, result_file, processes: int, norm: str):
    subprocess.run(
        [sys.executable, str(script), str(data_root), str(result_file), str(processes), norm],
        env=subprocess_env(), cwd=REPO_ROOT, check=True, timeout=300,
    )
    return torch.load(result_file, weights_only=False)


@pytest.mark.parametrize("norm", ["GN", "naiveSyncBN"])
def test_two_processes_match_one_process(tmp_path, norm):
    """GN: every image is computed alone, so the gradients match to float rounding.
    naiveSyncBN (the tiny config's): the statistics are synchronised, so the losses match as
    tightly, but rounding in the synchronised statistics can flip near-tied top-N / matching
    choices, so the gradients are compared as a whole (per-process statistics, i.e. plain
    BatchNorm, would miss both by far)."""
    script = tmp_path / "one_step.py"
    script.write_text(ONE_STEP_SCRIPT.format(tests_dir=str(REPO_ROOT / "tests")))
    single = one_step(script, tmp_path / "data", tmp_path / "single.pt", 1, norm)
    double = one_step(script, tmp_path / "data", tmp_path / "double.pt", 2, norm)

    # the processes see different numbers of people, so a per-process normaliser would differ
    assert len(double["people"]) == 2 and double["people"][0] != double["people"][1]
    assert single["people"] == [sum(double["people"])]
    assert single["losses"].keys() == double["losses"].keys()
    for name, value in single["losses"].items():
        assert abs(value - double["losses"][name]) <= 1e-4 * max(1.0, abs(value)), name
    assert single["grads"].keys() == double["grads"].keys()
    assert all(grad is not None for grad in single["grads"].values())
    if norm != "GN":
        flat = [torch.cat([g[n].flatten() for n in sorted(g)]) for g in (single["grads"],
                                                                          double["grads"])]
        assert (flat[1] - flat[0]).norm() <= 1e-2 * flat[0].norm()
        return
    mismatches = []
    for name, grad in single["grads"].items():
        scale = grad.abs().max().item()
        error = (double["grads"][name] - grad).abs().max().item()
        if error > 1e-3 * scale:
            mismatches.append(f"{name}: max error {error:.3g}, largest gradient {scale:.3g}")
    assert not mismatches, "\n".join(mismatches)
