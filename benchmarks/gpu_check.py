#!/usr/bin/env python
"""One-command GPU check of co-training: speed, FLOP utilisation, memory, attention back-ends, torch.compile, the
bf16 attack's exactness, no host synchronisation per step, and the FSDP config. Synthetic data; one table.

    python benchmarks/gpu_check.py                 # one GPU: ViT-B/16, 224 px, bf16 autocast; < 8 minutes
    python benchmarks/gpu_check.py --batch_size 128 --peak_tflops 989
    python benchmarks/gpu_check.py --smoke         # CPU, tiny shapes, seconds: every row runs (CI: tests/)

Rows (each one ``ok``/``fail``/a number, or ``skipped: no GPU`` where a number only means something on a GPU):

- **steps/s** of a nominal step (``alpha=1``), a PGD-2 co-training step and a free co-training step
  (``train_attack="free"``), each ``training_step`` + AdamW, bf16 autocast, medians of ``--repeats`` interleaved steps.
- **MFU** (model FLOP utilisation): the FLOPs a step needs, counted analytically, over step time x the device's
  dense bf16 peak. Forward FLOPs per image (a multiply-add = 2 FLOPs): patch embedding ``2 * patches * 3 * P^2 * d``;
  per block ``2 * T * (4 d^2 + 2 d m)`` (projections, MLP) ``+ 4 * T^2 * d`` (scores and weighted sum); the head
  ``2 * d * classes``; ``T`` = patches + 1 tokens. A training forward+backward counts 3 forwards, an attack step
  (forward + backward to the input only, weights frozen) 2. Per step: nominal ``3 F(B)``, PGD-2
  ``2 * 2 F(B) + 3 F(2B) = 10 F(B)``, free ``3 F(2B) = 6 F(B)`` (the input gradient of the patch embedding that
  PGD and free training need, < 1%, is left out). Peak: from the device name (H200 and H100 SXM 989.4, H100 NVL
  835, H100 PCIe 756, A100 312, L40S 362 TFLOP/s; dense, no sparsity), or ``--peak_tflops``.
- **step time ratios** PGD-2/nominal (FLOPs: 3.33x) and free/nominal (FLOPs: 2x), and **peak memory ratios**
  (``torch.cuda.max_memory_allocated`` growth during steps).
- **SDPA vs eager attention**: a nominal training step with each back-end (``set_attn_implementation``).
- **torch.compile**: a free co-training step of the compiled model: compile time (first step) and step time.
- **bf16 attack exactness**: under bf16 autocast, PGD-2 at eps 4/255 stays inside the eps-ball and [0, 1] in pixel
  space, a single 1/255 step (no random start) moves pixels by exactly 1/255 (bf16 near 1.0 has a spacing of 1/128:
  a perturbation kept in bf16 would round it to 0 or 2/255), and free co-training's perturbation stays fp32 and
  inside the ball.
- **no host sync**: a PGD-2 and a free ``training_step`` under ``torch.cuda.set_sync_debug_mode("error")`` (CPU:
  counting ``Tensor.item``/``tolist``/``__bool__``/``__float__``/``__int__`` calls instead).
- **loader workers**: one data-loader worker's images/s on ImageNet-size JPEG files at 224 px (decode, random
  resized crop, flip, normalise; ``benchmarks/benchmark_data.py``, on this machine's CPU) and the number of workers
  the measured PGD-2 step needs: ``ceil(step images/s / worker images/s)``, compared with the machine's cores.
- **FSDP**: ``python -m accelerate.commands.launch --config_file scripts/accelerate/fsdp.yaml scripts/cotrain.py``
  (this interpreter's accelerate) for a few steps of a tiny model, on 2 processes (one per GPU up to 2; without a
  GPU, 2 CPU processes with gloo, so ``--smoke`` runs real FSDP): ``ok`` when every process trained with FSDP and
  a sharded model (``AdvSoupViTLayer`` units, ``DTensor`` parameters).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification  # noqa: E402
from hf_advsoup.attacks import AttackConfig, Normalization, attack  # noqa: E402
from hf_advsoup.trainer import CoTrainer  # noqa: E402
from hf_advsoup.training_args import CoTrainingArguments  # noqa: E402

NORM = Normalization(mean=(0.5,), std=(0.5,))
MODES = {"nominal": dict(alpha=1.0), "pgd2": dict(alpha=0.5, train_attack="pgd2"),
         "free": dict(alpha=0.5, train_attack="free")}
FLOPS_PER_STEP = {"nominal": 3.0, "pgd2": 10.0, "free": 6.0}
"""Forward-equivalents of one image per step (see the module docstring)."""

PEAK_TFLOPS = (("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("GH200", 989.4),
               ("A100", 312.0), ("L40S", 362.0))
"""Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), matched in order against the device name."""

SKIPPED = "skipped: no GPU"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: every row runs in seconds.")
    parser.add_argument("--batch_size", type=int, default=None, help="Clean images per step (default 64; smoke 4).")
    parser.add_argument("--repeats", type=int, default=None, help="Timed steps per mode (default 10; smoke 2).")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="Dense bf16 peak of the device in TFLOP/s (default: from the device name).")
    parser.add_argument("--compile_backend", default=None,
                        help="torch.compile backend (default inductor; smoke: eager, dynamo's graph capture alone, "
                        "which needs no compiler and keeps CI fast).")
    parser.add_argument("--skip_fsdp", action="store_true", help="Leave out the FSDP launch (a subprocess).")
    parser.add_argument("--_fsdp_child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    args.rest = rest
    args.batch_size = args.batch_size or (4 if args.smoke else 64)
    args.repeats = args.repeats or (2 if args.smoke else 10)
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    return args


# ------------------------------------------------------------------------------------------------ setup
def use_gpu(args) -> bool:
    return torch.cuda.is_available() and not args.smoke


def model_config(args) -> AdvSoupViTConfig:
    if args.smoke:
        return AdvSoupViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=8, num_labels=10)
    # ViT-B/16 at 224 px, ImageNet's 1000 classes (the paper's model).
    return AdvSoupViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                            image_size=224, patch_size=16, num_labels=1000)


def forward_flops(config: AdvSoupViTConfig) -> float:
    """Forward FLOPs of one image (see the module docstring)."""
    d, m, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    patches = (config.image_size // config.patch_size) ** 2
    tokens = patches + 1
    embed = 2 * patches * config.num_channels * config.patch_size ** 2 * d
    block = 2 * tokens * (4 * d * d + 2 * d * m) + 4 * tokens * tokens * d
    return embed + layers * block + 2 * d * config.num_labels


def peak_flops(args) -> tuple[float | None, str]:
    if not use_gpu(args):
        return None, "CPU"
    name = torch.cuda.get_device_name()
    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"{name} (peak {args.peak_tflops:g} TFLOP/s, --peak_tflops)"
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops * 1e12, f"{name} (dense bf16 peak {tflops:g} TFLOP/s)"
    return None, f"{name} (unknown peak: pass --peak_tflops for MFU)"


def build_trainer(args, mode: str, output_dir: str, attn: str = "sdpa", compile_backend: str | None = None):
    torch.manual_seed(0)
    model = AdvSoupViTForImageClassification(model_config(args))
    model.set_attn_implementation(attn)
    gpu = use_gpu(args)
    training_args = CoTrainingArguments(
        output_dir=output_dir, ema_decay=0.0, report_to=[], use_cpu=not gpu, bf16=gpu, eval_attack=None,
        per_device_train_batch_size=args.batch_size, disable_tqdm=True, **MODES[mode],
    )
    trainer = CoTrainer(model=model.to(training_args.device), args=training_args, normalization=NORM)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    # Trainer.train would prepare the model (DDP wrapper, bf16 autocast of its forward); do the same here.
    trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)
    if compile_backend is not None:
        trainer.model_wrapped = torch.compile(trainer.model_wrapped, backend=compile_backend)
    return trainer


def make_batch(args, device) -> dict[str, torch.Tensor]:
    config = model_config(args)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, config.num_labels, (args.batch_size,), generator=generator)
    return {"pixel_values": NORM.to_model(images).to(device), "labels": labels.to(device)}


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(trainer, batch) -> None:
    trainer.training_step(trainer.model_wrapped, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.state.global_step += 1  # free co-training tells a minibatch's replays apart by the step


def timed_steps(trainers: dict, batch, repeats: int, device) -> dict[str, float]:
    """Median seconds per step of each trainer, steps interleaved (2 warm-up steps each first)."""
    for trainer in trainers.values():
        step(trainer, batch)
        step(trainer, batch)
    synchronize(device)
    times = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            step(trainer, batch)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(args, mode: str, output_dir: str, device) -> float | None:
    """Peak allocated memory growth (MiB) over 2 steps of a fresh trainer (GPU only)."""
    if device.type != "cuda":
        return None
    trainer = build_trainer(args, mode, output_dir)
    batch = make_batch(args, device)
    step(trainer, batch)  # optimizer state exists before the baseline
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step(trainer, batch)
    step(trainer, batch)
    synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    del trainer
    torch.cuda.empty_cache()
    return peak


# ------------------------------------------------------------------------------------------------ checks
def check_bf16_attack(args, device) -> str:
    """The attack's perturbation stays fp32 under bf16 autocast: eps-ball, [0, 1] box and exact 1/255 steps."""
    torch.manual_seed(0)
    model = AdvSoupViTForImageClassification(model_config(args)).to(device).eval()
    batch = make_batch(args, device)
    x, y = batch["pixel_values"], batch["labels"]
    images = NORM.to_pixels(x)
    problems = []
    with torch.autocast(device.type, dtype=torch.bfloat16):
        eps = 4 / 255
        adversarial = attack(model, x, y, AttackConfig.from_preset("pgd2"), normalization=NORM,
                             forward_kwargs={"beta": 0.0}, generator=torch.Generator(device).manual_seed(0))
        delta = NORM.to_pixels(adversarial) - images
        if adversarial.dtype != torch.float32:
            problems.append(f"PGD-2 returned {adversarial.dtype}")
        if delta.abs().max().item() > eps + 1e-6:
            problems.append(f"max |delta| = {delta.abs().max().item() * 255:.4f}/255 > 4/255")
        if (images + delta).min().item() < -1e-6 or (images + delta).max().item() > 1 + 1e-6:
            problems.append("image left [0, 1]")
        one = AttackConfig(name="pgd", epsilon=1 / 255, steps=1, step_size=1 / 255, random_start=False)
        stepped = NORM.to_pixels(attack(model, x, y, one, normalization=NORM, forward_kwargs={"beta": 0.0})) - images
        free_box = (images > 2 / 255) & (images < 1 - 2 / 255)  # pixels the [0, 1] box does not clip
        moved = stepped[free_box].abs() * 255
        if moved.numel() and (moved - 1).abs().max().item() > 1e-3:
            problems.append(f"a 1/255 step moved pixels by {moved.min().item():.4f}..{moved.max().item():.4f}/255")
    # Free co-training: one replay under bf16 autocast keeps its perturbation fp32 and inside the ball.
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, "free", tmp)
        gpu_autocast = device.type == "cuda"  # the trainer's own autocast (bf16=True) on a GPU; CPU: ours
        with contextlib.nullcontext() if gpu_autocast else torch.autocast("cpu", dtype=torch.bfloat16):
            step(trainer, batch)
            step(trainer, batch)
        delta = trainer._free_batches[0].delta
        if delta.dtype != torch.float32:
            problems.append(f"free perturbation is {delta.dtype}")
        if delta.abs().max().item() > trainer.train_attack.epsilon + 1e-6:
            problems.append("free perturbation left the eps-ball")
        if delta.abs().max().item() == 0:
            problems.append("free perturbation did not move")
    return "ok" if not problems else "fail: " + "; ".join(problems)


