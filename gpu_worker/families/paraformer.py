"""Paraformer (offline) and its hotword-capable variants SeACo-/Contextual-Paraformer.

Plain Paraformer takes no language hint and no hotwords; its text depends on padding, so it is
batched only with clips of equal length. SeACo and Contextual Paraformer take hotwords as one
space-separated `hotword` string.
"""

from __future__ import annotations

from gpu_worker.families.base import Family, register_family

PARAFORMER = register_family(Family(name="paraformer", model_classes=("Paraformer",),
                                    engines=("generate", "direct")))
SEACO = register_family(Family(name="seaco",
                               model_classes=("SeacoParaformer", "ContextualParaformer"),
                               hotwords=True))
