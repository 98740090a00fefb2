"""Loss predictors of KF17's approximate variant (fastis.samplers.loss_predictors).

The LSTM is checked on a synthetic stream whose next loss is predictable from the class and
the example's own past losses; the per-class Gaussian against a plain sequential EMA; the
bookkeeping (history window, duplicates, clipping, state round trip, bad input) exactly.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fastis.samplers.loss_predictors import MIN_PREDICTION, LSTMLossPredictor, PerClassGaussian


class DecayingLosses:
    """Synthetic losses: example i of class c has loss level_c + offset_i + amp_i * r_i^t at
    its t-th observation. The class sets the level; the per-example offset and decay can
    only be read from the example's own history."""

    def __init__(self, num_examples: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 4, num_examples)
        self.level = np.array([0.3, 0.8, 1.3, 1.8])[self.labels]
        self.offset = rng.uniform(-0.3, 0.3, num_examples)
        self.amp = rng.uniform(0.5, 1.5, num_examples)
        self.rate = rng.uniform(0.5, 0.9, num_examples)
        self.times = np.zeros(num_examples, np.int64)

    def next_loss(self, index: np.ndarray) -> np.ndarray:
        """The loss each example will show when next observed (not yet observed)."""
        return (self.level[index] + self.offset[index]
                + self.amp[index] * self.rate[index] ** self.times[index])

    def observe(self, index: np.ndarray) -> np.ndarray:
        losses = self.next_loss(index)
        self.times[index] += 1
        return losses


def run_stream(predictor, data: DecayingLosses, steps: int, batch: int, seed: int,
               every: int = 50) -> list[tuple[float, float, float]]:
    """Trains `predictor` on `steps` batches of distinct examples; every `every` steps (and
    at the start and end) records (its MSE, the global-mean MSE, the per-class-mean MSE) on
    the not-yet-observed next losses of a fixed evaluation half of the examples."""
    rng = np.random.default_rng(seed)
    n = len(data.labels)
    evaluation = np.arange(0, n, 2)
    observed: list[np.ndarray] = []
    records = []
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            target = data.next_loss(evaluation)
            mse = float(np.mean((predictor.predict(evaluation) - target) ** 2))
            global_mean = np.concatenate(observed).mean() if observed else 1.0
            baseline = float(np.mean((global_mean - target) ** 2))
            # An oracle for any predictor that ignores the history: the true mean of each
            # class's targets.
            labels = data.labels[evaluation]
            class_mean = np.array([target[labels == c].mean() for c in range(4)])[labels]
            oracle = float(np.mean((class_mean - target) ** 2))
            records.append((mse, baseline, oracle))
        if step < steps:
            index = rng.choice(n, batch, replace=False)
            losses = data.observe(index)
            predictor.observe(index, losses)
            observed.append(losses)
    return records


def states_equal(a, b) -> bool:
    """Exact equality of two nested state_dicts (tensors, arrays, scalars)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(states_equal(a[k], b[k])
                                                                 for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype \
            and bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def round_trip(state):
    """`state` through torch.save / torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------- LSTM: learning
