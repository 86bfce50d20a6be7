"""Model families, one module each, registered by FunASR model class.

Importing this package registers the built-in families; plugins (ASR_WORKER_PLUGINS) register
more with `register_family`.
"""

from gpu_worker.families import (
    fsmn_vad,
    funasr_nano,
    paraformer,
    paraformer_streaming,
    sensevoice,
)
from gpu_worker.families.base import (
    Family,
    family_for,
    family_for_class,
    known_model_classes,
    model_class_of,
    register_family,
)

__all__ = ["Family", "family_for", "family_for_class", "fsmn_vad", "funasr_nano",
           "known_model_classes",
           "model_class_of", "paraformer", "paraformer_streaming", "register_family",
           "sensevoice"]
