"""Training throughput, peak memory and a step breakdown of the SPYv4 detector, FPTT vs BPTT (README "Speed").

Each case trains a fresh ``SpikingDetector`` (``spyv4_tiny``) through a Lightning ``Trainer`` on
random images with random boxes: ``--warmup`` untimed batches, ``--batches`` timed batches
(median seconds per batch), then ``--profiled`` profiled batches (FPTT at ``--options-steps``
only) whose mean CPU time is split by :mod:`breakdown` into conv, batchnorm, neuron (+ surrogate),
compiled kernels, other model ops, loss (+ target assignment), optimizer (+ clipping), FPTT
(penalty + update), the non-finite guard and other (one batch's shares moved by 2 points from
run to run on a shared 2-core VM; the mean of three steadies them).
Throughput is ``batch_size * T / seconds per batch`` (samples x time steps per second); the
peak is the memory training adds over the footprint at the first batch, approximate: as in
``tools/train.py``, glibc keeps freed tensors for the next step (:mod:`spikeloc.allocator`;
``--glibc-default`` leaves it as it is), so freed memory stays mapped (``memory.py`` measures exactly,
under an allocator setting that returns every big tensor to the kernel, which slows element-wise work).

Options, each against ``default`` (every neuron on the ``eager`` backend) in the same run (FPTT,
T = ``--options-steps``): the neuron backends ``fused`` (the fused LTC-SN step), ``compiled`` (its kernels
compiled by ``torch.compile``) and ``cpu_kernels`` (the LTC conv cells and FPTT's update as CPU operators,
the other neurons fused), ``compile_step`` (the whole model time step, forward and backward, compiled:
``compile_step: true``; its neuron and BN maths then run inside compiled kernels, which the breakdown
counts as ``compiled``), ``eager_fptt`` (with ``cpu_kernels``: FPTT's eager update, ``fptt.backend: eager``),
``inductor_layout`` (``compile_step`` with inductor's ``layout_optimization`` on, torch.compile's own
default, which turns the convolutions channels-last; ``compile_step`` keeps the model's layout),
``channels_last`` (weights, input and state in NHWC: ``channels_last: true``), ``bf16``
(``precision="bf16-mixed"``), ``fused_adam`` (``torch.optim.Adam(..., fused=True)``: one kernel for
all parameters instead of ~10 ops each) and
``device_guard`` (the non-finite guard restoring with ``torch.where`` per tensor, as on a GPU, instead
of reading its flag on the CPU); several joined by ``+`` run together (``compile_step+fused_adam``); then
``default again``, whose "speedup" shows how much a shared machine drifted during the options.
The cell part times one ``LTCNeuron`` step, forward + backward, eager (the reference) vs fused (vs compiled).

Usage::

    python benchmarks/train_speed.py [--sizes small full] [--algorithms fptt bptt] [--steps 4 8 16]
        [--options default fused compiled cpu_kernels channels_last bf16] [--batches 3] [--json] [--plot FILE.png]

With ``--json`` the last stdout line is one object with keys ``device``, ``threads``, ``torch``,
``held_freed_memory`` (whether the allocator setting took effect),
``runs`` (one row per case: size, image_size, width, batch_size, algorithm, T, option, batch_s,
throughput, peak_mib, first_batch_s: the first, untimed batch, compilation included; page_faults:
median minor page faults per timed batch, each a fresh page of memory mapped in; with
``compile_step`` also step_compiled: false when the compiler failed and the step ran eager),
``options`` (per size: option -> batch_s, speedup over default),
``breakdown`` (per size: option -> share per category), ``conv_share`` (convolution share of the
default FPTT step's CPU time, first size), ``fptt_share``, with ``--floor`` also ``floor`` (:mod:`floor`:
the fewest seconds per batch the non-convolution work of the step can take on this machine, ``total_s``
= ``cells_s`` + ``updates_s``; ``options``: per fp32 option its profiled ``conv_s`` and ``nonconv_s``,
``best_conv_share`` with the rest at the floor and ``nonconv_over_floor``; ``best_conv_share`` of the
default at the top), ``cell`` (rows: shape, scope ``neuron``
or ``step``, variant, ms, speedup) and, unless
``--loader-batches 0``, ``loader_samples_per_s`` (the quick-start datamodule's training loader at the
first size, its own batch size and workers), ``loader_vs_train`` (that over the fastest training case
of the first size, in samples per second: above 1, data loading is not the bottleneck),
``loader_main_ms`` (what receiving one batch costs the training process when the workers are ahead:
it adds to every step) and ``loader`` (the settings).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

import common
from breakdown import CATEGORIES, profiler_callback, shares
from floor import against_floor, detector_floor

SIZES = {"small": (128, 0.25), "full": (416, 1.0), "tiny": (64, 0.125)}


def timer_callback(skip: set[int]) -> Any:
    """Seconds and page faults of every batch whose index is not in ``skip`` (``.times``, ``.faults``)."""
    import lightning.pytorch as pl
    import torch

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.faults: list[int] = []  # minor page faults: memory the kernel had to map in
            self.first = 0.0  # seconds of the first batch (compilation included)
            self._start = 0.0

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, index: int) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start, self._faults = time.perf_counter(), _page_faults()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, index: int) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - self._start
            if index == 0:
                self.first = seconds
            if index not in skip:
                self.times.append(seconds)
                self.faults.append(_page_faults() - self._faults)

    return Timer()


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_case(size: str, algorithm: str, num_steps: int, option: str, profile: bool,
             args: argparse.Namespace) -> dict[str, Any]:
    """Train one case; returns its row (and ``breakdown`` totals when ``profile``)."""
    import torch
    torch.manual_seed(0)
    image_size, width = SIZES[size]
    module = common.make_detector(algorithm, num_steps, image_size, width)
    precision = common.apply_option(module, option)
    timed = args.warmup + args.batches
    batches = timed + (args.profiled if profile else 0)
    profiled = range(timed, batches)
    timer = timer_callback(set(range(args.warmup)) | set(profiled))
    meter = common.Meter(args.device)
    probe = common.memory_probe(meter, last_batch=args.warmup + args.batches - 1)
    profiler = profiler_callback(profiled)
    trainer = common.make_trainer(args.device, batches, [timer, probe, profiler], precision)
    trainer.fit(module, train_dataloaders=common.detection_loader(batches, args.batch_size, image_size))
    seconds = common.median(timer.times)
    row = {"size": size, "image_size": image_size, "width": width, "batch_size": args.batch_size,
           "algorithm": algorithm, "T": num_steps, "option": option, "batch_s": round(seconds, 4),
           "throughput": round(args.batch_size * num_steps / seconds, 2),
           "peak_mib": round((probe.result or 0) / common.MIB, 1), "first_batch_s": round(timer.first, 2),
           "page_faults": int(common.median(timer.faults))}
    if option == "compile_step":  # a failing compiler falls back to eager (its warning is silenced here)
        row["step_compiled"] = bool(module.compile_step)
    print(f"  {size} {algorithm} T={num_steps} {option}: {seconds:.3f} s/batch, "
          f"{row['throughput']:.1f} samples*steps/s, peak {row['peak_mib']} MiB, "
          f"{row['page_faults']} page faults, first batch {timer.first:.1f} s",
          file=sys.stderr, flush=True)
    return {**row, "totals": profiler.totals}


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    """FPTT/BPTT over T with the default options, then every option at ``--options-steps``."""
    runs, options, breakdowns, profiled = [], {}, {}, {}
    for size in args.sizes:
        for algorithm in args.algorithms:
            for num_steps in args.steps:
                profile = algorithm == "fptt" and num_steps == args.options_steps
                runs.append(run_case(size, algorithm, num_steps, "default", profile, args))
        reference = [r for r in runs if r["size"] == size and r["algorithm"] == "fptt"
                     and r["T"] == args.options_steps and r["option"] == "default"]
        if not reference:
            reference = [run_case(size, "fptt", args.options_steps, "default", True, args)]
            runs += reference
        others = [option for option in args.options if option != "default"]
        for option in others:
            runs.append(run_case(size, "fptt", args.options_steps, option, True, args))
        if others:  # the default once more, after the options: how much the machine drifted meanwhile
            runs.append({**run_case(size, "fptt", args.options_steps, "default", True, args), "option": "default again"})
        picked = reference + [r for r in runs if r["size"] == size and r["option"] != "default"]
        options[size] = {r["option"]: {"batch_s": r["batch_s"],
                                       "speedup": round(reference[0]["batch_s"] / r["batch_s"], 3)} for r in picked}
        breakdowns[size] = {r["option"]: shares(r["totals"]) for r in picked if r["totals"]}
        profiled[size] = {r["option"]: r["totals"] for r in picked if r["totals"]}
    first = breakdowns[args.sizes[0]]["default"]
    result = {"runs": [{k: v for k, v in r.items() if k != "totals"} for r in runs], "options": options,
              "breakdown": breakdowns, "conv_share": first["conv"], "fptt_share": first["fptt"]}
    if args.floor:
        result["floor"] = run_floor(args.sizes[0], profiled[args.sizes[0]], args)
    return result


def run_floor(size: str, profiled: dict[str, dict[str, float]], args: argparse.Namespace) -> dict[str, Any]:
    """:func:`floor.detector_floor`, and every fp32 option's profiled step against it (``options``; the
    default's ``best_conv_share`` also at the top)."""
    image_size, width = SIZES[size]
    module = common.make_detector("fptt", args.options_steps, image_size, width)
    result = detector_floor(module, image_size, args.batch_size, args.options_steps, args.device)
    result["options"] = {
        option: against_floor(totals["conv"] / 1e6, (sum(totals.values()) - totals["conv"]) / 1e6, result["total_s"])
        for option, totals in profiled.items() if "bf16" not in common.option_parts(option.removesuffix(" again"))}
    result["best_conv_share"] = result["options"]["default"]["best_conv_share"]
    print(f"  floor {size}: non-convolution work >= {1e3 * result['total_s']:.0f} ms per batch (cells "
          f"{1e3 * result['cells_s']:.0f}, updates {1e3 * result['updates_s']:.0f}), best conv share "
          f"{result['best_conv_share']:.3f}", file=sys.stderr, flush=True)
    return result


