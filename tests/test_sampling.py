"""MMS selection: select picks the pool's lowest scores, cached keeps the gradient unbiased, both resume exactly."""

import copy
import itertools
import math
import os

import pytest
import torch
from conftest import tiny_model
from test_trainer import NO_DROPOUT, synthetic_dataset

from hf_mmr import MMRConfigError, MMRTrainer, MMRTrainingArguments, minimal_margin_scores
from hf_mmr.sampling import INDEX_KEY, CachedMarginSampler, MarginCache, keep_rule, pool_size_to_select


class RecordingTrainer(MMRTrainer):
    """Records the example indices of every pool and every trained batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pools, self.trained = [], []

    def _select_from_pool(self, model, pool):
        self.pools.append(pool[INDEX_KEY].tolist())
        return super()._select_from_pool(model, pool)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # uniform sampling has no index: record the token ids instead
            self.trained.append(inputs.get(INDEX_KEY, inputs["input_ids"]).tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def make_trainer(tmp_path, mode, n=48, model=None, dataset=None, **kwargs):
    settings = {
        "per_device_train_batch_size": 4,
        "num_train_epochs": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 3,
        "disable_tqdm": True,
        "mms_selection": mode,
        "mms_pool_factor": 4,
    }
    args = MMRTrainingArguments(output_dir=str(tmp_path), **{**settings, **kwargs})
    return RecordingTrainer(
        model=model or tiny_model("bert", num_labels=3, seed=1),
        args=args,
        train_dataset=dataset or synthetic_dataset(n=n, length=10),
    )


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


def test_select_trains_on_the_pool_lowest_mms(tmp_path):
    dataset = synthetic_dataset(n=48, length=10)
    # Variable lengths, so that length-sorted scoring chunks really trim padding.
    for i, item in enumerate(dataset):
        item["attention_mask"][10 - i % 5 :] = 0
    model = tiny_model("bert", num_labels=3, seed=1)
    initial = copy.deepcopy(model)
    trainer = make_trainer(tmp_path, "select", model=model, dataset=dataset, max_steps=1, mmr_lambda=0.1)
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
    trainer = make_trainer(tmp_path, "select", num_train_epochs=2)
    trainer.train()
    assert trainer.state.global_step == 2 * 48 // 16
    for epoch in range(2):
        pools = trainer.pools[3 * epoch : 3 * (epoch + 1)]
        assert sorted(i for pool in pools for i in pool) == list(range(48))  # without replacement
    assert trainer.pools[0] != trainer.pools[3]  # a fresh permutation each epoch


def test_select_warmup_trains_uniformly(tmp_path):
    trainer = make_trainer(tmp_path, "select", max_steps=2, mms_warmup_steps=1)
    trainer.train()
    assert trainer.trained[0] == trainer.pools[0][:4]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert "mms/selected_mean" not in logs[0] and "mms/selected_mean" in logs[1]


@pytest.mark.parametrize("mode", ["select", "cached"])
def test_same_seed_same_batches(tmp_path, mode):
    first = make_trainer(tmp_path / "a", mode, max_steps=8)
    first.train()
    second = make_trainer(tmp_path / "b", mode, max_steps=8)
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
    }
    full = make_trainer(tmp_path / "full", mode, n=32, **common)
    full.train()
    resumed = make_trainer(tmp_path / "full", mode, n=32, model=tiny_model("bert", num_labels=3, seed=9), **common)
    checkpoint = os.path.join(tmp_path, "full", "checkpoint-5")
    resumed.train(resume_from_checkpoint=checkpoint)
    # Step 5 is mid-epoch in every mode (select: 2 steps per epoch of 32 / 16; others: 8).
    assert resumed.trained == full.trained[5:]
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_cached_epochs_follow_the_keep_rule(tmp_path):
    trainer = make_trainer(
        tmp_path, "cached", n=40, num_train_epochs=4, mms_anneal_epochs=1, mms_keep_quantile=0.25, mms_keep_fraction=0.2
    )
    trainer.train()
    per_epoch = [list(itertools.chain.from_iterable(trainer.trained[10 * e : 10 * (e + 1)])) for e in range(4)]
    assert all(len(epoch) == 40 for epoch in per_epoch)  # an epoch still draws N examples
    assert sorted(per_epoch[0]) == list(range(40)) and sorted(per_epoch[3]) == list(range(40))  # uniform, anneal
    kept = [e["mms/kept_fraction"] for e in trainer.state.log_history if "mms/kept_fraction" in e]
    assert kept[0] == 1.0 and kept[-1] == 1.0
    assert min(kept) == pytest.approx(0.25 + 0.75 * 0.2, abs=0.15)
    skipped = [e["mms/skipped_per_pass"] for e in trainer.state.log_history if "mms/skipped_per_pass" in e]
    assert skipped[0] == 0 and max(skipped) > 0
    # Selective epochs favour small cached MMS: repeats come from below the quantile.
    assert len(set(per_epoch[1])) < 40


def test_keep_rule_is_unbiased():
    generator = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.rand(30), torch.full((5,), float("nan"))])  # 5 never scored
    losses = torch.rand(35) * 3
    draws = 20000
    total = torch.zeros(())
    for _ in range(draws):
        keep, weights = keep_rule(scores, 0.3, 0.25, generator)
        total += (keep * weights * losses).sum()
    assert (total / draws).item() == pytest.approx(losses.sum().item(), rel=0.01)
    keep, weights = keep_rule(scores, 0.3, 0.25, generator)
    assert keep[30:].all() and (weights[30:] == 1).all()  # never scored: always kept, weight 1
    below = scores[:30] < torch.quantile(scores[:30], 0.3)
    assert keep[:30][below].all() and (weights[:30][below] == 1).all()
    assert (weights[:30][~below] == 4).all()


def test_no_example_starves_without_annealing():
    cache = MarginCache(20)
    cache.scores = torch.linspace(0, 1, 20)
    sampler = CachedMarginSampler(cache, quantile=0.1, fraction=0.1, seed=0, selecting=lambda epoch: True)
    seen = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        seen.update(iter(sampler))
    assert seen == set(range(20))


def test_cached_weights_reach_the_loss_with_accumulation(tmp_path):
    """One optimizer step over the same 8 examples: batch 8 vs 2 x 4 accumulated give the same update."""
    results = []
    for batch, accumulation in ((8, 1), (4, 2)):
        trainer = make_trainer(
            tmp_path / str(batch),
            "cached",
            n=8,
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            model=tiny_model("bert", 3, 1, **NO_DROPOUT),
        )
        trainer._margin_cache().weights = torch.linspace(0.5, 2.0, 8)  # as if planned by a selective epoch
        trainer._cached_epoch_selects = lambda epoch: False
        original = trainer._get_train_sampler

        def keep_weights(dataset=None, original=original, trainer=trainer):
            sampler = original(dataset)
            weights = trainer._cache.weights.clone()
            iterate = sampler.__iter__

            def planned():
                for index in iterate():
                    trainer._cache.weights = weights
                    yield index

            sampler.__iter__ = planned
            return sampler

        trainer._get_train_sampler = keep_weights
        trainer.train()
        results.append(trainer.model.classifier.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_pool_split_rounds_to_equal_shares():
    assert pool_size_to_select(640, 10, 1) == 64
    assert pool_size_to_select(640, 10, 2) == 64
    assert pool_size_to_select(30, 10, 4) == 4  # at least one per process
    assert pool_size_to_select(50, 10, 2) == 4


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("mms_selection", "best", "--mms_selection"),
        ("mms_pool_factor", 0, "--mms_pool_factor"),
        ("mms_keep_quantile", 1.0, "--mms_keep_quantile"),
        ("mms_keep_fraction", 0.0, "--mms_keep_fraction"),
        ("mms_warmup_steps", -1, "--mms_warmup_steps"),
        ("mms_anneal_epochs", -2, "--mms_anneal_epochs"),
    ],
)
def test_invalid_selection_arguments(tmp_path, field, value, message):
    with pytest.raises(MMRConfigError, match=message):
        MMRTrainingArguments(output_dir=str(tmp_path), **{field: value})


def test_select_with_dataloader_workers_scores_in_the_main_process(tmp_path):
    trainer = make_trainer(tmp_path, "select", max_steps=2, dataloader_num_workers=1)
    pids = []
    score = trainer._score_pool
    trainer._score_pool = lambda model, pool: (pids.append(os.getpid()), score(model, pool))[1]
    trainer.train()
    assert pids == [os.getpid(), os.getpid()]


def test_select_with_gradient_accumulation(tmp_path):
    """Each micro-batch selects from its own pool; the step's item count is that of the trained examples."""
    trainer = make_trainer(tmp_path, "select", n=64, max_steps=2, gradient_accumulation_steps=2, mmr_lambda=0.1)
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
    trainer = make_trainer(tmp_path, mode, max_steps=2, mmr_lambda=0.1)
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=synthetic_dataset(n=12, length=10, seed=5))
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_samples_per_second"] > 0
    prediction = trainer.predict(synthetic_dataset(n=6, length=10, seed=6))
    assert prediction.predictions.shape == (6, 3)
