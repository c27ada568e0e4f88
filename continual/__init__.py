"""DyTox: transformers for continual learning with dynamic token expansion (Douillard et al., CVPR 2022)."""
from continual.dytox import DyTox, DyToxConfig, DyToxOutput
from continual.reference import load_reference_checkpoint

__all__ = ["DyTox", "DyToxConfig", "DyToxOutput", "load_reference_checkpoint"]