# ---- the data loader -------------------------------------------------------------------------
def run_loader(size: str, runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Samples per second of the quick-start detection datamodule's training loader (``--loader-config``:
    its batch size, ``num_workers`` and scenes) at ``size``'s image size, over ``--loader-batches``
    batches after ``--loader-warmup`` (worker start-up included there), and that rate over the
    fastest training case of ``size`` in samples per second (above 1: the loader keeps up)."""
    import importlib

    import yaml
    data_config = yaml.safe_load((common.ROOT / args.loader_config).read_text())["data"]
    module_name, _, class_name = data_config["class_path"].rpartition(".")
    init_args = {**data_config.get("init_args", {}), "image_size": SIZES[size][0]}
    data = getattr(importlib.import_module(module_name), class_name)(**init_args)
    data.setup("fit")
    iterator = iter(data.train_dataloader())
    for _ in range(args.loader_warmup):
        next(iterator)
    samples, start = 0, time.perf_counter()
    for _ in range(args.loader_batches):
        samples += len(next(iterator)["targets"])
    seconds = time.perf_counter() - start
    receive = []
    for _ in range(args.loader_batches):
        time.sleep(0.25)  # the workers get ahead: what is left is the main process's own cost per batch
        start = time.perf_counter()
        next(iterator)
        receive.append(time.perf_counter() - start)
    del iterator  # stops the workers
    loader, main_ms = samples / seconds, 1e3 * statistics.median(receive)
    train = max(r["batch_size"] / r["batch_s"] for r in runs if r["size"] == size)
    print(f"  loader {size} ({init_args.get('batch_size')} per batch, {init_args.get('num_workers', 0)} "
          f"worker(s)): {loader:.1f} samples/s, {loader / train:.1f} x the fastest training case, "
          f"{main_ms:.1f} ms of the main process per batch", file=sys.stderr, flush=True)
    return {"loader_samples_per_s": round(loader, 2), "loader_vs_train": round(loader / train, 3),
            "loader_main_ms": round(main_ms, 2),
            "loader": {"size": size, "image_size": SIZES[size][0], "batch_size": init_args.get("batch_size"),
                       "num_workers": init_args.get("num_workers", 0), "batches": args.loader_batches,
                       "train_samples_per_s": round(train, 3)}}


# ---- the cell on its own -----------------------------------------------------------------
def _interleaved(fns: dict[str, Any], repeats: int) -> dict[str, tuple[float, float]]:
    """Per name: (median seconds, median of the first fn's time / this fn's time, pair by pair).

    The functions run in turn within every repeat, so a load change on a shared machine hits
    all of them alike; one warm-up round (compilation included) goes first."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_index:
                times[name].append(time.perf_counter() - start)
    first = next(iter(times.values()))
    return {name: (common.median(t), common.median([a / b for a, b in zip(first, t)])) for name, t in times.items()}


