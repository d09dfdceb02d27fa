"""Face-recognition backbones (arcface_torch-compatible names) and margin heads.

Import from here rather than the submodules: the registry is the one place that knows the
model names, aliases and how to load weights into them.
"""

from facedistill.models.heads import MarginHead, create_margin_head
from facedistill.models.registry import (
    count_parameters,
    create_backbone,
    infer_arch,
    list_backbones,
    load_backbone_weights,
    load_state_dict_file,
)

__all__ = [
    "create_backbone",
    "list_backbones",
    "load_state_dict_file",
    "load_backbone_weights",
    "infer_arch",
    "count_parameters",
    "create_margin_head",
    "MarginHead",
]
