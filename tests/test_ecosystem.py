"""Every classifier architecture, PEFT, a plain nn.Module, bf16, and the Hub push path (intercepted)."""

import math
import os
import pathlib

import pytest
import torch
import transformers.trainer
from conftest import NO_DROPOUT, available_model_types, make_trainer, step_logs, synthetic_dataset, tiny_model
from torch import nn

from hf_mmr import find_classifier_head


def run(tmp_path, model, steps=2, dataset=None, **kwargs):
    settings = {"per_device_train_batch_size": 4, "max_steps": steps, "mmr_lambda": 0.1, **kwargs}
    num_labels = getattr(getattr(model, "config", None), "num_labels", 3)
    trainer = make_trainer(tmp_path, model, dataset or synthetic_dataset(n=16, num_labels=num_labels), **settings)
    trainer.train()
    return trainer, step_logs(trainer)


@pytest.mark.parametrize("model_type", available_model_types())
@pytest.mark.parametrize("num_labels,selection", [(2, "none"), (3, "select")])
def test_architecture_matrix(tmp_path, model_type, num_labels, selection):
    model = tiny_model(model_type, num_labels=num_labels)
    _, logs = run(tmp_path, model, mms_selection=selection, mms_pool_factor=2)
    assert len(logs) == 2
    for entry in logs:
        assert entry["mmr/penalty"] > 0 and math.isfinite(entry["mmr/penalty"]) and math.isfinite(entry["loss"])
        assert (selection == "select") == ("mms/selected_mean" in entry)


def test_peft_lora_with_the_classifier_in_modules_to_save(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_model("bert", num_labels=3)
    config = LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS")
    model = get_peft_model(base, config)
    path, head = find_classifier_head(model)
    assert path.endswith("classifier.modules_to_save.default")
    frozen = model.base_model.model.classifier.original_module.weight.detach().clone()
    trained_before = head.weight.detach().clone()
    _, logs = run(tmp_path, model)
    assert all(entry["mmr/penalty"] > 0 for entry in logs)
    assert not torch.equal(head.weight, trained_before)  # the trained copy learns ...
    assert torch.equal(model.base_model.model.classifier.original_module.weight, frozen)  # ... the original does not


class BagOfWords(nn.Module):
    """Not a transformers model: an embedding bag and a final linear layer named `out`."""

    def __init__(self, num_labels=3):
        super().__init__()
        self.embed = nn.EmbeddingBag(100, 16)
        self.hidden = nn.Linear(16, 16)
        self.out = nn.Linear(16, num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.out(torch.relu(self.hidden(self.embed(input_ids))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def test_plain_module_with_mmr_head(tmp_path):
    _, logs = run(tmp_path, BagOfWords(), mmr_head="out")
    assert all(entry["mmr/penalty"] > 0 for entry in logs)


def test_bf16_penalty_matches_fp32(tmp_path):
    """Same batch and weights: the bf16 penalty is within 3 % of the fp32 one (bf16 keeps 8 bits of mantissa)."""
    penalties = {}
    for bf16 in (False, True):
        model = tiny_model("bert", num_labels=3, seed=4, **NO_DROPOUT)
        _, logs = run(tmp_path / str(bf16), model, steps=1, bf16=bf16, use_cpu=True)
        penalties[bf16] = logs[0]["mmr/penalty"]
    assert penalties[True] == pytest.approx(penalties[False], rel=0.03)


def test_push_to_hub_uploads_the_model_and_card(tmp_path, monkeypatch):
    uploads = []

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append(
                (
                    repo_id,
                    folder_path,
                    sorted(os.listdir(folder_path)),
                    pathlib.Path(folder_path, "README.md").read_text(),
                    kwargs.get("ignore_patterns"),
                )
            )
            return "https://huggingface.co/" + repo_id

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeHub())
    trainer, _ = run(
        tmp_path, tiny_model("bert", num_labels=3), hub_model_id="someone/tiny-mmr", mms_selection="cached"
    )
    trainer.push_to_hub(finetuned_from="tiny-bert", tasks="text-classification", dataset="synthetic")
    ((repo_id, folder, files, card, ignored),) = uploads
    assert repo_id == "someone/tiny-mmr" and folder == str(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    for text in ("- hf-mmr", "- text-classification", "| `mmr_lambda` | 0.1 |", "| `mms_selection` | cached |"):
        assert text in card, text
    assert "checkpoint-*" in ignored


def release_after_forward(head: nn.Linear) -> None:
    """Do to the head what DeepSpeed ZeRO-3 does: free the full weight once its forward is done, gather it
    again when the backward pass reaches the head's output."""
    full = {"weight": head.weight.data}

    def gather(*_):
        head.weight.data = full["weight"]

    def release(module, inputs, output):
        module.weight.data = torch.empty(0)
        if output.requires_grad:
            output.register_hook(gather)

    head.register_forward_pre_hook(gather)
    head.register_forward_hook(release)


@pytest.mark.parametrize("form,selection", [("weights", "none"), ("margin", "select")])
def test_weight_released_after_the_forward_trains_like_the_full_one(tmp_path, form, selection):
    """MMR and MMS read the weight inside the head's forward, so a sharded head trains exactly like a whole one."""
    settings = {"mmr_form": form, "mms_selection": selection, "mms_pool_factor": 2, "max_steps": 3}
    trainers = []
    for released in (False, True):
        model = tiny_model("bert", num_labels=3, seed=1, **NO_DROPOUT)
        if released:  # before the trainer hooks the head, as when a model comes already sharded
            release_after_forward(model.classifier)
        trainer = make_trainer(tmp_path / str(released), model, synthetic_dataset(n=24), mmr_lambda=0.5, **settings)
        trainer.train()
        trainers.append(trainer)
    full, sharded = (step_logs(trainer) for trainer in trainers)
    for a, b in zip(full, sharded, strict=True):
        for key in ("loss", "mmr/penalty", "mms/mean", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key
    torch.testing.assert_close(trainers[1].model.classifier.weight, trainers[0].model.classifier.weight)
