"""Head discovery on tiny models of every common architecture: the captured h reproduces the logits."""

import pytest
import torch
from conftest import HEAD_PATHS, available_model_types, tiny_model
from torch import nn

from hf_mmr import FeatureCapture, HeadNotFoundError, find_classifier_head


@pytest.mark.parametrize("model_type", available_model_types())
def test_head_found_and_captured_features_reproduce_logits(model_type):
    model = tiny_model(model_type, num_labels=3).eval()
    path, head = find_classifier_head(model)
    assert path == HEAD_PATHS[model_type]
    input_ids = torch.randint(1, 100, (4, 10))
    with FeatureCapture(head, path) as capture, torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        call = capture.pop(logits)
    assert call.features.shape == (4, head.in_features)
    torch.testing.assert_close(call.features @ head.weight.T + head.bias, logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(call.weight, head.weight) and call.weight.data_ptr() != head.weight.data_ptr()
    capture.check_reproduces(call, logits)


def test_override_names_the_module():
    model = tiny_model("roberta")
    path, head = find_classifier_head(model, "classifier.out_proj")
    assert path == "classifier.out_proj" and head is model.classifier.out_proj


@pytest.mark.parametrize(
    "path,message",
    [("classifier.nothing", "names no module"), ("classifier", "not an nn.Linear"), ("classifier.dense", None)],
)
def test_bad_override_is_a_clear_error(path, message):
    model = tiny_model("roberta")
    if message is not None:
        with pytest.raises(HeadNotFoundError, match=message):
            find_classifier_head(model, path)
        return
    # classifier.dense is a Linear, but out_proj runs after it: caught at the first batch.
    name, head = find_classifier_head(model, path)
    input_ids = torch.randint(1, 100, (2, 5))
    with FeatureCapture(head, name) as capture, torch.no_grad():
        logits = model.eval()(input_ids=input_ids).logits
        with pytest.raises(HeadNotFoundError, match="mmr_head"):
            capture.pop(logits)


def test_linear_followed_by_an_elementwise_op_fails_the_reproduction_check():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            return 2 * self.out(x)

    model = Scaled()
    path, head = find_classifier_head(model)
    with FeatureCapture(head, path) as capture, torch.no_grad():
        logits = model(torch.randn(5, 4))
        with pytest.raises(HeadNotFoundError, match="W h \\+ b"):
            capture.check_reproduces(capture.pop(logits), logits)


def test_head_that_sees_every_token_is_rejected_with_the_override_named():
    class TokenScorer(nn.Module):  # scores every token, then pools: not a final layer over (N, d) features
        def __init__(self):
            super().__init__()
            self.score = nn.Linear(8, 2)

        def forward(self, x):
            return self.score(x)[:, -1]

    model = TokenScorer()
    path, head = find_classifier_head(model)
    with FeatureCapture(head, path) as capture:
        logits = model(torch.randn(3, 5, 8))
        with pytest.raises(HeadNotFoundError, match="mmr_head"):
            capture.pop(logits)


def test_no_matching_linear_names_the_override():
    model = tiny_model("bert", num_labels=3)
    model.config.num_labels = 7
    with pytest.raises(HeadNotFoundError, match="mmr_head"):
        find_classifier_head(model)


def test_plain_module_uses_its_last_linear():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    path, head = find_classifier_head(model)
    assert path == "2" and head is model[2]
