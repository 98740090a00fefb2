"""Samplers for the published importance-sampling methods, as DataLoader batch samplers.

All follow one protocol (fastis.samplers._base): `DataLoader(fastis.data.Indexed(ds),
batch_sampler=sampler)`, `len()`, `set_epoch()`, `update(batch, scores)`, `stats()`,
`state_dict()` / `load_state_dict()` with exact resume. Pool methods (UpperBound, exact
BiasedLoss) add `select(batch, scores)`.
"""

from fastis.samplers._base import BatchSampler
from fastis.samplers._pool import Pick
from fastis.samplers.biased_loss import BiasedLoss
from fastis.samplers.high_loss_batches import HighLossBatches
from fastis.samplers.importance import ImportanceSampler
from fastis.samplers.loss_predictors import LSTMLossPredictor, PerClassGaussian
from fastis.samplers.ras import RAS
from fastis.samplers.soft_random import SoftRandom, Uniform
from fastis.samplers.upper_bound import UpperBound

__all__ = [
    "RAS",
    "BatchSampler",
    "BiasedLoss",
    "HighLossBatches",
    "ImportanceSampler",
    "LSTMLossPredictor",
    "PerClassGaussian",
    "Pick",
    "SoftRandom",
    "Uniform",
    "UpperBound",
]
