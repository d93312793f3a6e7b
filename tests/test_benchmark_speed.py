"""The speed benchmarks in their tiny modes: they run, and print one JSON object with the documented keys."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import infer_speed
    import train_speed
    return train_speed, infer_speed


def event(name, parent=None, sequence_nr=-1, start=0, us=1.0):
    """A stand-in for a profiler event: what ``breakdown.attribute`` reads."""
    return SimpleNamespace(name=name, cpu_parent=parent, sequence_nr=sequence_nr, self_cpu_time_total=us,
                           time_range=SimpleNamespace(start=start))


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_speed_tiny_json(benchmarks, capsys, tmp_path):
    train_speed, _ = benchmarks
    plot = tmp_path / "speed.png"
    train_speed.main(["--sizes", "tiny", "--algorithms", "fptt", "bptt", "--steps", "2", "--options-steps", "2",
                      "--options", "default", "fused+channels_last", "--batches", "1", "--warmup", "0", "--batch-size", "1",
                      "--cell-shapes", "1,4,8,8", "--cell-repeats", "1", "--loader-batches", "2", "--loader-warmup", "1",
                      "--profiled", "1", "--floor", "--json", "--plot", str(plot)])
    result = last_json(capsys)
    assert {"device", "threads", "torch", "runs", "options", "breakdown", "conv_share", "fptt_share", "cell",
            "loader_samples_per_s", "loader_vs_train", "loader_main_ms", "loader",
            "held_freed_memory"} <= set(result)
    loader = result["loader"]
    assert (loader["size"], loader["image_size"], loader["batch_size"], loader["num_workers"]) == ("tiny", 64, 16, 1)
    assert result["loader_samples_per_s"] > 0 and result["loader_main_ms"] > 0
    fastest = max(r["batch_size"] / r["batch_s"] for r in result["runs"])
    assert result["loader_vs_train"] == pytest.approx(result["loader_samples_per_s"] / fastest, rel=0.01)
    runs = result["runs"]
    assert [(r["algorithm"], r["option"]) for r in runs] == [("fptt", "default"), ("bptt", "default"),
                                                             ("fptt", "fused+channels_last"), ("fptt", "default again")]
    for row in runs:
        assert row["batch_s"] > 0 and row["throughput"] == pytest.approx(1 * 2 / row["batch_s"], rel=0.01)
        assert isinstance(row["page_faults"], int) and row["page_faults"] >= 0
    breakdown = result["breakdown"]["tiny"]
    assert set(breakdown) == {"default", "fused+channels_last", "default again"}
    for shares in breakdown.values():
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
        assert shares["conv"] > 0 and shares["neuron"] > 0 and shares["loss"] > 0 and shares["fptt"] > 0
        assert shares["guard"] > 0 and shares["compiled"] == 0
    assert result["conv_share"] == breakdown["default"]["conv"]
    assert result["options"]["tiny"]["default"]["speedup"] == 1.0
    assert [(r["scope"], r["variant"]) for r in result["cell"]] == [
        ("neuron", "reference"), ("neuron", "fused"), ("step", "reference"), ("step", "fused")]
    assert all(r["ms"] > 0 for r in result["cell"]) and result["cell"][0]["speedup"] == 1.0
    assert plot.stat().st_size > 0
    floor = result["floor"]  # each fp32 option's profiled step against the floor; bf16 would have a lower one
    assert floor["total_s"] > 0 and set(floor["options"]) == {"default", "fused+channels_last", "default again"}
    for option, row in floor["options"].items():
        share = result["breakdown"]["tiny"][option]["conv"]  # the profile's own shares, rounded to 1e-4
        assert row["nonconv_s"] / row["conv_s"] == pytest.approx((1 - share) / share, rel=2e-3)
        assert row["best_conv_share"] == pytest.approx(row["conv_s"] / (row["conv_s"] + floor["total_s"]), abs=1e-3)
        assert row["nonconv_over_floor"] == pytest.approx(row["nonconv_s"] / floor["total_s"], abs=0.01)
    assert floor["best_conv_share"] == floor["options"]["default"]["best_conv_share"]


def test_breakdown_is_the_mean_of_the_profiled_batches(benchmarks, monkeypatch):
    import breakdown
    per_batch = iter([{**dict.fromkeys(breakdown.CATEGORIES, 0.0), "conv": 3.0, "loss": 1.0},
                      {**dict.fromkeys(breakdown.CATEGORIES, 0.0), "conv": 5.0, "loss": 3.0}])
    monkeypatch.setattr(breakdown, "attribute", lambda events: next(per_batch))
    callback = breakdown.profiler_callback(range(1, 3))
    for index in range(4):  # batches 0 and 3 are not profiled
        callback.on_train_batch_start(None, None, None, index)
        callback.on_train_batch_end(None, None, None, None, index)
    assert callback.totals["conv"] == 4.0 and callback.totals["loss"] == 2.0 and callback.totals["fptt"] == 0.0


def test_infer_speed_tiny_json(benchmarks, capsys):
    _, infer_speed = benchmarks
    infer_speed.main(["--models", "spyv4_tiny", "srnn_ltc", "--steps", "1", "2", "--image-size", "32",
                      "--width", "0.125", "--batch-size", "1", "--repeats", "1", "--json"])
    result = last_json(capsys)
    assert set(result["latency_ms"]) == {"spyv4_tiny", "srnn_ltc"}
    for row in result["latency_ms"].values():
        assert set(row) == {"1", "2"} and all(v > 0 for v in row.values())
    assert {"spyv4_tiny", "ltc_resnet18", "ltc_resnet34", "ltc_resnet50", "ltc_convnet",
            "srnn_ltc"} <= set(infer_speed.registered())


def test_infer_speed_rejects_unknown_model(benchmarks):
    _, infer_speed = benchmarks
    with pytest.raises(SystemExit, match="unknown"):
        infer_speed.main(["--models", "resnet18_ann"])


def test_fused_cells_keep_the_detector_numbers(benchmarks):
    # the benchmarks' "fused" option (the fused backend): same outputs over two steps, same parameter gradients
    import copy

    import torch
    import common
    torch.manual_seed(0)
    reference = common.make_detector("fptt", 2, 64, 0.125).model
    fused = copy.deepcopy(reference)
    assert common.set_backend(fused, "fused") > 10
    x = torch.rand(2, 3, 64, 64)
    losses = []
    for model in (reference, fused):
        state, total = None, 0.0
        for _ in range(2):
            raw, state = model(x, state)
            total = total + sum(r.square().mean() for r in raw)
        total.backward()
        losses.append(total)
    assert torch.equal(losses[0], losses[1])
    for (name, a), b in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fptt_speed_tiny_json(benchmarks, capsys):
    import fptt_speed
    from spikeloc import kernels
    fptt_speed.main(["--image-size", "64", "--width", "0.125", "--repeats", "1", "--steps", "2", "--json"]
                    + ["--kernels"] * kernels.available())
    result = last_json(capsys)
    assert result["same_gradients_and_state"] and result["same_penalty"]
    assert result["tensors"] > 10 and result["foreach_ms"] > 0 and result["eager_ms"] > 0 and result["eager_ratio"] > 0
    if kernels.available():
        assert result["cpu_kernels_close"] and result["cpu_kernels_ms"] > 0


def test_breakdown_names_compiled_kernels_before_the_ops_they_fuse(benchmarks):
    from breakdown import by_name
    assert by_name("graph_1_cpp_fused__native_batch_norm_legit_functional_add_convolution_backward_7") == "compiled"
    assert by_name("aten::convolution_backward") == "conv"
    assert by_name("aten::native_batch_norm_backward") == "batchnorm"
    assert by_name("spikeloc::ltc_cell_backward") == "neuron"  # the cpu_kernels cell: batch norm and neuron together
    assert by_name("aten::sigmoid") is None


def test_a_backward_node_goes_to_the_scope_of_the_op_that_created_it(benchmarks):
    """An op that creates no autograd node records the number the next node will get: the guard's
    finiteness check before the neuron's sigmoid must not take the sigmoid's backward."""
    import torch
    from breakdown import attribute
    x = torch.randn(1 << 21, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        with torch.profiler.record_function("spikeloc::guard"):
            torch.isfinite(x.detach()[:4]).all()  # same sequence number as the sigmoid below, no node
        with torch.profiler.record_function("spikeloc::neuron"):
            y = x.sigmoid()
        y.sum().backward()  # SigmoidBackward0: ~2M elements
    events = list(profile.events())
    totals = attribute(events)
    backward = sum(e.self_cpu_time_total for e in events if "SigmoidBackward" in e.name or e.name == "aten::sigmoid_backward")
    assert backward > 0 and totals["neuron"] >= backward > totals["guard"]  # the old rule gave it to the guard


def test_options_combine_and_unknown_ones_are_named(benchmarks):
    import common
    train_speed, _ = benchmarks
    module = common.make_detector("fptt", 2, 64, 0.125)
    assert common.apply_option(module, "compile_step+channels_last+bf16") == "bf16-mixed"
    assert module.compile_step and module.channels_last
    common.apply_option(module, "inductor_layout+fused_adam")  # torch.compile's own layout choice
    assert module.compile_step == {"options": {"layout_optimization": True}}
    ltc = [m for m in module.modules() if type(m).__name__ == "LTCNeuron"]
    assert ltc and all(m.backend == "eager" for m in ltc)
    common.apply_option(module, "cpu_kernels+eager_fptt")  # the LTC cells' CPU operators, FPTT's eager update
    assert all(m.backend == "cpu_kernels" for m in ltc) and module.fptt_config.backend == "eager"
    with pytest.raises(ValueError, match="'fast' in 'fused\\+fast'"):
        common.apply_option(module, "fused+fast")
    with pytest.raises(SystemExit):
        train_speed.parse_args(["--options", "default", "fused+fast"])


def test_the_optimizer_and_guard_options(benchmarks, monkeypatch):
    import torch
    import common
    from spikeloc.training.guard import NonFiniteGuard
    monkeypatch.setattr(NonFiniteGuard, "read_cpu_flag", True)  # restored after the test
    module = common.make_detector("fptt", 2, 64, 0.125)
    assert common.apply_option(module, "fused_adam") == "32-true"
    assert module.optimizer_factory([torch.zeros(1, requires_grad=True)]).defaults["fused"]
    common.apply_option(module, "device_guard")
    assert NonFiniteGuard.read_cpu_flag is False  # the torch.where restore a GPU takes
    common.apply_option(module, "default")
    assert NonFiniteGuard.read_cpu_flag is True


def test_compiled_kernels_outside_the_model_go_to_their_scope(benchmarks):
    """A kernel torch.compile made for FPTT (its update, or its gradient in a backward node) is FPTT's time,
    one made for the model step the model's ``compiled``."""
    from breakdown import attribute

    fptt = event("spikeloc::fptt", start=1)
    penalty = event("_Penalty", fptt, sequence_nr=7, start=2)
    backward = event("autograd::engine::evaluate_function: _PenaltyBackward", sequence_nr=7, start=5)
    model = event("spikeloc::model", start=3)
    events = [fptt, penalty, model, backward, event("graph_1_cpp_fused_add_mul_sum_0", fptt, start=4, us=10.0),
              event("graph_2_cpp_fused__foreach_mul_0", backward, start=6, us=20.0),
              event("graph_0_cpp_fused_convolution_backward_sigmoid_3", model, start=7, us=40.0)]
    totals = attribute(events)
    assert (totals["fptt"], totals["compiled"], totals["model_other"]) == (33.0, 40.0, 1.0)