def _cell_cases(shape: list[int], compiled: bool) -> dict[str, dict[str, Any]]:
    """Forward + backward closures: the whole ``LTCNeuron`` (tau conv + BN + step) and the step alone."""
    import torch
    from spikeloc.neurons import LTCNeuron, ltc_step
    from spikeloc.neurons.fused import fused_ltc_step
    generator = torch.Generator().manual_seed(0)
    current, u, tau = (torch.rand(shape, generator=generator).mul_(1.5).requires_grad_() for _ in range(3))
    weights = torch.randn(shape, generator=generator)
    variants = {"reference": None, "fused": False, **({"compiled": True} if compiled else {})}
    neuron_fns, step_fns = {}, {}
    for variant, compile in variants.items():
        torch.manual_seed(0)
        neuron = LTCNeuron(shape[1], backend="eager" if compile is None else variant)

        def whole(neuron: Any = neuron) -> None:
            spike, state = neuron(current, {"u": u})
            (spike * weights + state["u"]).sum().backward()

        def step(compile: bool | None = compile) -> None:
            fn = ltc_step if compile is None else functools.partial(fused_ltc_step, compile=compile)
            spike, u_next = fn(current, u, tau, 1.0, neuron.surrogate)
            torch.autograd.grad((spike * weights + u_next).sum(), (current, u, tau))

        neuron_fns[variant], step_fns[variant] = whole, step
    return {"neuron": neuron_fns, "step": step_fns}


