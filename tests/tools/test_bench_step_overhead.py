"""tools/benchmarks/bench_step_overhead.py: times real training steps, the stop / unreadable-image
hooks within them, and the agreement of two processes."""

from tools.benchmarks import bench_step_overhead as bench


def test_steps_and_hooks_are_timed(tmp_path, restore_grouppose_logger):
    steps, hooks = bench.step_and_hook_times(steps=2, warmup=1, root=str(tmp_path))
    assert len(steps) == len(hooks) == 2
    # The hooks run inside the step's loop but are timed apart: a flag check and a scalar.
    assert all(0 < hook < step for step, hook in zip(steps, hooks))


def test_two_processes_agree_and_are_timed():
    assert 0 < bench.agreement_seconds(2, calls=20) < 5  # a loopback all-reduce, not a hang
