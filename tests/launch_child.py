"""What a launched ``scripts/cotrain.py`` process really ran, for the tests of distributed modes.

Run in place of ``scripts/cotrain.py`` under ``accelerate launch`` or ``torchrun`` (same arguments); it calls
``cotrain.main`` and, when training ends, every process writes ``$HF_ADVSOUP_LAUNCH_REPORT/rank{N}.json``: the
accelerator's distributed type, the process count and index, whether the Trainer ran FSDP, and the sharding of the
prepared model (:func:`hf_advsoup.training.distributed.sharding_report`, plus the placement and local shape of each
classification token). A run that silently fell back to a plain one shows up there (``NO``/``MULTI_CPU``, no
``DTensor``).
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import cotrain  # noqa: E402

from hf_advsoup.training import CoTrainer  # noqa: E402
from hf_advsoup.training.distributed import sharding_report  # noqa: E402


def describe(trainer) -> dict:
    state = trainer.accelerator.state
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    tokens = {}
    for name, param in model.named_parameters():
        if name.endswith("cls_token"):
            local = param.to_local() if hasattr(param, "to_local") else param
            tokens[name] = {"type": type(param).__name__, "shape": list(param.shape),
                            "local_shape": list(local.shape),
                            "placements": [str(p) for p in getattr(param, "placements", [])]}
    return {
        "distributed_type": str(state.distributed_type).split(".")[-1],
        "num_processes": state.num_processes,
        "process_index": state.process_index,
        "local_process_index": state.local_process_index,
        "node_rank": int(os.environ.get("GROUP_RANK", -1)),  # torchrun's rank of this process's machine
        "is_fsdp_enabled": bool(trainer.is_fsdp_enabled),
        "mixed_precision": state.mixed_precision,
        "global_step": trainer.state.global_step,
        "sharding": sharding_report(model),
        "tokens": tokens,
        # --streaming: this process's part of the stream (rank, world size, how it was split) and where it is.
        "stream": trainer._stream.describe() if getattr(trainer, "_stream", None) is not None else None,
    }


def main() -> None:
    if not os.environ.get("HF_ADVSOUP_LAUNCH_REPORT"):
        cotrain.main(sys.argv[1:])  # no report asked for: scripts/cotrain.py as it is
        return
    report_dir = Path(os.environ["HF_ADVSOUP_LAUNCH_REPORT"])
    report_dir.mkdir(parents=True, exist_ok=True)
    original = CoTrainer.train

    def train(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        report = describe(self)
        (report_dir / f"rank{report['process_index']}.json").write_text(json.dumps(report, indent=1))
        return output

    CoTrainer.train = train
    cotrain.main(sys.argv[1:])


if __name__ == "__main__":
    main()
