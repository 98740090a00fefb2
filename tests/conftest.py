"""Fixtures shared by the fastis tests (helpers that are not fixtures live in helpers.py)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter (slow:
    # the kernel tests keep their sizes small). Set before any kernel module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from helpers import STRUCTURE_IDS, STRUCTURES

import fastis


@pytest.fixture(params=STRUCTURES, ids=STRUCTURE_IDS)
def structure(request):
    """Each of the two weighted-index classes, for behaviour they share."""
    return request.param


@pytest.fixture
def threads():
    """fastis.set_num_threads for one test; the previous count is restored afterwards."""
    before = fastis.get_num_threads()
    yield fastis.set_num_threads
    fastis.set_num_threads(before)
