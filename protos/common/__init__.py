"""The contract between the scheduler and its workers: constants, conversions and the worker
config, defined once. Imports nothing of ours outside `protos` and nothing heavy (no torch)."""
