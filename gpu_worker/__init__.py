"""GPU worker: one process per device holding a FunASR model and batching requests."""
