"""Scheduler process: public gRPC API, GPU monitoring, dispatch and worker supervision.

Never imports torch, funasr or gpu_worker (checked by import-linter in the tests).
"""

__version__ = "0.1.0"
