"""Where the randomness of a training step comes from: one ``torch.Generator`` per ``(seed, optimizer step,
micro-batch, process)``, so a resumed run repeats augmentation and the attack's random start exactly."""

from __future__ import annotations

import numpy as np
import torch


def step_generator(
    seed: int, global_step: int, micro_step: int, process_index: int, device: torch.device, stream: int = 0
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``(stream, seed, global_step, micro_step, process_index)``.

    ``stream`` separates uses: 0 = training (augmentation, then attack), 1 = robust-accuracy monitoring.

    ``numpy.random.SeedSequence`` mixes the tuple into 64 well-spread bits, so neighbouring steps and processes get
    unrelated streams and a resumed run (same step numbers) gets the same ones.
    """
    words = np.random.SeedSequence([stream, seed, global_step, micro_step, process_index]).generate_state(2, np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed((int(words[0]) << 32) | int(words[1]))
    return generator


__all__ = [
    "step_generator",
]
