"""The Trainer and its callbacks: checkpoints, exact resume, NaN guard, run records, logging."""