def test_lstm_learns_to_predict_next_loss():
    data = DecayingLosses(512, seed=1)
    predictor = LSTMLossPredictor(512, data.labels, seed=0)
    records = run_stream(predictor, data, steps=300, batch=64, seed=2)
    initial, final = records[0][0], records[-1][0]
    _, baseline, oracle = records[-1]
    assert final < 0.1 * initial, records
    assert final < 0.25 * baseline, records
    # Below what the class alone can give: the model reads the examples' histories.
    assert final < 0.75 * oracle, records
    mses = [r[0] for r in records]
    assert mses[-1] < mses[len(mses) // 2] < mses[0], records


def test_lstm_learns_in_log_space():
    data = DecayingLosses(512, seed=3)
    predictor = LSTMLossPredictor(512, data.labels, log_space=True, seed=0)
    records = run_stream(predictor, data, steps=200, batch=64, seed=4)
    initial, final = records[0][0], records[-1][0]
    assert final < 0.2 * initial, records
    assert final < 0.25 * records[-1][1], records


def test_lstm_unobserved_examples_are_predicted_from_their_class():
    labels = np.array([0, 1, 0, 1, 0, 1])
    predictor = LSTMLossPredictor(6, labels, hidden=8, embedding=4, seed=5)
    predictor.observe(np.array([4, 5]), np.array([3.0, 0.5]))
    prediction = predictor.predict(np.arange(6))
    assert prediction[0] == prediction[2] and prediction[1] == prediction[3]
    assert prediction[0] != prediction[1]  # the class embedding matters
    assert prediction[4] != prediction[0]  # so does the history (now [1.0, 3.0])


# ---------------------------------------------------------------------- LSTM: bookkeeping
def test_lstm_padding_is_ignored():
    labels = np.arange(12) % 3
    rng = np.random.default_rng(13)
    # Same seed, different window sizes: the weights do not depend on H, so while no window
    # is full, the padding is all that differs, and it must not matter (in training either).
    short = LSTMLossPredictor(12, labels, history=4, hidden=8, embedding=4, seed=6)
    long = LSTMLossPredictor(12, labels, history=9, hidden=8, embedding=4, seed=6)
    for size in (3, 5, 2):  # rows end up with 1 to 4 valid slots
        index = rng.choice(12, size, replace=False)
        losses = rng.uniform(0.1, 3.0, size)
        short.observe(index, losses)
        long.observe(index, losses)
    assert len(set(short.counts.tolist())) >= 3
    pool = np.arange(12)
    np.testing.assert_allclose(long.predict(pool), short.predict(pool), rtol=1e-5)
    # An example's prediction does not depend on the histories of the others in the pool.
    alone = np.array([short.predict(np.array([i]))[0] for i in pool])
    np.testing.assert_allclose(alone, short.predict(pool), rtol=1e-5)


def test_lstm_history_fills_then_rolls():
    predictor = LSTMLossPredictor(4, [0, 0, 1, 1], history=3, hidden=4, embedding=2)
    np.testing.assert_array_equal(predictor.history, np.array([[1, 0, 0]] * 4, np.float32))
    np.testing.assert_array_equal(predictor.counts, [1, 1, 1, 1])
    expected = [[1, 2, 0], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]]
    for loss, row in zip([2.0, 3.0, 4.0, 5.0, 6.0], expected):
        predictor.observe(np.array([1]), np.array([loss]))
        np.testing.assert_array_equal(predictor.history[1], np.array(row, np.float32))
    np.testing.assert_array_equal(predictor.counts, [1, 3, 1, 1])
    np.testing.assert_array_equal(predictor.history[[0, 2, 3]],
                                  np.array([[1, 0, 0]] * 3, np.float32))
    # A mixed batch: one row full, one partly filled, one fresh; a loss of exactly 0 counts.
    predictor.observe(np.array([3, 1, 0]), np.array([0.0, 7.0, 8.5]))
    np.testing.assert_array_equal(predictor.history, np.array(
        [[1, 8.5, 0], [5, 6, 7], [1, 0, 0], [1, 0, 0]], np.float32))
    np.testing.assert_array_equal(predictor.counts, [2, 3, 1, 2])
    with pytest.raises(ValueError):
        predictor.history[0, 0] = 5.0  # the views are read-only


def test_lstm_duplicates_last_write_wins():
    predictor = LSTMLossPredictor(5, [0, 1, 0, 1, 0], history=4, hidden=4, embedding=2)
    predictor.observe(np.array([2, 4, 2, 2, 4]), np.array([1.5, 2.5, 3.5, 4.5, 5.5]))
    np.testing.assert_array_equal(predictor.history[2], np.array([1, 4.5, 0, 0], np.float32))
    np.testing.assert_array_equal(predictor.history[4], np.array([1, 5.5, 0, 0], np.float32))
    np.testing.assert_array_equal(predictor.counts, [1, 1, 2, 1, 2])
    # The training step saw every row: same as training on the rows listed separately.
    a = LSTMLossPredictor(5, [0, 1, 0, 1, 0], history=4, hidden=4, embedding=2, seed=9)
    b = LSTMLossPredictor(5, [0, 1, 0, 1, 0], history=4, hidden=4, embedding=2, seed=9)
    a.observe(np.array([2, 2]), np.array([1.0, 3.0]))
    b.observe(np.array([2, 0]), np.array([1.0, 3.0]))  # example 0 has the same history
    np.testing.assert_array_equal(a.predict(np.array([1, 3])), b.predict(np.array([1, 3])))


