"""The README's training loop runs as written, for every sampler in its table, and resumes.

The loop is taken from README.md (the code block after `<!-- sampler-loop -->`); each
method's variant is made by the line replacements the README's table states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from process_helpers import free_port, run_ranks
from torch import nn
from torch.utils.data import TensorDataset

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_loop() -> str:
    block = README.split("<!-- sampler-loop -->", 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def variants() -> dict[str, str]:
    """Method name -> the loop with that method's lines replaced, as the README says."""
    loop = readme_loop()
    section = README.split("What changes for each method", 1)[1].split("The protocol", 1)[0]
    uniform_line = next(line for line in loop.splitlines() if line.startswith("sampler = "))
    pool_lines = re.search(r"```python\n(.*?)```", section, re.S).group(1).rstrip("\n")
    weight_line = next(line for line in loop.splitlines() if line.strip() == "w = batch.weight")
    out = {"Uniform": loop}
    for row in section.splitlines():
        name = re.match(r"\| `(\w+)`", row)
        if not name:
            continue
        constructor = re.search(r"`(sampler = [^`]+)`", row)
        if constructor:  # a one-line change: the constructor
            out[name.group(1)] = loop.replace(uniform_line, constructor.group(1))
        else:  # a pool method: the constructor and the weight line
            example = re.search(r"e\.g\. `([^`]+)`", row).group(1)
            pooled = loop.replace(weight_line, pool_lines)
            out["UpperBound"] = pooled.replace(uniform_line, f"sampler = {example}")
            out["BiasedLoss exact"] = pooled.replace(
                uniform_line, "sampler = fastis.samplers.BiasedLoss(len(train_set), 128, seed=0)")
    return out


VARIANTS = variants()


def run(code: str, epochs: int, checkpoint_path: Path, resume: bool = False) -> dict:
    """Runs the README loop on a small synthetic data set; returns its namespace."""
    generator = torch.Generator().manual_seed(0)
    n = 300
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = torch.randn(n, 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / 5
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    namespace = {"train_set": TensorDataset(images, labels), "train_labels": labels,
                 "model": model, "optimizer": optimizer, "epochs": epochs,
                 "checkpoint_path": checkpoint_path}
    if resume:
        # The README's resume: build the same objects, load the three states, run the loop.
        setup, body = code.split("for epoch in range", 1)
        exec(setup, namespace)
        state = torch.load(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        namespace["sampler"].load_state_dict(state["sampler"])
        code = "for epoch in range" + body
    exec(code, namespace)
    return namespace


def test_the_table_covers_every_method():
    assert set(VARIANTS) == {"Uniform", "SoftRandom", "ImportanceSampler", "RAS",
                             "HighLossBatches", "BiasedLoss", "UpperBound", "BiasedLoss exact"}
    for name, code in VARIANTS.items():
        changed = set(code.splitlines()) - set(VARIANTS["Uniform"].splitlines())
        assert len(changed) <= 10, name


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_readme_loop_trains_and_resumes_exactly(name, tmp_path):
    code = VARIANTS[name]
    straight = run(code, 3, tmp_path / "straight.pt")
    assert straight["sampler"].step > 0
    run(code, 1, tmp_path / "ckpt.pt")
    resumed = run(code, 3, tmp_path / "ckpt.pt", resume=True)
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
    namespace = {"train_set": TensorDataset(images, labels), "model": model,
                 "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "epochs": 2,
                 "checkpoint_path": f"{folder}/ddp.pt"}
    exec(code, namespace)
    torch.save([p.detach() for p in namespace["model"].module.parameters()],
               f"{folder}/rank{rank}.pt")


def ddp_variants() -> dict[str, str]:
    """The README's DDP example, and its pool variant (the README's DDP pool lines instead
    of `w = batch.weight`, with the exact BiasedLoss: every step a pool)."""
    code = re.search(r"```python\n(.*?)```", README.split("<!-- ddp-example -->", 1)[1],
                     re.S).group(1)
    pool_lines = re.search(r"```python\n(.*?)```", README.split("<!-- ddp-pool-lines -->", 1)[1],
                           re.S).group(1).rstrip("\n")
    constructor = ("fastis.samplers.ImportanceSampler(len(train_set), batch_size=256, "
                   "floor=0.1, seed=0)")
    assert constructor in code and "        w = batch.weight\n" in code
    pooled = code.replace("        w = batch.weight", pool_lines).replace(
        constructor, "fastis.samplers.BiasedLoss(len(train_set), batch_size=256, seed=0)")
    return {"ImportanceSampler": code, "BiasedLoss": pooled}


@pytest.mark.parametrize("kind", ["ImportanceSampler", "BiasedLoss"])
def test_readme_ddp_example_runs_on_two_processes(kind, tmp_path):
    run_ranks(_ddp_worker, 2, free_port(), ddp_variants()[kind], str(tmp_path))
    # DDP kept the replicas equal, and rank 0 saved the global sampler state.
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    state = torch.load(tmp_path / "ddp.pt")["sampler"]
    assert state["kind"] == kind and state["acked"] == 2 * 4 - 1


def readme_block(marker: str) -> str:
    return re.search(r"```python\n(.*?)```", README.split(marker, 1)[1], re.S).group(1)


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
    assert namespace["sampler"].stats()["max_weight"] != 1.0  # scores reached the sampler


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
