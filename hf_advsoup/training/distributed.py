"""FSDP on CPU processes, and what a run is really sharded like.

``accelerate`` (1.16) turns an FSDP launch into FSDP only on accelerators: :class:`accelerate.state.AcceleratorState`
enables its FSDP plugin in the branch of multi-GPU/NPU/XPU/... runs, so two CPU processes launched with an FSDP
config (``ACCELERATE_USE_FSDP=true``, gloo) quietly train as **plain data-parallel copies** (``MULTI_CPU``), and one
CPU process as a plain run. PyTorch's FSDP2 (``fully_shard``) itself runs on CPU with gloo. :func:`enable_fsdp_on_cpu`
finishes what the launch asked for: it gives the accelerator the FSDP plugin that accelerate built from the launch's
environment and marks the run ``FSDP``, so the Trainer's own FSDP path runs unchanged (``fully_shard`` of each
``AdvSoupViTLayer`` and the root through :func:`accelerate.utils.fsdp_utils.fsdp2_prepare_model`, sharded
optimizer state, full or sharded state dicts, sharded checkpoints and their resume). It is what makes the CPU tests
of FSDP (``tests/test_fsdp.py``) exercise the code a GPU cluster runs.

:func:`sharding_report` says what a prepared model really is (FSDP units, ``DTensor`` parameters and their shards),
so a test or a launch check can fail when a mode fell back to a plain run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (``accelerate launch`` with an FSDP config or ``--use_fsdp`` sets
    ``ACCELERATE_USE_FSDP=true`` in every process)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator) -> bool:
    """Turn a CPU run that was launched with FSDP into one (see the module docstring); return whether it did.

    Does nothing unless FSDP was requested (:func:`fsdp_requested`), the run is on CPU processes
    (``MULTI_CPU``: ``--use_cpu`` or ``ACCELERATE_USE_CPU=1``, gloo) and accelerate left FSDP off. The plugin is
    accelerate's own, read from the launch's ``FSDP_*`` environment (version, wrap policy and classes, state dict
    type, resharding) with the launch's mixed precision. Call it right after the accelerator is created, before
    anything is prepared.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not fsdp_requested() or getattr(state, "fsdp_plugin", None) is not None:
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs FSDP2 (fsdp_version: 2 in the accelerate config; FSDP1 has no "
                         "CPU support in torch).")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP on %d CPU processes (gloo): accelerate enables FSDP on accelerators only, so the launch's FSDP "
                "plugin (version %d, %s) is applied here.", state.num_processes, plugin.fsdp_version,
                plugin.mixed_precision_policy or "fp32")
    return True


def initialize_before_attacks(model: nn.Module) -> None:
    """Finish FSDP2's lazy initialisation of ``model`` (the root unit) now, while its parameters are trainable.

    FSDP2 initialises at the first forward of the root unit and then fixes, per unit, the original and the reduce
    dtype of the gradients from the parameters that require grad at that moment. In co-training the first forward is
    the attack's, which freezes every weight (input gradients only): the units would record no dtype, and under
    mixed precision the bf16 gradients of the training backward would then be assigned to the fp32 parameters
    unconverted ("attempting to assign a gradient with dtype BFloat16 to a tensor with grad_dtype Float"). The
    initialisation is local to the process (no communication) and runs once; later calls do nothing.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()  # no public entry point in torch 2.13; a no-op once initialised


@contextlib.contextmanager
def plain_class(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` has its own class again if FSDP2 sharded it.

    ``fully_shard`` gives a sharded module a new class, ``FSDP<name>``, defined in torch's FSDP package;
    ``save_pretrained`` writes the remote code of the model's class (``auto_map`` in ``config.json`` and the module
    file with its relative imports), so a model saved under FSDP would name ``_fsdp_init.FSDPAdvSoup...`` and carry
    torch's FSDP sources instead of ``modeling_advsoup.py``. Saving inside this block writes the model's own.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        yield model
        return
    sharded_class = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    own = next(cls for cls in sharded_class.__mro__[1:] if not issubclass(cls, FSDPModule))
    model.__class__ = own
    try:
        yield model
    finally:
        model.__class__ = sharded_class


def sharding_report(model: nn.Module) -> dict[str, Any]:
    """What ``model`` (as prepared by the Trainer) is sharded like.

    Returns ``fsdp_units`` (class names of the modules ``fully_shard`` made FSDP units, in order), ``dtensor``
    (parameters that are ``DTensor`` s), ``parameters`` (all), ``sharded`` (names of the parameters whose local
    shard is smaller than the whole: every process holds part of them), ``local_numel`` and ``numel`` (elements held
    by this process, and in all), and ``mp_param_dtype`` (the FSDP mixed-precision compute dtype of the root unit,
    ``None`` without one).
    """
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without FSDP2
        FSDPModule = DTensor = ()  # noqa: N806
    units = [type(module).__name__ for module in model.modules() if FSDPModule and isinstance(module, FSDPModule)]
    dtensor = sharded = parameters = local = total = 0
    sharded_names = []
    for name, param in model.named_parameters():
        parameters += 1
        total += param.numel()
        if DTensor and isinstance(param, DTensor):
            dtensor += 1
            local_numel = param.to_local().numel()
            local += local_numel
            if local_numel < param.numel():
                sharded += 1
                sharded_names.append(name)
        else:
            local += param.numel()
    mp_dtype = None
    if FSDPModule and isinstance(model, FSDPModule):
        state = model._get_fsdp_state()
        policy = getattr(state, "_mp_policy", None)
        mp_dtype = str(policy.param_dtype) if policy is not None and policy.param_dtype is not None else None
    return {"fsdp_units": units, "dtensor": dtensor, "parameters": parameters, "sharded": sharded_names,
            "local_numel": local, "numel": total, "mp_param_dtype": mp_dtype}


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` as a full tensor on CPU (``DTensor`` shards gathered: call it on every process)."""
    from torch.distributed.tensor import DTensor

    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
            for name, p in model.named_parameters()}


__all__ = [
    "enable_fsdp_on_cpu",
    "fsdp_requested",
    "full_parameters",
    "initialize_before_attacks",
    "plain_class",
    "sharding_report",
]