def run_cell(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One LTC-SN step, forward + backward, at each ``--cell-shapes``: reference vs fused (vs compiled),
    for the whole ``LTCNeuron`` (``scope: neuron``) and for the element-wise step alone (``scope: step``)."""
    rows = []
    for shape in args.cell_shapes:
        for scope, fns in _cell_cases(shape, any("compiled" in o.split("+") for o in args.options)).items():
            for variant, (seconds, speedup) in _interleaved(fns, args.cell_repeats).items():
                rows.append({"shape": list(shape), "scope": scope, "variant": variant,
                             "ms": round(1000 * seconds, 3), "speedup": round(speedup, 3)})
                print(f"  {scope} {list(shape)} {variant}: {1000 * seconds:.2f} ms, x{speedup:.2f}",
                      file=sys.stderr, flush=True)
    return rows


# ---- output --------------------------------------------------------------------------------
def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Readable tables: runs, options, breakdown, cell."""
    print(f"device {result['device']}, {result['threads']} thread(s), torch {result['torch']}, "
          f"batch {args.batch_size}, median of {args.batches} timed batches, glibc held to freed memory: "
          f"{result['held_freed_memory']}")
    width = max(len(r["option"]) for r in result["runs"])
    print(f"{'size':>6} {'algo':>5} {'T':>3} {'option':>{width}} {'s/batch':>8} {'samp*T/s':>9} {'peak MiB':>9} "
          f"{'faults':>7}")
    for r in result["runs"]:
        print(f"{r['size']:>6} {r['algorithm']:>5} {r['T']:>3} {r['option']:>{width}} {r['batch_s']:>8.3f} "
              f"{r['throughput']:>9.1f} {r['peak_mib']:>9.1f} {r['page_faults']:>7}")
    for size, table in result["breakdown"].items():
        print(f"breakdown of the FPTT step, {size}, T={args.options_steps} (share of profiled CPU time):")
        print(f"{'option':>{width}} " + " ".join(f"{c:>11}" for c in CATEGORIES) + f" {'speedup':>8}")
        for option, row in table.items():
            print(f"{option:>{width}} " + " ".join(f"{row[c]:>11.3f}" for c in CATEGORIES)
                  + f" {result['options'][size][option]['speedup']:>8.2f}")
    print("one LTC-SN step, forward + backward (speedup: median of paired ratios to the reference):")
    for r in result["cell"]:
        print(f"{r['scope']:>7} {str(r['shape']):>18} {r['variant']:>10} {r['ms']:>9.2f} ms  x{r['speedup']:.2f}")
    print(f"conv_share {result['conv_share']:.3f}  fptt_share {result['fptt_share']:.3f}")
    if "floor" in result:
        floor = result["floor"]
        print(f"floor of the non-convolution work: {1e3 * floor['total_s']:.0f} ms per batch; per option, best conv "
              "share and non-convolution time over the floor: " + ", ".join(
                  f"{option} {row['best_conv_share']:.3f} {row['nonconv_over_floor']:.2f}x"
                  for option, row in floor["options"].items()))
    if "loader_samples_per_s" in result:
        loader = result["loader"]
        print(f"data loader ({loader['size']}, {loader['batch_size']} per batch, {loader['num_workers']} worker(s)): "
              f"{result['loader_samples_per_s']:.1f} samples/s = {result['loader_vs_train']:.1f} x training "
              f"({loader['train_samples_per_s']:.2f} samples/s, the fastest case); "
              f"{result['loader_main_ms']:.1f} ms of the training process per batch")


def plot(result: dict[str, Any], path: str) -> None:
    """Throughput against T (FPTT, BPTT) and the step breakdown per option (first size), with each fp32
    option's best conv share when ``--floor`` measured it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    size = next(iter(result["breakdown"]))
    for algorithm in ("fptt", "bptt"):
        rows = [r for r in result["runs"] if r["size"] == size and r["algorithm"] == algorithm
                and r["option"] == "default"]
        if rows:
            left.plot([r["T"] for r in rows], [r["throughput"] for r in rows], marker="o", label=algorithm.upper())
    left.set(xlabel="time steps T", ylabel="samples x steps / s", title=f"training throughput ({size})")
    left.legend()
    table = result["breakdown"][size]
    bottom = [0.0] * len(table)
    for category in CATEGORIES:
        values = [row[category] for row in table.values()]
        right.bar(list(table), values, bottom=bottom, label=category)
        bottom = [b + v for b, v in zip(bottom, values)]
    floor = result.get("floor", {}).get("options", {})  # conv share with the rest at the floor (--floor)
    marks = [(index, floor[option]["best_conv_share"]) for index, option in enumerate(table) if option in floor]
    if marks:
        right.hlines([y for _, y in marks], [x - 0.4 for x, _ in marks], [x + 0.4 for x, _ in marks],
                     colors="black", linewidth=2, zorder=3, label="best conv share")
    right.set(ylabel="share of CPU time", title="FPTT step breakdown")
    right.set_xticks(range(len(table)), list(table), rotation=30, ha="right")
    right.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.35, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def option_name(text: str) -> str:
    """An option of ``common.OPTIONS``, or several joined by ``+`` (``compile_step+fused_adam``)."""
    try:
        common.option_parts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["small"],
                        help="small: 128x128, width 0.25; full: 416x416, width 1 (the paper's); tiny: tests")
    parser.add_argument("--algorithms", nargs="+", choices=["fptt", "bptt"], default=["fptt", "bptt"])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16], help="values of T")
    parser.add_argument("--options", nargs="+", type=option_name, default=list(common.OPTIONS),
                        help=f"from {', '.join(common.OPTIONS)}; several joined by '+' run together")
    parser.add_argument("--options-steps", type=int, default=8, help="T of the options and the breakdown")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    parser.add_argument("--profiled", type=int, default=3,
                        help="profiled batches after the timed ones (the breakdown of their mean)")
    parser.add_argument("--cell-shapes", type=lambda s: [int(v) for v in s.split(",")], nargs="*",
                        default=[[2, 64, 104, 104], [2, 256, 26, 26]], help="e.g. 2,64,104,104 (none: skip)")
    parser.add_argument("--cell-repeats", type=int, default=10)
    parser.add_argument("--loader-config", default="configs/quickstart_detect.yaml",
                        help="the datamodule whose training loader is timed (its data section)")
    parser.add_argument("--loader-batches", type=int, default=8, help="timed loader batches (0: skip)")
    parser.add_argument("--loader-warmup", type=int, default=2, help="untimed loader batches first")
    parser.add_argument("--floor", action="store_true",
                        help="also the memory-traffic floor of the non-convolution work and the best conv share (floor.py)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's allocator as it is (default: held to freed memory, as tools/train.py)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    parser.add_argument("--plot", metavar="PATH", help="save a PNG (throughput over T, breakdown per option)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # compiled kernels by name in the breakdown (read by inductor when it is imported)
    os.environ.setdefault("TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE", "1")
    with common.quiet():
        import torch
        from spikeloc.allocator import hold_freed_memory
        torch.set_num_threads(args.threads)
        result: dict[str, Any] = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
                                  "held_freed_memory": not args.glibc_default and hold_freed_memory()}
        result["cell"] = run_cell(args)
        result.update(run_training(args))
        if args.loader_batches:
            result.update(run_loader(args.sizes[0], result["runs"], args))
        if args.plot:
            plot(result, args.plot)
        if args.json:
            print(json.dumps(result))
        else:
            report(result, args)


if __name__ == "__main__":
    main()  # not under memory.py's WORKER_ENV, which gives every big tensor fresh pages (slower)