def test_gradients_adding_up_in_a_conv_wrapper_are_not_convolution_time(benchmarks):
    """The engine adds a weight's convolution gradient and FPTT's penalty gradient inside the wrapper it runs
    the convolution's node in: that add goes to the scope of the op that made the node, the node's own
    work to ``conv``."""
    from breakdown import attribute

    model = event("spikeloc::model", start=1)
    forward = event("aten::convolution", model, sequence_nr=3, start=2, us=100.0)
    wrapper = event("autograd::engine::evaluate_function: ConvolutionBackward0", sequence_nr=3, start=5, us=2.0)
    node = event("ConvolutionBackward0", wrapper, sequence_nr=3, start=6, us=4.0)
    events = [model, forward, wrapper, node, event("aten::convolution_backward", node, start=7, us=200.0),
              event("aten::add_", wrapper, start=8, us=10.0)]
    totals = attribute(events)
    assert (totals["conv"], totals["model_other"]) == (304.0, 13.0)


def test_the_floor_counts_each_pass_at_its_tensors_own_speed(benchmarks):
    """Hand-computed: 2 cells of 10 elements and 1 of 20, parameters of 3 + 3 + 5, T = 2, 2 updates, with a
    stub that reads n elements in n s and writes them in w n s; each size takes its cheaper order."""
    from floor import CELL_PASSES, UPDATE_PASSES, floor_seconds
    assert (CELL_PASSES, UPDATE_PASSES) == (((20, 6), (22, 5)), ((10, 5), (8, 6)))
    for write, cell, update in ((2.0, 22 + 5 * 2, 10 + 5 * 2), (1.0, 20 + 6, 8 + 6)):
        calls = []

        def stream(numel):
            calls.append(numel)
            return float(numel), write * numel

        floor = floor_seconds([10, 10, 20], [3, 3, 5], num_steps=2, updates=2, stream=stream)
        assert floor["cells_s"] == 2 * 40 * cell and floor["updates_s"] == 2 * 11 * update
        assert floor["total_s"] == floor["cells_s"] + floor["updates_s"]
        assert sorted(calls) == [3, 5, 10, 20]  # each size timed once


