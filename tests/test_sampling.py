"""MMS selection: select picks the pool's lowest scores, cached keeps the gradient unbiased, both resume exactly."""

import copy
import itertools
import logging
import math
import os

import pytest
import torch
from conftest import NO_DROPOUT, make_trainer, synthetic_dataset, tiny_model

from hf_mmr import MMRTrainer, ResumeMismatchError, minimal_margin_scores, sampling
from hf_mmr.sampling import (
    INDEX_KEY,
    CachedMarginSampler,
    MarginCache,
    plan_epochs,
    pool_size_to_select,
    prune_epoch,
    pruned_length,
)


class RecordingTrainer(MMRTrainer):
    """Records the example indices of every pool and every trained batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pools, self.trained = [], []
        select = self.selection.select_from_pool if self.args.mms_selection == "select" else None
        if select is not None:
            self.selection.select_from_pool = lambda model, pool: (
                self.pools.append(pool[INDEX_KEY].tolist()),
                select(model, pool),
            )[1]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # uniform sampling has no index: record the token ids instead
            self.trained.append(inputs.get(INDEX_KEY, inputs["input_ids"]).tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def recording_trainer(tmp_path, mode, n=48, model=None, dataset=None, **kwargs):
    settings = {"per_device_train_batch_size": 4, "num_train_epochs": 3, "seed": 3, "mms_pool_factor": 4, **kwargs}
    dataset = dataset or synthetic_dataset(n=n, length=10)
    return make_trainer(tmp_path, model, dataset, RecordingTrainer, mms_selection=mode, **settings)


def brute_force_scores(model, dataset, indices):
    """MMS of each example on its own (no padding, no batching), in eval mode."""
    model = model.eval()
    scores = []
    with torch.no_grad():
        for i in indices:
            item = dataset[i]
            logits = model(input_ids=item["input_ids"][None], attention_mask=item["attention_mask"][None]).logits
            scores.append(minimal_margin_scores(logits, model.classifier.weight).item())
    return torch.tensor(scores)


@pytest.mark.parametrize("scoring_batch_size", [None, 3, 16])
def test_select_trains_on_the_pool_lowest_mms(tmp_path, scoring_batch_size):
    dataset = synthetic_dataset(n=48, length=10)
    # Variable lengths, so that length-sorted scoring chunks really trim padding.
    for i, item in enumerate(dataset):
        item["attention_mask"][10 - i % 5 :] = 0
    model = tiny_model("bert", num_labels=3, seed=1)
    initial = copy.deepcopy(model)
    trainer = recording_trainer(
        tmp_path,
        "select",
        model=model,
        dataset=dataset,
        max_steps=1,
        mmr_lambda=0.1,
        mms_scoring_batch_size=scoring_batch_size,  # None: chunks of one batch (4); 3: six ragged; 16: all
    )
    trainer.train()
    (pool,), (trained,) = trainer.pools, trainer.trained
    assert len(pool) == 16 and len(trained) == 4
    scores = brute_force_scores(initial, dataset, pool)
    expected = [pool[i] for i in torch.argsort(scores)[:4].tolist()]
    assert trained == expected
    logged = next(e for e in trainer.state.log_history if "loss" in e)
    assert logged["mms/selected_mean"] == pytest.approx(scores.sort().values[:4].mean().item(), rel=1e-4)
    assert logged["mms/pool_mean"] == pytest.approx(scores.mean().item(), rel=1e-4)
    assert 0 <= logged["mms/misclassified_selected"] <= 1


def test_select_epoch_is_one_pass_over_pools(tmp_path):
    trainer = recording_trainer(tmp_path, "select", num_train_epochs=2)
    trainer.train()
    assert trainer.state.global_step == 2 * 48 // 16
    for epoch in range(2):
        pools = trainer.pools[3 * epoch : 3 * (epoch + 1)]
        assert sorted(i for pool in pools for i in pool) == list(range(48))  # without replacement
    assert trainer.pools[0] != trainer.pools[3]  # a fresh permutation each epoch


def test_select_warmup_trains_uniformly(tmp_path):
    trainer = recording_trainer(tmp_path, "select", max_steps=2, mms_warmup_steps=1)
    trainer.train()
    assert trainer.trained[0] == trainer.pools[0][:4]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert "mms/selected_mean" not in logs[0] and "mms/selected_mean" in logs[1]


@pytest.mark.parametrize("mode", ["select", "cached"])
def test_same_seed_same_batches(tmp_path, mode):
    first = recording_trainer(tmp_path / "a", mode, max_steps=8)
    first.train()
    second = recording_trainer(tmp_path / "b", mode, max_steps=8)
    second.train()
    assert first.trained == second.trained


@pytest.mark.parametrize("mode", ["select", "cached", "none"])
def test_resume_mid_epoch_reproduces_batches_and_weights(tmp_path, mode):
    common = {
        "num_train_epochs": 3,
        "mmr_lambda": 0.1,
        "save_strategy": "steps",
        "save_steps": 5,
        "mms_anneal_epochs": 1,
        "mms_keep_quantile": 0.5,
        "mms_keep_fraction": 0.5,
    }
    full = recording_trainer(tmp_path / "full", mode, n=32, **common)
    full.train()
    resumed = recording_trainer(tmp_path / "full", mode, n=32, model=tiny_model("bert", num_labels=3, seed=9), **common)
    # Mid-epoch in every mode: select has 2 steps per epoch (32 / 16), none 8; cached has epochs of 8, 6
    # (pruned: 16 kept + 8 of the other 16) and 8 steps, and step 10 is inside the pruned one.
    step = 10 if mode == "cached" else 5
    resumed.train(resume_from_checkpoint=os.path.join(tmp_path, "full", f"checkpoint-{step}"))
    assert resumed.trained == full.trained[step:]
    if mode == "cached":
        assert full.selection.epochs.steps == [8, 6, 8]
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


class EpochLengths(RecordingTrainer):
    """Also records, at each epoch's start, the DataLoader's length and the learning rate of every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dataloader_lengths, self.learning_rates = [], []

    def _run_epoch(self, *args, train_dataloader, epoch, **kwargs):
        self.selection.epoch_sampler.set_epoch(epoch)
        self.dataloader_lengths.append(len(train_dataloader))
        return super()._run_epoch(*args, train_dataloader=train_dataloader, epoch=epoch, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.learning_rates.append(self.lr_scheduler.get_last_lr()[0])
        return super().training_step(model, inputs, num_items_in_batch)


def cached_run(tmp_path, **kwargs):
    settings = {
        "n": 40,
        "num_train_epochs": 3,
        "mms_keep_quantile": 0.25,
        "mms_keep_fraction": 0.2,
        "mms_anneal_epochs": 1,
        **kwargs,
    }
    dataset = synthetic_dataset(n=settings.pop("n"), length=10)
    trainer = make_trainer(
        tmp_path, None, dataset, EpochLengths, per_device_train_batch_size=4, seed=3, mms_selection="cached", **settings
    )
    trainer.train()
    return trainer


def test_cached_epochs_are_pruned_and_the_schedule_counts_them(tmp_path):
    """3 epochs of 40 examples, batch 4, accumulation 2: full (5 steps), pruned, full anneal (5 steps)."""
    trainer = cached_run(tmp_path, gradient_accumulation_steps=2, warmup_steps=0.2)
    kept = pruned_length(40, 0.25, 0.2, 1.0)
    assert kept == 10 + round(0.2 * 30) == 16
    assert trainer.dataloader_lengths == [10, kept // 4, 10]  # what the Trainer iterated, epoch by epoch
    plan = trainer.selection.epochs
    assert plan.batches == trainer.dataloader_lengths and plan.steps == [5, 2, 5]
    assert trainer.state.global_step == trainer.state.max_steps == sum(plan.steps) == 12
    per_epoch = [list(itertools.chain.from_iterable(trainer.trained[a:b])) for a, b in ((0, 10), (10, 14), (14, 24))]
    assert sorted(per_epoch[0]) == sorted(per_epoch[2]) == list(range(40)) and len(set(per_epoch[1])) == 16
    # The linear schedule warms up over 20 % of the 12 real steps and reaches 0 exactly after the last.
    rates = trainer.learning_rates[::2]  # one per optimizer step
    assert len(rates) == 12 and rates[:4] == pytest.approx([0, 1e-3 / 3, 2e-3 / 3, 1e-3])  # ceil(0.2 * 12) = 3
    assert rates[-1] == pytest.approx(1e-3 / 9) and trainer.lr_scheduler.get_last_lr()[0] == 0.0
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["epoch"] for e in logs][4:7] == pytest.approx([1.0, 1.5, 2.0])  # the short epoch counts as one
    assert [e["mms/kept_fraction"] for e in logs][4:8] == [1.0, 0.4, 0.4, 1.0]
    assert logs[-1]["mms/steps_saved"] == 3 and trainer.state.num_train_epochs == 3


def test_fractional_anneal_keeps_the_end_of_the_last_epoch_whole(tmp_path):
    trainer = cached_run(tmp_path, num_train_epochs=2, mms_anneal_epochs=0.5)
    assert trainer.selection.epochs.prunable == [0.0, 0.5]
    second = list(itertools.chain.from_iterable(trainer.trained[10:]))
    assert len(second) == pruned_length(40, 0.25, 0.2, 0.5) == 20 + 5 + 3
    assert sorted(second[-20:]) != sorted(second[:20])  # the last 20 are a uniform half, the rest pruned
    assert len(set(second[-20:])) == 20 and not set(second[-20:]) & set(second[:-20])


def test_user_max_steps_wins_and_epochs_follow_until_it(tmp_path):
    trainer = cached_run(tmp_path, max_steps=25, mms_anneal_epochs=0)
    # Epoch lengths 10, 4, 4, 4, 4: five epochs reach 25 steps (the last one is cut after 3 of its 4).
    assert trainer.selection.epochs.steps == [10, 4, 4, 4, 4] and trainer.state.global_step == 25
    assert trainer.dataloader_lengths == [10, 4, 4, 4, 4]


def test_warmup_steps_keep_the_epochs_they_touch_full(tmp_path):
    trainer = cached_run(tmp_path, num_train_epochs=4, mms_anneal_epochs=0, mms_warmup_steps=11)
    assert trainer.selection.epochs.prunable == [0.0, 0.0, 1.0, 1.0]  # epoch 2 starts at step 10 < 11


def test_plan_of_a_fractional_run():
    plan = plan_epochs(2.5, -1, 0, 1.0, 1, lambda epoch, prunable: round(10 * (1 - 0.6 * prunable)))
    # Anneal window [1.5, 2.5): epoch 1's second half and all of epoch 2.
    assert plan.prunable == [0.0, 0.5, 0.0] and plan.steps == [10, 7, 10] and plan.max_steps == 10 + 7 + 5
    assert plan.epoch_at(0) == (0, 0) and plan.epoch_at(12) == (1, 2) and plan.epoch_at(17) == (2, 0)


def test_pruned_epoch_is_unbiased_and_keeps_exactly_its_planned_count():
    generator = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.rand(30), torch.full((5,), float("nan"))])  # 5 never scored
    losses = torch.rand(35) * 3
    draws = 20000
    total = torch.zeros(())
    for _ in range(draws):
        order, weights = prune_epoch(scores, 0.3, 0.25, 1.0, generator)
        assert len(order) == pruned_length(35, 0.3, 0.25, 1.0) == 10 + 6 and (weights[order] > 0).all()
        total += (weights * losses).sum()
    assert (total / draws).item() == pytest.approx(losses.sum().item(), rel=0.01)
    order, weights = prune_epoch(scores, 0.3, 0.25, 1.0, generator)
    lowest = set(torch.argsort(scores.nan_to_num(-1.0))[:10].tolist())
    assert lowest <= set(order.tolist()) and (weights[list(lowest)] == 1).all()  # never scored rank first
    assert lowest >= set(range(30, 35))
    assert sorted(set(weights.tolist())) == pytest.approx([0.0, 1.0, 25 / 6])  # 6 of the other 25, weight H / k


