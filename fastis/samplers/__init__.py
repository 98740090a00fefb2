"""Samplers for the published importance-sampling methods, as DataLoader batch samplers.

All follow one protocol, `BatchSampler` (fastis.samplers.base): `sampler.loader(ds)` (or
`DataLoader(fastis.data.Indexed(ds), batch_sampler=sampler)`), `len()`, `set_epoch()`,
`update(batch, scores)`, `stats()`, `state_dict()` / `load_state_dict()` with exact resume.
Pool methods (`PoolSampler`: UpperBound, exact BiasedLoss, SelectiveBackprop, RhoLoss) add
`select(batch, scores)`.
"""

from fastis.samplers.base import BatchSampler
from fastis.samplers.biased_loss import BiasedLoss
from fastis.samplers.dynamic_pruning import DynamicPruning
from fastis.samplers.high_loss_batches import HighLossBatches
from fastis.samplers.importance import ImportanceSampler
from fastis.samplers.loss_predictors import LossPredictor, LSTMLossPredictor, PerClassGaussian
from fastis.samplers.pool import Pick, PoolSampler
from fastis.samplers.ras import RAS
from fastis.samplers.rho_loss import RhoLoss
from fastis.samplers.selective_backprop import SelectiveBackprop
from fastis.samplers.soft_random import SoftRandom, Uniform
from fastis.samplers.upper_bound import UpperBound

__all__ = [
    "RAS",
    "BatchSampler",
    "BiasedLoss",
    "DynamicPruning",
    "HighLossBatches",
    "ImportanceSampler",
    "LSTMLossPredictor",
    "LossPredictor",
    "PerClassGaussian",
    "Pick",
    "PoolSampler",
    "RhoLoss",
    "SelectiveBackprop",
    "SoftRandom",
    "Uniform",
    "UpperBound",
]
