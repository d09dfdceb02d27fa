"""Distillation losses: ILED, RPSD (with its memory bank), the baselines and the objective."""

from facedistill.losses.baselines import (
    cosine_loss,
    l2_loss,
    rkd_angle,
    rkd_distance,
    rkd_loss,
    sp_loss,
)
from facedistill.losses.centering import RunningMean, mean_of_unit_rows
from facedistill.losses.config import (
    DISTILL_TYPES,
    DistillConfig,
    ILEDConfig,
    RKDConfig,
    RPSDConfig,
)
from facedistill.losses.iled import ILEDLoss, annealed_rho, hard_count
from facedistill.losses.memory_bank import MemoryBank
from facedistill.losses.objective import DistillationObjective
from facedistill.losses.rpsd import RPSDLoss

__all__ = [
    "DISTILL_TYPES",
    "DistillConfig",
    "DistillationObjective",
    "ILEDConfig",
    "ILEDLoss",
    "MemoryBank",
    "RKDConfig",
    "RPSDConfig",
    "RPSDLoss",
    "RunningMean",
    "annealed_rho",
    "cosine_loss",
    "hard_count",
    "l2_loss",
    "mean_of_unit_rows",
    "rkd_angle",
    "rkd_distance",
    "rkd_loss",
    "sp_loss",
]