def test_no_example_starves_without_annealing():
    cache = MarginCache(20)
    cache.scores = torch.linspace(0, 1, 20)
    sampler = CachedMarginSampler(cache, quantile=0.1, fraction=0.1, seed=0)
    sampler.prunable = [1.0] * 100
    seen = set()
    for epoch in range(100):
        sampler.set_epoch(epoch)
        seen.update(iter(sampler))
    assert seen == set(range(20))


def fixed_weights_trainer(tmp_path, monkeypatch, weights, batch=8, accumulation=1):
    """One optimizer step over the same 8 examples, with the epoch's loss weights forced to ``weights``."""
    trainer = recording_trainer(
        tmp_path,
        "cached",
        n=8,
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        model=tiny_model("bert", 3, 1, **NO_DROPOUT),
    )
    plan = sampling.prune_epoch
    monkeypatch.setattr(sampling, "prune_epoch", lambda *args: (plan(*args)[0], weights.clone()))
    losses = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = compute_loss(model, inputs, return_outputs, num_items_in_batch)
        losses.append(loss.detach())
        return loss

    trainer.compute_loss = recording
    trainer.train()
    monkeypatch.setattr(sampling, "prune_epoch", plan)
    return trainer, losses


def test_cached_loss_is_the_weighted_mean_of_the_per_example_losses(tmp_path, monkeypatch):
    """loss = sum_i w_i CE_i / batch size, by hand on the same batch with the initial model."""
    weights = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 1.0, 0.25, 1.5])
    trainer, (loss,) = fixed_weights_trainer(tmp_path / "w", monkeypatch, weights)
    model = tiny_model("bert", 3, 1, **NO_DROPOUT)
    data = synthetic_dataset(n=8, length=10)
    with torch.no_grad():
        logits = model(input_ids=torch.stack([d["input_ids"] for d in data])).logits
    per_example = torch.nn.functional.cross_entropy(logits, torch.stack([d["labels"] for d in data]), reduction="none")
    assert loss.item() == pytest.approx((weights * per_example).sum().item() / 8, rel=1e-5)
    assert loss.item() != pytest.approx(per_example.mean().item(), rel=1e-3)  # the weights are not ignored
    # Zeroing one example's weight changes the update.
    zeroed, _ = fixed_weights_trainer(tmp_path / "z", monkeypatch, torch.where(torch.arange(8) == 1, 0.0, weights))
    assert not torch.allclose(trainer.model.classifier.weight, zeroed.model.classifier.weight)