def check_no_host_sync(args, device) -> str:
    """A PGD-2 and a free ``training_step`` with no device-to-host synchronisation."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("pgd2", "free"):
            trainer = build_trainer(args, mode, tmp)
            batch = make_batch(args, device)
            step(trainer, batch)
            synchronize(device)
            try:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        trainer.training_step(trainer.model_wrapped, batch)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                    results.append(f"{mode} ok")
                else:
                    with count_host_reads() as calls:
                        trainer.training_step(trainer.model_wrapped, batch)
                    results.append(f"{mode} ok" if not calls else f"{mode} fail ({', '.join(calls[:3])})")
            except RuntimeError as error:
                results.append(f"{mode} fail ({str(error).splitlines()[0][:80]})")
    how = "cuda sync debug mode" if device.type == "cuda" else "CPU: Tensor read calls counted"
    verdict = "ok" if all(r.endswith("ok") for r in results) else "fail"
    return f"{verdict}: {', '.join(results)} ({how})"


@contextlib.contextmanager
def count_host_reads():
    names = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__")
    originals = {name: getattr(torch.Tensor, name) for name in names}
    calls: list[str] = []

    def wrap(name, original):
        def counted(tensor, *a, **k):
            calls.append(name)
            return original(tensor, *a, **k)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def check_compile(args, device) -> str:
    """Compile time (first step) and step time of a free co-training step of the compiled model."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            trainer = build_trainer(args, "free", tmp, compile_backend=args.compile_backend)
            batch = make_batch(args, device)
            start = time.perf_counter()
            step(trainer, batch)
            synchronize(device)
            first = time.perf_counter() - start
            steps = []
            for _ in range(max(args.repeats, 2)):
                start = time.perf_counter()
                step(trainer, batch)
                synchronize(device)
                steps.append(time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - reported in the table, the other rows still run
            return f"fail: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
    return f"ok: first step {first:.1f} s (compile), then {statistics.median(steps) * 1e3:.1f} ms/step " \
           f"(backend {args.compile_backend})"


def loader_workers(args, step_images_per_s: float) -> str:
    """How many data-loader workers feed the measured PGD-2 step: one worker's rate on ImageNet-size JPEG files at
    224 px (decode, random resized crop, flip, normalise; ``benchmarks/benchmark_data.py``), measured on this
    machine's CPU, against the step's images/s."""
    from benchmark_data import benchmark_jpeg_worker, workers_needed

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker runs one thread
    try:
        worker = benchmark_jpeg_worker(8 if args.smoke else 64, 224, repeats=1 if args.smoke else 2)
    finally:
        torch.set_num_threads(threads)
    rate = worker["transform_images_per_s"]
    workers = workers_needed(step_images_per_s, rate)
    cores = os.cpu_count() or 1
    verdict = "fits" if workers < cores else "does NOT fit"
    plural = "s" if workers > 1 else ""
    return (f"{workers} worker{plural} for {step_images_per_s:,.0f} images/s at {rate:,.0f} images/s per worker "
            f"(224 px JPEG decode + crop + flip, measured here); {verdict} this machine's {cores} cores")


FSDP_TRAINING = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--image_size", "16", "--max_steps", "3", "--max_train_samples", "64", "--max_eval_samples", "16",
    "--per_device_train_batch_size", "8", "--robust_eval_samples", "0", "--eval_strategy", "no",
    "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--dataset_name", "digits",
    "--soup_table", "false",
]
"""A tiny co-training run on the embedded digits (offline) for the FSDP launch."""