def test_lstm_empty_calls():
    predictor = LSTMLossPredictor(3, [0, 1, 2], hidden=4, embedding=2)
    before = predictor.state_dict()
    assert predictor.predict(np.empty(0, np.int64)).shape == (0,)
    predictor.observe(np.empty(0, np.int64), np.empty(0))
    assert states_equal(predictor.state_dict(), before)


@pytest.mark.parametrize("log_space", [False, True])
def test_lstm_predictions_are_clipped(log_space):
    predictor = LSTMLossPredictor(8, np.arange(8) % 2, hidden=4, embedding=2,
                                  log_space=log_space)
    state = predictor.state_dict()
    state["state"]["model"]["head.bias"].fill_(-200.0)  # exp(-200) underflows float32 to 0
    predictor.load_state_dict(state)
    prediction = predictor.predict(np.arange(8))
    assert prediction.dtype == np.float64
    np.testing.assert_array_equal(prediction, np.full(8, MIN_PREDICTION))


def test_lstm_seed_and_global_generator():
    labels = np.arange(16) % 3
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = LSTMLossPredictor(16, labels, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is untouched
    b = LSTMLossPredictor(16, labels, seed=7)
    c = LSTMLossPredictor(16, labels, seed=8)
    index = np.arange(16)
    np.testing.assert_array_equal(a.predict(index), b.predict(index))
    assert not np.array_equal(a.predict(index), c.predict(index))


def test_lstm_state_round_trip_and_continuation():
    data = DecayingLosses(64, seed=11)
    rng = np.random.default_rng(12)
    options = {"history": 5, "hidden": 8, "embedding": 4, "seed": 3}
    a = LSTMLossPredictor(64, data.labels, **options)
    for _ in range(12):
        index = rng.integers(0, 64, 16)  # with repeats
        a.observe(index, data.observe(index))
    state = round_trip(a.state_dict())
    expected = a.predict(np.arange(64))

    b = LSTMLossPredictor(64, data.labels, **options)
    b.observe(np.arange(8), np.full(8, 9.0))  # b's own state must be replaced entirely
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.predict(np.arange(64)), expected)
    np.testing.assert_array_equal(b.history, a.history)
    assert states_equal(b.state_dict(), a.state_dict())

    for _ in range(6):  # identical continuation: same model, optimizer moments, histories
        index = rng.integers(0, 64, 16)
        losses = data.observe(index)
        a.observe(index, losses)
        b.observe(index, losses)
        np.testing.assert_array_equal(b.predict(np.arange(64)), a.predict(np.arange(64)))
    assert states_equal(b.state_dict(), a.state_dict())

    # The state_dict is a snapshot: a's later training does not leak into it.
    c = LSTMLossPredictor(64, data.labels, **options)
    c.load_state_dict(state)
    np.testing.assert_array_equal(c.predict(np.arange(64)), expected)
    snapshot = a.state_dict()
    saved = round_trip(snapshot)
    a.observe(np.arange(16), np.ones(16))
    assert states_equal(snapshot, saved)
    # ... nor does training the restored copy write into the state it was loaded from.
    saved = round_trip(state)
    c.observe(np.arange(16), np.ones(16))
    assert states_equal(state, saved)


