"""tools/benchmarks/bench_inference.py on the tiny model: every mode measured in one process per
size, interleaved, with medians, spread, stages, memory and the roofline ratio."""

import json
from unittest import mock

import pytest
import torch
from helpers.tiny_grouppose import NUM_INSTANCES, save_tiny_model

from grouppose.modeling.inference_precision import MatmulRates
from tools.benchmarks import bench_inference as bench


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench")
    config = save_tiny_model(directory)
    output = directory / "results.json"
    # Every mode, bf16 included, whatever this CPU's bf16 speed (the default leaves bf16 out
    # where it is slower; see test_default_modes_leave_out_a_slow_bf16); a small roofline
    # GEMM: a 2048^3 one in bf16 takes a minute on a CPU without bf16 instructions.
    assert bench.main(["--config-file", str(config), "--sizes", "64x96", "--warmup", "1",
                       "--runs", "2", "--threads", "1", "--json", str(output), "--gemm-size", "256",
                       "--modes", "fp32", "bf16", "reference", "onnxruntime"]) == 0
    return json.loads(output.read_text())


@pytest.mark.parametrize("rates, expected", [
    (MatmulRates(fp32=185.0, bf16=410.0), ["fp32", "bf16", "reference", "onnxruntime"]),
    (MatmulRates(fp32=270.0, bf16=150.0), ["fp32", "reference", "onnxruntime"]),
])
def test_default_modes_leave_out_a_slow_bf16(rates, expected):
    # `make setup` installs ONNX Runtime, so the deployed model is a column of the default.
    with mock.patch.object(bench, "measured_matmul_rates", return_value=rates):
        assert bench.default_modes(torch.device("cpu")) == expected


def test_every_cpu_mode_is_measured_with_its_statistics(results):
    assert [r["mode"] for r in results] == ["fp32", "bf16", "reference", "onnxruntime"]
    assert [r["default"] for r in results] == [True, False, False, False]
    assert [r["dtype"] for r in results] == ["fp32", "bf16", "fp32", "fp32"]
    assert [r["op"] for r in results] == ["compiled", "compiled", "reference", "onnx"]
    for r in results:
        assert "error" not in r, r
        assert r["size"] == [64, 96] and r["threads"] == 1
        assert len(r["latencies_ms"]) == 2
        assert min(r["latencies_ms"]) <= r["latency_ms"] <= max(r["latencies_ms"])
        assert r["people"] == NUM_INSTANCES
        assert r["cpu"]["model"] and r["cpu"]["torch_cpu_capability"]
        assert set(r["matmul_probe_gflops"]) == {"fp32", "bf16"}
        if r["mode"] == "onnxruntime":  # one graph: no per-stage split; its arena stays
            assert r["stages_ms"] is None and r["inference_memory_mib"] is None
        else:
            assert r["inference_memory_mib"] >= 0
            assert set(r["stages_ms"]) == set(bench.STAGES)
            assert r["stages_ms"]["backbone"] > 0 and r["stages_ms"]["decoder"] > 0


def test_roofline_ratio_is_latency_over_the_measured_gemm_time(results):
    for r in results:
        assert r["gemm_gflops"]["fp32"] > 0 and r["gemm_gflops"]["bf16"] > 0
        roofline_ms = 2 * r["gflops"]["total"] / r["gemm_gflops"]["fp32"] * 1000
        assert r["fp32_roofline_ms"] == pytest.approx(roofline_ms)
        assert r["roofline_ratio"] == pytest.approx(r["latency_ms"] / roofline_ms)


def test_the_table_shows_every_mode_side_by_side(results, capsys):
    bench.print_results(results)
    table = capsys.readouterr().out
    # The header names the CPU and its GEMM rates: a figure holds on that CPU alone.
    assert f"CPU: {results[0]['cpu']['model']} (ISA: " in table
    assert "GEMM 256^3 GFLOP/s (64x96 rounds' median): fp32 " in table
    assert "precision probe GFLOP/s: fp32 " in table
    assert "x fp32 GEMM roofline" in table and "speed-up over reference" in table
    assert "| 64x96 | fp32 (default) | fp32 |" in table
    assert "| 64x96 | reference | fp32 |" in table and "1.00x" in table
    onnx_row = next(line for line in table.splitlines()
                    if line.startswith("| 64x96 | onnxruntime | fp32 |"))
    assert onnx_row.endswith("| - |")  # no memory figure
    assert "| 64x96 | onnxruntime | - | - |" in table  # its stage split


def test_a_cuda_mode_is_refused_on_the_cpu():
    with pytest.raises(SystemExit, match="--modes: inference mode 'tf32' is a cuda mode"):
        bench.check_modes(["fp32", "tf32"], torch.device("cpu"))
    with pytest.raises(SystemExit, match="--modes: onnxruntime is measured on the cpu only"):
        bench.check_modes(["onnxruntime"], torch.device("cuda"))


def test_multi_head_attention_multiply_adds_are_counted():
    # The decoder's group self-attentions run nn.MultiheadAttention's fused inference op, which
    # fvcore does not count by itself (6.3 of the decoder's 25.5 GMAC at 480x800).
    from fvcore.nn import FlopCountAnalysis

    batch, queries, channels = 3, 10, 32

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(channels, 4, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    with torch.no_grad():
        flops = FlopCountAnalysis(SelfAttention().eval(), (torch.rand(batch, queries, channels),))
        flops.set_op_handle("aten::_native_multi_head_attention",
                            bench.multi_head_attention_flop_handle)
        flops.unsupported_ops_warnings(False)
        total = flops.total()
    assert set(flops.by_operator()) == {"_native_multi_head_attention"}
    # q, k, v and output projections; Q K^T and the weighted sum of the values.
    assert total == batch * (4 * queries * channels**2 + 2 * queries**2 * channels)