def test_the_floor_sees_every_spiking_ltc_cell_of_the_detector_and_changes_nothing(benchmarks):
    import torch
    import common
    from floor import detector_floor, ltc_cell_sizes, stream_seconds
    from spikeloc.neurons import LTCNeuron, SpikingConv2d, set_twin
    module = common.make_detector("fptt", 2, 64, 0.125)
    model = module.model
    cells = [m for m in model.modules() if isinstance(m, SpikingConv2d) and isinstance(m.neuron, LTCNeuron)]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    rng = torch.get_rng_state()
    sizes = ltc_cell_sizes(model, 64, 2)
    assert len(sizes) == len(cells) > 10 and model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    first = cells[0]  # the stem: stride 2, so 32x32 outputs of a 64x64 image
    assert sizes[0] == 2 * first.out_channels * 32 * 32 and first.conv.stride == (2, 2)
    reduce = model.neck.reduce[0]  # its neuron runs on the current upsampled 2x: the smaller BN size counts
    index = cells.index(reduce)
    bn_out = []
    handle = reduce.bn.register_forward_hook(lambda _, __, out: bn_out.append(out.numel()))
    with torch.no_grad():
        model(torch.zeros(2, 3, 64, 64), None)
    handle.remove()
    assert sizes[index] == bn_out[0] and model.neck.upsample != "spikes"
    set_twin(model, True)  # the ANN twin has no LTC cell to count
    assert ltc_cell_sizes(model, 64, 2) == []
    set_twin(model, False)
    read, write = stream_seconds(1 << 16, rounds=1)
    assert read > 0
    result = detector_floor(module, 64, 2, 2)
    assert result["parameters"] == sum(p.numel() for p in module.parameters())
    assert result["cell_elements"] == sum(sizes) and result["cells"] == len(cells)
    assert result["total_s"] == pytest.approx(result["cells_s"] + result["updates_s"], abs=2e-6)
