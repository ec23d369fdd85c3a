"""Checks that need a CUDA device (``pytest -m cuda``; skipped elsewhere). ``bash bench/gpu.sh`` runs them."""

import numpy as np
import pytest
import torch
from conftest import NO_DROPOUT, make_trainer, step_logs, synthetic_dataset, tiny_model

from hf_mmr import minimal_margin_scores, mmr_penalty

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", ["weights", "margin"])
def test_margin_math_under_autocast_matches_float32(dtype, form):
    """Features whose R^2 overflows float16 (|h| ~ 2,000): the penalty and its gradients stay float32-exact."""
    g = torch.Generator(device="cuda").manual_seed(0)
    features = (100 * torch.randn(64, 384, device="cuda", generator=g)).requires_grad_()
    weight = (0.05 * torch.randn(6, 384, device="cuda", generator=g)).requires_grad_()
    labels = torch.randint(0, 6, (64,), device="cuda", generator=g)

    def penalty_and_grads(autocast: bool):
        with torch.autocast("cuda", dtype=dtype, enabled=autocast):
            logits = features @ weight.T
            value = mmr_penalty(features, weight, labels, logits, top_k=2, form=form)
        grads = torch.autograd.grad(value, (features, weight))
        return value.detach(), grads, logits

    reference, reference_grads, _ = penalty_and_grads(False)
    value, grads, logits = penalty_and_grads(True)
    assert logits.dtype == dtype and value.dtype == torch.float32 and torch.isfinite(value)
    # The logits themselves are rounded to half precision; the margin math on them is not.
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)
    for grad, expected in zip(grads, reference_grads):
        assert torch.isfinite(grad).all()
        assert torch.allclose(grad.float(), expected, rtol=5e-2, atol=1e-3 * expected.abs().max().item())
    mms = minimal_margin_scores(logits, weight)
    assert mms.dtype == torch.float32 and torch.isfinite(mms).all()


def test_torch_compile_of_an_mmr_step_trains_like_eager(tmp_path):
    settings = {"per_device_train_batch_size": 8, "max_steps": 3, "mmr_lambda": 0.1, "seed": 3}
    model = lambda: tiny_model("bert", num_labels=3, seed=1, **NO_DROPOUT)
    eager = make_trainer(tmp_path / "eager", model(), **settings)
    eager.train()
    compiled = make_trainer(tmp_path / "compiled", model(), torch_compile=True, **settings)
    compiled.train()
    assert compiled.args.device.type == "cuda"
    assert [e["loss"] for e in step_logs(compiled)] == pytest.approx([e["loss"] for e in step_logs(eager)], rel=1e-3)
    assert [e["mmr/penalty"] for e in step_logs(compiled)] == pytest.approx(
        [e["mmr/penalty"] for e in step_logs(eager)], rel=1e-3
    )


def test_recorded_margins_on_cuda_equal_the_cpus(tmp_path):
    settings = {"per_device_train_batch_size": 4, "num_train_epochs": 2, "mmr_lambda": 0.1, "seed": 3}
    tables = []
    for use_cpu in (True, False):
        trainer = make_trainer(
            tmp_path / str(use_cpu),
            tiny_model("bert", num_labels=3, seed=1, **NO_DROPOUT),
            synthetic_dataset(n=16),
            record_margins=True,
            use_cpu=use_cpu,
            **settings,
        )
        trainer.train()
        tables.append(trainer.train_margins)
    cpu, cuda = tables
    assert (cpu["seen"] == cuda["seen"]).all() and (cpu["label"] == cuda["label"]).all()
    for column in ("aum", "logit_aum", "mean_loss", "confidence", "variability"):
        np.testing.assert_allclose(cuda[column], cpu[column], rtol=1e-3, atol=1e-5, err_msg=column)
