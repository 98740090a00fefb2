"""fastis.integrations.transformers with the real transformers Trainer on CPU: a tiny BERT
classifier trains with a method, checkpoints, and a fresh Trainer resumed from a mid-run
(and mid-epoch) checkpoint ends with the same parameters and sampler state as the
uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from process_helpers import free_port, run_ranks  # noqa: E402
from sampler_helpers import same_state  # noqa: E402

import fastis  # noqa: E402
from fastis.integrations.transformers import (  # noqa: E402
    SAMPLER_FILE,
    ImportanceSamplingTrainer,
    causal_lm_loss,
    classification_loss,
)

N, BATCH, STEPS, CUT = 64, 8, 12, 5  # 8 steps per epoch: the cut is inside epoch 0

METHODS = {
    "ImportanceSampler": lambda: fastis.samplers.ImportanceSampler(N, BATCH, floor=0.1, seed=0),
    # The paper's switch (guard=False) at tau_th just above 1: most steps are pools.
    "UpperBound": lambda: fastis.samplers.UpperBound(N, BATCH, tau_th=1.01, momentum=0.5,
                                                     guard=False, seed=0),
}


def dataset() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (N,), generator=generator)
    tokens = torch.randint(3, 40, (N, 8), generator=generator)
    tokens[:, 0] = labels  # the first token gives the class away: learnable
    return [{"input_ids": t, "labels": int(y)} for t, y in zip(tokens, labels)]


def tiny_bert(dropout: float = 0.0):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return transformers.BertForSequenceClassification(config)


def text_dataset() -> list[dict]:
    """Token sequences for a causal LM; the last tokens of every third one are not scored."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 40, (N, 8), generator=generator)
    labels = tokens.clone()
    labels[::3, 5:] = -100
    return [{"input_ids": t, "labels": y} for t, y in zip(tokens, labels)]


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


TASKS = {"classification": (tiny_bert, dataset, classification_loss),
         # BERT's default dropout: a resumed run must restore the RNG exactly where the
         # interrupted one left it.
         "classification-dropout": (lambda: tiny_bert(0.1), dataset, classification_loss),
         "causal-lm": (tiny_gpt2, text_dataset, causal_lm_loss)}


def train(method: str, output_dir, accumulation: int, resume=None, task="classification"):
    model, data, loss_fn = TASKS[task]
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=STEPS // accumulation, save_strategy="steps",
        save_steps=CUT // accumulation + (CUT % accumulation > 0), learning_rate=0.05,
        gradient_accumulation_steps=accumulation, report_to=[], use_cpu=True, seed=0,
        logging_steps=1000, disable_tqdm=True, dataloader_num_workers=0)
    trainer = ImportanceSamplingTrainer(model=model(), args=args, train_dataset=data(),
                                        sampler=METHODS[method](), loss_fn=loss_fn)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("method, accumulation, task", [
    ("ImportanceSampler", 1, "classification"), ("ImportanceSampler", 2, "classification"),
    ("UpperBound", 1, "classification"), ("ImportanceSampler", 1, "causal-lm"),
    ("ImportanceSampler", 1, "classification-dropout"),
    ("ImportanceSampler", 2, "classification-dropout")])
def test_checkpoint_resume_ends_where_the_uninterrupted_run_ends(method, accumulation, task,
                                                                 tmp_path):
    straight = train(method, tmp_path / "straight", accumulation, task=task)
    assert straight.sampler.step == STEPS  # every micro-batch was reported back
    checkpoint = sorted((tmp_path / "straight").glob("checkpoint-*"),
                        key=lambda p: int(p.name.split("-")[1]))[0]
    saved = torch.load(checkpoint / SAMPLER_FILE)
    steps_saved = int(checkpoint.name.split("-")[1]) * accumulation
    assert saved["acked"] == steps_saved - 1  # the sampler advanced with the Trainer
    resumed = train(method, tmp_path / "resumed", accumulation, resume=str(checkpoint),
                    task=task)
    assert resumed.sampler.step == STEPS
    want, got = straight.sampler.state_dict(), resumed.sampler.state_dict()
    for state in (want, got):  # UpperBound records measured times in every mode
        for timed in ("forward_cost", "step_cost"):
            state["method"].pop(timed, None)
    assert same_state(got, want)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    if method == "UpperBound":
        assert straight.sampler.stats()["importance_steps"] >= 4  # pools were resampled


def test_resume_from_a_checkpoint_without_sampler_state_is_refused(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[],
                                          use_cpu=True)
    trainer = ImportanceSamplingTrainer(model=tiny_bert(), args=args, train_dataset=dataset(),
                                        sampler=METHODS["ImportanceSampler"]())
    with pytest.raises(ValueError, match="no fastis sampler state"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    with pytest.raises(TypeError, match="fastis sampler"):
        ImportanceSamplingTrainer(model=tiny_bert(), args=args, train_dataset=dataset(),
                                  sampler=torch.utils.data.BatchSampler(range(4), 2, False))


def test_one_accumulated_step_applies_the_mean_gradient_of_its_micro_batches(tmp_path):
    """With SGD and no clipping, one optimizer step over 2 accumulated micro-batches moves
    the parameters by -lr * the gradient of mean over both micro-batches of mean(w * CE)."""
    lr = 0.05
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, gradient_accumulation_steps=2, optim="sgd",
        learning_rate=lr, max_grad_norm=0.0, lr_scheduler_type="constant", report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True)
    sampler = fastis.samplers.ImportanceSampler(N, BATCH, floor=0.5, seed=3)
    trainer = ImportanceSamplingTrainer(model=tiny_bert(), args=args, train_dataset=dataset(),
                                        sampler=sampler)
    trainer.train()
    # The same two micro-batches, by hand: the Trainer fetches all micro-batches of a step
    # before computing any loss, so both are drawn before the first update.
    model, examples = tiny_bert(), dataset()
    twin = fastis.samplers.ImportanceSampler(N, BATCH, floor=0.5, seed=3)
    stream, total = iter(twin), 0.0
    for draw in [next(stream), next(stream)]:
        ids = torch.stack([examples[i]["input_ids"] for i in draw.index])
        labels = torch.tensor([examples[i]["labels"] for i in draw.index])
        logits = model(input_ids=ids).logits
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        total = total + (torch.from_numpy(draw.weight) * losses).mean() / 2
        twin.update(draw, losses.detach())
    total.backward()
    for (name, trained), start in zip(trainer.model.named_parameters(), model.parameters()):
        expected = start.detach() - lr * (start.grad if start.grad is not None else 0)
        torch.testing.assert_close(trained.detach(), expected, rtol=1e-5, atol=1e-7,
                                   msg=name)