def test_cached_weights_with_accumulation_give_the_full_batch_update(tmp_path, monkeypatch):
    """Batch 8 and 2 x 4 accumulated, under the same non-uniform weights, make the same step."""
    weights = torch.linspace(0.5, 2.0, 8)
    single, _ = fixed_weights_trainer(tmp_path / "8", monkeypatch, weights)
    accumulated, _ = fixed_weights_trainer(tmp_path / "4", monkeypatch, weights, batch=4, accumulation=2)
    torch.testing.assert_close(
        single.model.classifier.weight, accumulated.model.classifier.weight, rtol=1e-5, atol=1e-6
    )


def test_pool_split_rounds_to_equal_shares():
    assert pool_size_to_select(640, 10, 1) == 64
    assert pool_size_to_select(640, 10, 2) == 64
    assert pool_size_to_select(30, 10, 4) == 4  # at least one per process
    assert pool_size_to_select(50, 10, 2) == 4


def test_select_with_dataloader_workers_scores_in_the_main_process(tmp_path):
    trainer = recording_trainer(tmp_path, "select", max_steps=2, dataloader_num_workers=1)
    pids = []
    score = trainer.selection.score_pool
    trainer.selection.score_pool = lambda model, pool: (pids.append(os.getpid()), score(model, pool))[1]
    trainer.train()
    assert pids == [os.getpid(), os.getpid()]


