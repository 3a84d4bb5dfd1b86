"""``benchmarks/gpu_check.py --smoke`` runs every row of the GPU check on a CPU (tiny shapes), so the script a GPU
owner runs is known to work before anyone spends GPU time on it.

SLOW-ish (~1 min on 2 cores): it trains tiny models in 3 modes, compiles one, and runs FSDP on 2 CPU processes
(``accelerate launch``).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROWS = (
    "nominal step", "pgd2 step", "free step", "step time ratio PGD-2/nominal", "step time ratio free/nominal",
    "peak memory", "loader workers for the PGD-2 step", "SDPA vs eager attention", "torch.compile", "bf16 attack", "no host sync",
    "FSDP (accelerate launch",
)


def test_gpu_check_smoke_runs_every_row_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    for row in ROWS:
        (line,) = [line for line in table if line.startswith(f"| {row}")]
        assert " fail" not in line and "| fail" not in line, line
    results = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table}
    # The checks that mean something on a CPU pass; the GPU-only ones say so.
    assert results["bf16 attack: eps-ball, [0, 1], 1/255 step, fp32 free delta"] == "ok"
    assert results["no host sync in a training step"].startswith("ok: pgd2 ok, free ok")
    assert results["torch.compile, free co-training step"].startswith("ok: first step")
    assert results["peak memory ratios"] == "skipped: no GPU"
    # The real thing on CPU: 2 processes, FSDP2, AdvSoupViTLayer units, every parameter a DTensor shard.
    fsdp = results["FSDP (accelerate launch, fsdp.yaml)"]
    assert fsdp.startswith("ok: 3 steps on 2 CPU processes, FSDP2") and "AdvSoupViTLayer" in fsdp, fsdp
    assert fsdp.endswith("parameters sharded") and "/" in fsdp
    workers = results["loader workers for the PGD-2 step"]
    assert " for " in workers and "images/s per worker (224 px JPEG" in workers, workers
    assert "steps/s" in results["free step"] and "MFU n/a (skipped: no GPU)" in results["free step"]