def fsdp_processes(args) -> int:
    """Processes of the FSDP row: 2 CPU processes without a GPU (gloo), else one per GPU up to 2."""
    return min(torch.cuda.device_count(), 2) if use_gpu(args) else 2


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_fsdp(args) -> str:
    """``accelerate launch`` with scripts/accelerate/fsdp.yaml (run by this interpreter, not an ``accelerate`` found on
    PATH): a few co-training steps, ``ok`` when every process trained with FSDP and a sharded model (FSDP units
    including ``AdvSoupViTLayer``, ``DTensor`` parameters). Without a GPU it runs 2 CPU processes (gloo)."""
    if args.skip_fsdp:
        return "skipped (--skip_fsdp)"
    gpu = use_gpu(args)
    processes = fsdp_processes(args)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "scripts" / "accelerate" / "fsdp.yaml"), "--num_processes", str(processes),
                   "--num_machines", "1", "--main_process_port", str(_free_port()), "--dynamo_backend", "no",
                   os.path.abspath(__file__), "--_fsdp_child", "--output_dir", os.path.join(tmp, "run"),
                   *FSDP_TRAINING]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        if not gpu:
            # CPU processes with gloo: CoTrainer applies the launch's FSDP plugin (accelerate alone enables FSDP on
            # accelerators only, hf_advsoup/training/distributed.py).
            command[3:3] = ["--mixed_precision", "no"]
            command.append("--use_cpu")
            env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        try:
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return "fail: no result after 300 s"
    report = [json.loads(line[len("FSDP_CHECK "):]) for line in result.stdout.splitlines()
              if line.startswith("FSDP_CHECK ")]
    if result.returncode != 0 or not report:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"fail (exit {result.returncode}): {tail[0][:120]}"
    where = f"{processes} {'GPU' if gpu else 'CPU'} process{'es' if processes > 1 else ''}"
    problems = [f"process {info['process']}: {problem}" for info in report for problem in (
        (["trained without FSDP"] if not info["fsdp"] else [])
        + (["no AdvSoupViTLayer unit"] if "FSDPAdvSoupViTLayer" not in info["units"] else [])
        + ([f"{info['dtensor']}/{info['parameters']} parameters are DTensors"]
           if processes > 1 and info["dtensor"] != info["parameters"] else []))]
    if len(report) != processes:
        problems.append(f"{len(report)} of {processes} processes reported")
    if problems:
        return f"fail ({where}): " + "; ".join(problems)
    info = report[0]
    return (f"ok: {info['steps']} steps on {where}, FSDP{info['version']}, {len(info['units'])} units "
            f"({', '.join(sorted(set(info['units'])))}), {info['dtensor']}/{info['parameters']} parameters "
            f"sharded")


