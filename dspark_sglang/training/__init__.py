"""DSpark drafter training: prompts, on-policy answers, target feature cache, batched training
forward, losses and a resumable trainer (DSpark §4 / DeepSpec recipe)."""
