"""MODEL.GROUP_POSE.INFERENCE_PRECISION: ``auto`` picks bf16 only where this device's bf16
matmuls measure faster, an explicit slow bf16 warns with both rates, fp32 stays the default."""

import logging
from unittest import mock

import pytest
import torch
from detectron2.modeling import build_model
from helpers.tiny_grouppose import tiny_config

import grouppose.modeling.inference_precision as precision
from grouppose.modeling.inference_precision import (
    AUTO_MIN_SPEEDUP,
    MatmulRates,
    matmul_gflops,
    measured_matmul_rates,
    resolve_inference_dtype,
)

CPU = torch.device("cpu")
# Rates as measured on three CPUs (GFLOP/s): bf16 fast (AMD EPYC with AVX512-BF16), bf16 slow
# (Intel Xeon with AVX512-BF16 but no AMX), bf16 barely faster (under AUTO_MIN_SPEEDUP).
FAST_BF16 = MatmulRates(fp32=185.0, bf16=410.0)
SLOW_BF16 = MatmulRates(fp32=270.0, bf16=150.0)
MARGINAL_BF16 = MatmulRates(fp32=200.0, bf16=200.0 * (AUTO_MIN_SPEEDUP - 0.1))


@pytest.fixture(autouse=True)
def fresh_caches():
    """Each test measures (or mocks) anew, and may see the one warning again."""
    precision._probe.cache_clear()
    precision._warn_slow_bf16.cache_clear()
    yield
    precision._probe.cache_clear()
    precision._warn_slow_bf16.cache_clear()


def rates_are(rates: MatmulRates):
    return mock.patch.object(precision, "measured_matmul_rates", return_value=rates)


@pytest.mark.parametrize("rates, expected", [
    (FAST_BF16, torch.bfloat16), (SLOW_BF16, None), (MARGINAL_BF16, None),
])
def test_auto_takes_bf16_only_where_it_measures_faster(rates, expected):
    with rates_are(rates):
        assert resolve_inference_dtype("auto", CPU) is expected


def test_explicit_precisions_are_kept_and_a_slow_bf16_warns_once_with_both_rates(caplog):
    with rates_are(SLOW_BF16), caplog.at_level(logging.WARNING):
        assert resolve_inference_dtype("bf16", CPU) is torch.bfloat16  # as asked
        assert resolve_inference_dtype("bf16", CPU) is torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "bf16 matmuls are slower than fp32" in warnings[0]
    assert "fp32 270 GFLOP/s, bf16 150 GFLOP/s" in warnings[0]
    caplog.clear()
    with rates_are(FAST_BF16), caplog.at_level(logging.WARNING):
        assert resolve_inference_dtype("bf16", CPU) is torch.bfloat16
    assert not caplog.records
    # fp32 and fp16 measure nothing: the default path is not slowed by a probe.
    with mock.patch.object(precision, "measured_matmul_rates", side_effect=AssertionError):
        assert resolve_inference_dtype("fp32", CPU) is None
        assert resolve_inference_dtype("fp16", CPU) is torch.float16
    with pytest.raises(ValueError, match="one of \\['fp32', 'bf16', 'fp16', 'auto'\\]"):
        resolve_inference_dtype("int8", CPU)


def test_the_probe_measures_once_per_process_and_thread_count():
    with mock.patch.object(precision, "matmul_gflops", return_value=100.0) as measure:
        first = measured_matmul_rates(CPU)
        assert measured_matmul_rates(CPU) is first
        assert measure.call_count == 2  # fp32 and bf16, once
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            measured_matmul_rates(CPU)
        finally:
            torch.set_num_threads(threads)
        assert measure.call_count == 4


def test_matmul_gflops_is_the_flops_over_the_best_call():
    # A clock that advances 1 ms per reading and 9 ms across the first timed call: the best of
    # the three calls took 1 ms, so 2 * 64^3 flops in 1 ms. (A rate bound on the real clock
    # would judge the machine's load, not the code.)
    readings = iter([0.0, 0.009, 0.010, 0.011, 0.012, 0.013])
    with mock.patch.object(precision.time, "perf_counter", side_effect=lambda: next(readings)):
        assert matmul_gflops(CPU, torch.bfloat16, (64, 64, 64), repeats=3) == pytest.approx(
            2 * 64**3 / 1e-3 / 1e9)


@pytest.mark.parametrize("rates, expected", [(FAST_BF16, torch.bfloat16), (SLOW_BF16, None)])
def test_the_model_resolves_auto_on_its_device(rates, expected):
    cfg = tiny_config()
    assert cfg.MODEL.GROUP_POSE.INFERENCE_PRECISION == "fp32"  # the default: exact path
    assert build_model(cfg).inference_dtype is None
    cfg.MODEL.GROUP_POSE.INFERENCE_PRECISION = "auto"
    with rates_are(rates):
        assert build_model(cfg).inference_dtype is expected
