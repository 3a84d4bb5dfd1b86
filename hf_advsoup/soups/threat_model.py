"""The attack of a robust sweep: built from a preset name with overrides, and described as a JSON-ready threat
model (recorded with every robust number and in model cards)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def build_attack(name: str, *, epsilon: float | str | None = None, steps: int | None = None,
                 target_classes: int | None = None, autoattack_attacks: Sequence[str] = ()):
    """The :class:`~hf_advsoup.attacks.AttackConfig` of preset ``name`` (``"report"``, ``"pgd40"``,
    ``"autoattack"``, ``"pgd2"``, ...) with optional ``epsilon`` (pixel units, a number or a fraction such as
    ``"8/255"``), ``steps`` and ``target_classes`` (MultiTargeted classes) overrides. ``autoattack_attacks``
    (``"autoattack"`` only, e.g. ``["apgd-ce"]``) runs just those AutoAttack attacks (pyautoattack's custom version)
    instead of the standard version."""
    from ..attacks import AUTOATTACK_ATTACKS, PRESETS, AttackConfig

    if name not in PRESETS:
        raise ValueError(f"Unknown attack {name!r}; valid presets: {', '.join(PRESETS)} (or 'none').")
    if name == "autoattack":
        try:
            import pyautoattack  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "--attack autoattack needs pyautoattack: pip install --no-deps pyautoattack==0.2.0 (or use pgd40)."
            ) from error
    overrides: dict[str, Any] = {}
    if autoattack_attacks:
        if name != "autoattack":
            raise ValueError(f"autoattack_attacks {list(autoattack_attacks)} needs the 'autoattack' attack, got "
                             f"{name!r}.")
        unknown = [a for a in autoattack_attacks if a not in AUTOATTACK_ATTACKS]
        if unknown:
            raise ValueError(f"Unknown AutoAttack attacks {unknown}; valid: {', '.join(AUTOATTACK_ATTACKS)}.")
        overrides.update(autoattack_version="custom", autoattack_attacks=list(autoattack_attacks))
    if epsilon is not None:
        overrides["epsilon"] = epsilon
    if steps is not None:
        overrides["steps"] = steps
    if target_classes is not None:
        overrides["target_classes"] = target_classes
    return AttackConfig.from_preset(name, **overrides)


def threat_model_of(config, preset: str | None = None) -> dict[str, Any]:
    """JSON-ready threat model of an attack config: ``attack`` (the preset name when given), ``name`` (the attack as
    run, e.g. ``"PGD-20 (Adam) + MT-9"``: the step count is the one that ran), ``description`` (every setting, one
    sentence, for cards), ``norm``, ``epsilon`` (pixel units), ``steps``, ``restarts``, ``step_size``,
    ``lr_decay_steps`` (the Adam decay points actually used), ``target_classes`` and the full config."""
    gradient = config.name != "autoattack"  # AutoAttack runs its own schedules: no single step count
    return {
        "attack": preset or config.name,
        "name": config.short_name,
        "description": config.description,
        "norm": config.norm,
        "epsilon": float(config.epsilon),
        "steps": int(config.steps) if gradient else None,
        "version": config.autoattack_version if not gradient else None,
        "attacks": list(config.autoattack_attacks) if not gradient and config.autoattack_attacks else None,
        "restarts": int(config.restarts),
        "step_size": float(config.effective_step_size) if gradient else None,
        "lr_decay_steps": config.effective_lr_decay_steps if config.name == "pgd40" else None,
        "target_classes": int(config.target_classes),
        "loss": config.loss,
        "config": config.to_dict(),
    }


__all__ = [
    "build_attack",
    "threat_model_of",
]