def lstm_corruptions():
    """Edits of a valid LSTMLossPredictor state_dict, each of which must be refused. An edit
    returns the state to load, or None after changing it in place."""
    return {
        "not a state": lambda s: {"format": "something else"},
        "version": lambda s: s.update(version=99),
        "kind": lambda s: s.update(kind="PerClassGaussian"),
        "config": lambda s: s["config"].update(hidden=9),
        "labels": lambda s: s["labels"].__setitem__(0, 1),
        "labels shape": lambda s: s.update(labels=s["labels"][:-1]),
        "history shape": lambda s: s["state"].update(history=s["state"]["history"][:, :2]),
        "counts range": lambda s: s["state"]["counts"].__setitem__(0, 7),
        "counts dtype": lambda s: s["state"].update(counts=s["state"]["counts"].float()),
        "model key": lambda s: s["state"]["model"].pop("head.bias") and None,
        "model shape": lambda s: s["state"]["model"].update({"embed.weight": torch.zeros(4, 4)}),
        "optimizer moment": lambda s: s["state"]["optimizer"]["state"][0].update(
            exp_avg=torch.zeros(2)),
        "optimizer groups": lambda s: s["state"]["optimizer"]["param_groups"][0].update(
            params=[0, 1]),
        "no state": lambda s: s.pop("state") and None,
    }


@pytest.mark.parametrize("name", list(lstm_corruptions()))
def test_lstm_load_rejects_bad_state_and_changes_nothing(name):
    labels = np.array([0, 1, 2, 0, 1, 2])
    source = LSTMLossPredictor(6, labels, history=5, hidden=8, embedding=4, seed=1)
    source.observe(np.array([0, 1, 2]), np.array([0.5, 1.5, 2.5]))
    state = source.state_dict()
    state = lstm_corruptions()[name](state) or state

    target = LSTMLossPredictor(6, labels, history=5, hidden=8, embedding=4, seed=1)
    target.observe(np.array([3, 4]), np.array([4.0, 0.25]))
    before = target.state_dict()
    with pytest.raises(ValueError):
        target.load_state_dict(state)
    assert states_equal(target.state_dict(), before)


# ---------------------------------------------------------------------- PerClassGaussian
def sequential_ema(codes, losses, num_classes, momentum):
    """Reference: one EMA update per loss in order, bias-corrected; NaN if never observed."""
    m1, m2, weight = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for c, x in zip(codes, losses):
        m1[c] = momentum * m1[c] + (1 - momentum) * x
        m2[c] = momentum * m2[c] + (1 - momentum) * x * x
        weight[c] = momentum * weight[c] + (1 - momentum)
    with np.errstate(invalid="ignore"):
        mean = m1 / weight
        std = np.sqrt(np.maximum(m2 / weight - mean**2, 0))
    return mean, std