def test_select_with_gradient_accumulation(tmp_path):
    """Each micro-batch selects from its own pool; the step's item count is that of the trained examples."""
    trainer = recording_trainer(tmp_path, "select", n=64, max_steps=2, gradient_accumulation_steps=2, mmr_lambda=0.1)
    counts = []
    original = trainer._get_num_items_in_batch

    def counting(batch_samples, device):
        counts.append(original(batch_samples, device))
        return counts[-1]

    trainer._get_num_items_in_batch = counting
    trainer.train()
    assert len(trainer.pools) == 4 and all(len(pool) == 16 for pool in trainer.pools)
    assert len(trainer.trained) == 4 and all(len(batch) == 4 for batch in trainer.trained)
    assert all(set(batch) <= set(pool) for batch, pool in zip(trainer.trained, trainer.pools))
    # BERT accepts **kwargs, so the Trainer counts items: 2 micro-batches x 4 trained examples, not 2 x 16.
    assert [float(count) for count in counts] == [8.0, 8.0]


@pytest.mark.parametrize("mode", ["select", "cached"])
def test_evaluation_after_selective_training(tmp_path, mode):
    """Evaluation batches carry no example index and go through the Trainer's own path."""
    trainer = recording_trainer(tmp_path, mode, max_steps=2, mmr_lambda=0.1)
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=synthetic_dataset(n=12, length=10, seed=5))
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_samples_per_second"] > 0
    prediction = trainer.predict(synthetic_dataset(n=6, length=10, seed=6))
    assert prediction.predictions.shape == (6, 3)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"per_device_train_batch_size": 8}, "batches per process"),
        ({"n": 36}, "records 32 training examples but the training set has 36"),
    ],
)
def test_resuming_cached_mode_with_other_data_or_batches_is_refused(tmp_path, change, message):
    common = {"num_train_epochs": 3, "save_strategy": "steps", "save_steps": 10}
    recording_trainer(tmp_path / "run", "cached", n=32, **common).train()
    settings = {"n": 32, **common, **change}
    resumed = recording_trainer(tmp_path / "run", "cached", **settings)
    with pytest.raises(ResumeMismatchError, match=message):
        resumed.train(resume_from_checkpoint=os.path.join(tmp_path, "run", "checkpoint-10"))


def test_select_warns_when_the_pool_is_larger_than_the_data(tmp_path, caplog):
    trainer = make_trainer(
        tmp_path,
        None,
        synthetic_dataset(n=10),
        per_device_train_batch_size=4,
        max_steps=1,
        mms_selection="select",
        mms_pool_factor=4,
    )
    with caplog.at_level(logging.WARNING, logger="hf_mmr.trainer"):
        trainer.train()
    assert "a pool holds 16 candidates but the training set has 10 examples, so each step trains on 3" in caplog.text
