"""Training: the loop, its callbacks, the objective, the optimizer step."""
