"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

import math
from dataclasses import dataclass


@dataclass
class WarmupCosine:
    """LR multiplier for `torch.optim.lr_scheduler.LambdaLR`.

    A callable object rather than a closure: `LambdaLR.state_dict()` stores an object's fields (plain numbers,
    so the checkpoint still loads with ``weights_only=True``) and a resumed run continues the same curve.
    """

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
