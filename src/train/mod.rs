//! Training: optimizer, LR schedule, loop, checkpoints (filled in by the training work).