def fsdp_child(args) -> None:
    """Runs inside ``accelerate launch``: scripts/cotrain.py's main(); every process reports whether FSDP sharded
    its model (:func:`hf_advsoup.training.distributed.sharding_report`)."""
    import importlib.util

    from hf_advsoup.training.distributed import sharding_report

    spec = importlib.util.spec_from_file_location("cotrain", ROOT / "scripts" / "cotrain.py")
    cotrain = importlib.util.module_from_spec(spec)
    sys.modules["cotrain"] = cotrain
    spec.loader.exec_module(cotrain)
    original = CoTrainer.train

    def train(self, *a, **k):
        output = original(self, *a, **k)
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        sharding = sharding_report(self.model_wrapped)
        print("FSDP_CHECK " + json.dumps({
            "process": self.accelerator.process_index, "fsdp": bool(self.is_fsdp_enabled),
            "steps": self.state.global_step, "units": sharding["fsdp_units"], "dtensor": sharding["dtensor"],
            "parameters": sharding["parameters"],
            "version": getattr(plugin, "fsdp_version", None) if plugin is not None else None,
        }), flush=True)
        return output

    CoTrainer.train = train
    cotrain.main(args.rest)


# ------------------------------------------------------------------------------------------------ main
def run(args) -> list[tuple[str, str]]:
    gpu = use_gpu(args)
    device = torch.device("cuda") if gpu else torch.device("cpu")
    config = model_config(args)
    peak, device_name = peak_flops(args)
    rows = [("device", f"{device_name}; torch {torch.__version__}"),
            ("model", f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.image_size} px, "
                      f"patch {config.patch_size}, batch {args.batch_size}, {'bf16 autocast' if gpu else 'fp32'}")]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {mode: build_trainer(args, mode, tmp) for mode in MODES}
        batch = make_batch(args, device)
        seconds = timed_steps(trainers, batch, args.repeats, device)
        del trainers
        if gpu:
            torch.cuda.empty_cache()
        flops = forward_flops(config) * args.batch_size
        for mode in MODES:
            mfu = f"MFU {100 * FLOPS_PER_STEP[mode] * flops / seconds[mode] / peak:.1f}%" if peak else \
                "MFU n/a" + ("" if gpu else f" ({SKIPPED})")
            rows.append((f"{mode} step", f"{1 / seconds[mode]:.2f} steps/s ({seconds[mode] * 1e3:.1f} ms), "
                                         f"{FLOPS_PER_STEP[mode] * flops / seconds[mode] / 1e12:.1f} TFLOP/s, {mfu}"))
        rows.append(("step time ratio PGD-2/nominal", f"{seconds['pgd2'] / seconds['nominal']:.2f}x (FLOPs 3.33x)"))
        rows.append(("loader workers for the PGD-2 step", loader_workers(args, args.batch_size / seconds["pgd2"])))
        rows.append(("step time ratio free/nominal", f"{seconds['free'] / seconds['nominal']:.2f}x (FLOPs 2x; "
                                                     "target <= 2.3x)"))
        memory = {mode: peak_memory(args, mode, tmp, device) for mode in MODES}
        if gpu:
            rows.append(("peak memory nominal/PGD-2/free",
                         f"{memory['nominal']:.0f} / {memory['pgd2']:.0f} / {memory['free']:.0f} MiB; ratios "
                         f"{memory['pgd2'] / memory['nominal']:.2f}x / {memory['free'] / memory['nominal']:.2f}x"))
        else:
            rows.append(("peak memory ratios", SKIPPED))
        attention = timed_steps({name: build_trainer(args, "nominal", tmp, attn=name) for name in ("sdpa", "eager")},
                                batch, args.repeats, device)
        rows.append(("SDPA vs eager attention (nominal step)",
                     f"{attention['sdpa'] * 1e3:.1f} vs {attention['eager'] * 1e3:.1f} ms: SDPA "
                     f"{attention['eager'] / attention['sdpa']:.2f}x faster"))
    rows.append(("torch.compile, free co-training step", check_compile(args, device)))
    rows.append(("bf16 attack: eps-ball, [0, 1], 1/255 step, fp32 free delta", check_bf16_attack(args, device)))
    rows.append(("no host sync in a training step", check_no_host_sync(args, device)))
    rows.append(("FSDP (accelerate launch, fsdp.yaml)", check_fsdp(args)))
    return rows


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'check'.ljust(width)} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args._fsdp_child:
        fsdp_child(args)
        return 0
    if args.rest:
        raise SystemExit(f"Unknown arguments: {' '.join(args.rest)}")
    if args.smoke:
        torch.set_num_threads(1)
    start = time.perf_counter()
    rows = run(args)
    rows.append(("total time", f"{time.perf_counter() - start:.0f} s"))
    print(format_table(rows))
    return 1 if any(value.startswith("fail") or " fail" in value for _, value in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
