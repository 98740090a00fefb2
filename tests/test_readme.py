"""The README's code runs as written: the plain loop and the fastis loop (which differ in at
most five lines), every method's constructor from its table, the pool lines, resume, the
DDP example on two processes, and the Lightning and transformers examples.

Each block is taken from README.md, after its `<!-- marker -->`."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import torch
from process_helpers import free_port, run_ranks
from torch import nn
from torch.utils.data import TensorDataset

import fastis

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
POOL_METHODS = ("UpperBound", "BiasedLoss exact", "SelectiveBackprop", "RhoLoss")


def readme_block(marker: str) -> str:
    return re.search(r"```python\n(.*?)```", README.split(marker, 1)[1], re.S).group(1)


def changed_lines(before: str, after: str) -> int:
    """Lines added, removed or replaced from `before` to `after` (a replaced pair counts
    once)."""
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines())
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes()
               if tag != "equal")


def with_pool_lines(loop: str, model_call: str = "model(") -> str:
    pool = readme_block("<!-- pool-lines -->").rstrip("\n").replace("model(", model_call)
    unpack = "        x, y = batch\n"
    assert loop.count(unpack) == 1
    return loop.replace(unpack, unpack + pool + "\n")


def variants() -> dict[str, str]:
    """Method -> the README loop with that method's constructor (and the pool lines for
    the methods that score a pool)."""
    loop = readme_block("<!-- sampler-loop -->")
    uniform_line = next(line for line in loop.splitlines() if line.startswith("sampler = "))
    section = README.split("What changes for each method", 1)[1].split("<!-- pool-lines -->")[0]
    out = {"Uniform": loop}
    for row in section.splitlines():
        found = re.match(r"\| `(\w+)`( exact)?[^|]*\| `(sampler = [^`]+)` \|", row)
        if found:
            name = found.group(1) + (found.group(2) or "")
            code = loop.replace(uniform_line, found.group(3))
            out[name] = with_pool_lines(code) if name in POOL_METHODS else code
    return out


VARIANTS = variants()


def namespace(epochs: int) -> dict:
    """The names the README's loop uses, on a small synthetic data set."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (300,), generator=generator)
    images = torch.randn(300, 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / 5
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    irreducible = torch.rand(300, generator=generator).numpy()  # as if from a held-out model
    return {"train_set": TensorDataset(images, labels), "train_labels": labels,
            "irreducible": irreducible,
            "model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
            "epochs": epochs, "fastis": fastis, "torch": torch,
            "DataLoader": torch.utils.data.DataLoader, "F": torch.nn.functional}


def test_the_fastis_loop_changes_at_most_five_lines_of_the_plain_one():
    plain, ours = readme_block("<!-- plain-loop -->"), readme_block("<!-- sampler-loop -->")
    assert changed_lines(plain, ours) <= 5
    exec(plain, namespace(1))  # the plain loop runs too


def test_the_table_covers_every_method():
    assert set(VARIANTS) == {"Uniform", "SoftRandom", "ImportanceSampler", "RAS",
                             "HighLossBatches", "BiasedLoss", "UpperBound", "BiasedLoss exact",
                             "DynamicPruning", "SelectiveBackprop", "RhoLoss"}
    for name in POOL_METHODS:
        assert changed_lines(VARIANTS["Uniform"], VARIANTS[name]) == 3  # constructor + 2


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_readme_loop_trains_and_resumes_exactly(name, tmp_path):
    code = VARIANTS[name]
    straight = namespace(3)
    exec(code, straight)
    # Three epochs (a pruned epoch is shorter: their starts say how long each was).
    assert straight["sampler"].step == straight["sampler"].epoch_start(3) > 0
    # One epoch (of a run planned for three), a checkpoint of the three states, then fresh
    # objects resumed from it.
    setup, body = code.split("for epoch in range", 1)
    first = namespace(3)
    exec(setup, first)
    first["epochs"] = 1
    exec("for epoch in range" + body, first)
    torch.save({"model": first["model"].state_dict(),
                "optimizer": first["optimizer"].state_dict(),
                "sampler": first["sampler"].state_dict()}, tmp_path / "ckpt.pt")
    resumed = namespace(3)
    exec(setup, resumed)
    state = torch.load(tmp_path / "ckpt.pt")
    resumed["model"].load_state_dict(state["model"])
    resumed["optimizer"].load_state_dict(state["optimizer"])
    resumed["sampler"].load_state_dict(state["sampler"])
    exec("for epoch in range" + body, resumed)
    assert resumed["sampler"].step == straight["sampler"].step
    for a, b in zip(straight["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(a, b), name


def _ddp_worker(rank: int, world: int, port: int, code: str, folder: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (1024,), generator=generator)
    images = torch.randn(1024, 1, 8, 8, generator=generator)
    space = {"train_set": TensorDataset(images, labels), "model": model,
             "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "epochs": 2}
    exec(code, space)
    torch.save({"parameters": [p.detach() for p in space["model"].module.parameters()],
                "sampler": space["sampler"].state_dict()}, f"{folder}/rank{rank}.pt")


def ddp_variants() -> dict[str, str]:
    """The README's DDP example, and its pool variant (the pool lines scoring through
    model.module, with the exact BiasedLoss: every step a pool)."""
    code = readme_block("<!-- ddp-example -->")
    constructor = "fastis.samplers.ImportanceSampler(len(train_set), batch_size=256, seed=0)"
    assert constructor in code
    pooled = with_pool_lines(code, "model.module(").replace(
        constructor, "fastis.samplers.BiasedLoss(len(train_set), batch_size=256, seed=0)")
    return {"ImportanceSampler": code, "BiasedLoss": pooled}


@pytest.mark.parametrize("kind", ["ImportanceSampler", "BiasedLoss"])
def test_readme_ddp_example_runs_on_two_processes(kind, tmp_path):
    run_ranks(_ddp_worker, 2, free_port(), ddp_variants()[kind], str(tmp_path))
    # DDP kept the replicas equal, and both ranks hold the same global sampler state.
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first["parameters"], second["parameters"]))
    assert first["sampler"]["kind"] == kind and first["sampler"]["acked"] == 2 * 4 - 1
    assert second["sampler"]["acked"] == first["sampler"]["acked"]


def test_readme_lightning_example_trains_and_updates_the_sampler(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)  # Lightning writes its logs and checkpoints here
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (512,), generator=generator)
    images = torch.randn(512, 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / 5
    namespace = {"train_set": TensorDataset(images, labels), "epochs": 2,
                 "model": nn.Sequential(nn.Flatten(), nn.Linear(64, 10))}
    exec(readme_block("<!-- lightning-example -->"), namespace)
    assert namespace["sampler"].step == 2 * 4  # every batch of both epochs reported back
    assert namespace["sampler"].stats()["scored"] > 0  # scores reached the sampler


def test_readme_transformers_example_trains_checkpoints_and_resumes(tmp_path):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (96,), generator=generator)
    tokens = torch.randint(3, 40, (96, 8), generator=generator)
    tokens[:, 0] = labels

    def model():
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=16, num_labels=3))

    namespace = {"train_set": [{"input_ids": t, "labels": int(y)} for t, y in zip(tokens, labels)],
                 "model": model(), "output_dir": str(tmp_path), "max_steps": 4,
                 "save_steps": 3}
    code = readme_block("<!-- transformers-example -->")
    exec(code, namespace)
    assert namespace["sampler"].step == 4
    resumed = {**namespace, "model": model(), "max_steps": 5}
    exec(code.replace("trainer.train()", "trainer.train(resume_from_checkpoint=True)"), resumed)
    assert resumed["sampler"].step == 5  # the last checkpoint's stream, to step 5