def test_causal_lm_loss_matches_the_models_own_loss_per_sequence():
    """Against transformers' own loss of each sequence alone (its shift and -100 masking),
    and the gradient-norm score against a float64 softmax reference."""
    model, data = tiny_gpt2(), text_dataset()[:7]
    ids = torch.stack([d["input_ids"] for d in data])
    labels = torch.stack([d["labels"] for d in data])
    weight = torch.linspace(0.5, 2.0, len(data))
    outputs = model(input_ids=ids)
    losses, scores = causal_lm_loss(outputs, labels, weight)
    own = torch.stack([model(input_ids=ids[i:i + 1], labels=labels[i:i + 1]).loss
                       for i in range(len(data))])
    torch.testing.assert_close(scores.loss, own.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses, weight * own, rtol=1e-5, atol=1e-6)
    logits = outputs.logits.detach().double()[:, :-1]
    targets = labels[:, 1:]
    counted = targets != -100
    residual = logits.softmax(-1)
    residual.scatter_add_(-1, targets.clamp(min=0)[..., None],
                          -torch.ones_like(residual[..., :1]))
    squares = (residual.square().sum(-1) * counted).sum(1)
    torch.testing.assert_close(scores.grad_norm.double(), squares.sqrt(), rtol=1e-5, atol=1e-6)
    losses.sum().backward()  # differentiable
    with pytest.raises(ValueError, match="logits \\[b, T, V\\]"):
        causal_lm_loss(outputs, labels[:, :3], weight)


def _ddp_worker(rank: int, world: int, port: int, out: str, method: str) -> None:
    import json
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world))
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=12, save_strategy="no", learning_rate=0.05, report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True, ddp_backend="gloo")
    sampler = fastis.distributed.Sharded(METHODS[method]())
    trainer = ImportanceSamplingTrainer(model=tiny_bert(), args=args, train_dataset=dataset(),
                                        sampler=sampler)
    batches, compute_loss = [], trainer.compute_loss

    def recording_compute_loss(model, inputs, **kwargs):
        batches.append(inputs["fastis_index"].tolist())
        return compute_loss(model, inputs, **kwargs)

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    state = sampler.state_dict()
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "first": batches[0], "step": sampler.step,
        "state": {k: v.tolist() if isinstance(v, torch.Tensor) else v
                  for k, v in state["method"].items() if k not in ("forward_cost", "step_cost")
                  and not isinstance(v, dict)},
        "tree": state["method"]["tree"]["weights"].tolist() if "tree" in state["method"]
        else None,
        "parameters": [p.detach().flatten().tolist() for p in trainer.model.parameters()]}))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_train_on_shards_of_one_global_stream(method, tmp_path):
    """Under DDP (2 gloo processes, as torchrun would start them) with a Sharded sampler:
    each rank's first batch is its shard (positions r::2) of the global first batch, and
    both ranks end with the same parameters and the same sampler state. UpperBound's pools
    are scored and resampled across the ranks (a BERT has buffers: DDP's own forward would
    broadcast them, so the pool is scored through the unwrapped model)."""
    import json

    run_ranks(_ddp_worker, 2, free_port(), str(tmp_path), method)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    whole = next(iter(METHODS[method]())).index.tolist()
    assert ranks[0]["first"] == whole[0::2] and ranks[1]["first"] == whole[1::2]
    assert ranks[0]["step"] == ranks[1]["step"] == 12
    assert ranks[0]["state"] == ranks[1]["state"] and ranks[0]["tree"] == ranks[1]["tree"]
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    if method == "UpperBound":
        assert ranks[0]["state"]["importance_steps"] >= 2  # pools happened


def test_the_trainers_batch_size_is_aligned_with_the_samplers(tmp_path):
    # The sampler's batch is trained on; a different per_device_train_batch_size would only
    # make the Trainer's counts (samples per second, epochs) wrong: it is aligned, loudly.
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[],
                                          use_cpu=True, per_device_train_batch_size=16)
    with pytest.warns(UserWarning, match="per_device_train_batch_size = 16"):
        trainer = ImportanceSamplingTrainer(model=tiny_bert(), args=args, train_dataset=dataset(),
                                            sampler=METHODS["ImportanceSampler"]())
    assert trainer.args.per_device_train_batch_size == BATCH
    pooled = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[],
                                            use_cpu=True, per_device_train_batch_size=BATCH)
    trainer = ImportanceSamplingTrainer(model=tiny_bert(), args=pooled,
                                        train_dataset=dataset(),
                                        sampler=METHODS["UpperBound"]())  # picks, not pools
    assert trainer.args.per_device_train_batch_size == BATCH
