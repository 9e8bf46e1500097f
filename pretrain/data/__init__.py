"""Pretraining data: MVTec-layout folders, the multi-class pretraining set, synthetic anomalies
and the two-view photometric augmentation."""

from pretrain.data.augment import PhotometricAugment
from pretrain.data.folders import DatasetError, MVTecCategory, Sample, load_sample
from pretrain.data.pretraining import (
    ClassBatchSampler,
    PretrainingDataset,
    PretrainingSet,
    TrainItem,
    draw_shots,
)
from pretrain.data.synthetic import SyntheticAnomalies

__all__ = [
    "ClassBatchSampler",
    "DatasetError",
    "MVTecCategory",
    "PhotometricAugment",
    "PretrainingDataset",
    "PretrainingSet",
    "Sample",
    "SyntheticAnomalies",
    "TrainItem",
    "draw_shots",
    "load_sample",
]