def test_per_class_gaussian_recovers_class_statistics():
    rng = np.random.default_rng(21)
    mu, sd = np.array([1.0, 2.5, 5.0]), np.array([0.2, 0.5, 1.0])
    labels = rng.integers(0, 3, 3000)
    predictor = PerClassGaussian(3000, labels, momentum=0.998)
    for _ in range(150):
        index = rng.integers(0, 3000, 128)
        c = labels[index]
        predictor.observe(index, np.maximum(rng.normal(mu[c], sd[c]), 0.0))
    np.testing.assert_allclose(predictor.mean, mu, atol=0.0, rtol=0.03)
    np.testing.assert_allclose(predictor.std, sd, rtol=0.1)
    index = np.arange(3000)
    np.testing.assert_allclose(predictor.predict(index),
                               (predictor.mean + predictor.std)[labels], rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_per_class_gaussian_equals_sequential_updates(momentum):
    rng = np.random.default_rng(22)
    labels = rng.integers(0, 5, 40) * 10 - 7  # arbitrary ids; class 4 (id 33) is never seen
    predictor = PerClassGaussian(40, labels, momentum=momentum)
    codes_seen, losses_seen = [], []
    for size in (1, 7, 30, 0, 64):
        index = rng.integers(0, 40, size)  # duplicates included: each counts
        index = index[labels[index] != 33]
        losses = rng.gamma(2.0, 1.0, len(index))
        predictor.observe(index, losses)
        codes_seen.extend(predictor.labels[index])
        losses_seen.extend(losses)
    mean, std = sequential_ema(codes_seen, losses_seen, 5, momentum)
    np.testing.assert_allclose(predictor.mean, mean, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(predictor.std, std, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isnan(predictor.mean[4])
    scores = predictor.class_scores()
    assert scores[4] == pytest.approx((mean[:4] + std[:4]).mean(), rel=1e-12)
    assert predictor.predict(np.flatnonzero(labels == 33)) == pytest.approx(scores[4])


def test_per_class_gaussian_before_any_observation_and_clipping():
    predictor = PerClassGaussian(4, [3, 3, 8, 8])
    np.testing.assert_array_equal(predictor.predict(np.arange(4)), np.ones(4))
    predictor.observe(np.array([0, 1]), np.zeros(2))  # mu = sigma = 0: clipped
    prediction = predictor.predict(np.arange(4))
    assert prediction.dtype == np.float64
    np.testing.assert_array_equal(prediction, np.full(4, MIN_PREDICTION))


def test_per_class_gaussian_state_round_trip():
    rng = np.random.default_rng(23)
    labels = rng.integers(0, 3, 50)
    a = PerClassGaussian(50, labels, momentum=0.8)
    a.observe(rng.integers(0, 50, 20), rng.random(20))
    state = round_trip(a.state_dict())
    b = PerClassGaussian(50, labels, momentum=0.8)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.predict(np.arange(50)), a.predict(np.arange(50)))
    index, losses = rng.integers(0, 50, 20), rng.random(20)
    a.observe(index, losses)
    b.observe(index, losses)
    np.testing.assert_array_equal(b.predict(np.arange(50)), a.predict(np.arange(50)))

    before = b.state_dict()
    for bad in ({**state, "config": {**state["config"], "momentum": 0.9}},
                {**state, "state": {**state["state"], "m1": torch.zeros(4, dtype=torch.float64)}},
                {**state, "state": {**state["state"], "weight": torch.full((3,), 2.0,
                                                                              dtype=torch.float64)}},
                {**state, "kind": "LSTMLossPredictor"}):
        with pytest.raises(ValueError):
            b.load_state_dict(bad)
        assert states_equal(b.state_dict(), before)
    with pytest.raises(ValueError):  # same configuration, another labelling
        PerClassGaussian(50, np.roll(labels, 1), momentum=0.8).load_state_dict(state)


# ---------------------------------------------------------------------- labels and options
@pytest.mark.parametrize("cls", [PerClassGaussian, LSTMLossPredictor])
def test_labels_are_mapped_to_codes(cls):
    predictor = cls(5, torch.tensor([10, -3, 10, 7, -3]))
    np.testing.assert_array_equal(predictor.classes, [-3, 7, 10])
    np.testing.assert_array_equal(predictor.labels, [2, 0, 2, 1, 0])
    assert predictor.num_classes == 3 and predictor.labels.dtype == np.int8
    many = cls(300, np.arange(300) * 7)  # 300 classes need int16 codes
    assert many.labels.dtype == np.int16 and many.labels[-1] == 299


@pytest.mark.parametrize("cls", [PerClassGaussian, LSTMLossPredictor])
@pytest.mark.parametrize("labels, error", [
    (np.array([0.0, 1.0, 2.0]), TypeError),
    (np.array([True, False, True]), TypeError),
    (np.zeros((3, 1), np.int64), ValueError),
    (np.zeros(4, np.int64), ValueError),
    (np.zeros(2, np.int64), ValueError),
    ("abc", TypeError),
], ids=["float", "bool", "2-D", "too long", "too short", "string"])
def test_bad_labels_are_rejected(cls, labels, error):
    with pytest.raises(error):
        cls(3, labels)


@pytest.mark.parametrize("make", [
    lambda: PerClassGaussian(3, [0, 1, 2], momentum=1.0),
    lambda: PerClassGaussian(3, [0, 1, 2], momentum=-0.1),
    lambda: PerClassGaussian(0, []),
    lambda: LSTMLossPredictor(3, [0, 1, 2], history=0),
    lambda: LSTMLossPredictor(3, [0, 1, 2], hidden=0),
    lambda: LSTMLossPredictor(3, [0, 1, 2], lr=-1e-3),
    lambda: LSTMLossPredictor(3, [0, 1, 2], lr=float("nan")),
    lambda: LSTMLossPredictor(3, [0, 1, 2], seed=-1),
], ids=["momentum 1", "momentum < 0", "no examples", "history 0", "hidden 0", "lr < 0",
        "lr nan", "seed < 0"])
def test_bad_options_are_rejected(make):
    with pytest.raises((ValueError, TypeError)):
        make()
