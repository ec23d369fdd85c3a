"""The model card: the Trainer's card, tagged, with every MMR/MMS setting and the head that was found."""

from conftest import make_trainer


def test_the_card_names_the_head_found_every_setting_and_explains_an_empty_results_section(tmp_path):
    trainer = make_trainer(tmp_path, mmr_lambda=0.1, max_steps=1, per_device_train_batch_size=8)
    trainer.train()  # no evaluation during training: the Trainer's "Training results" section is empty
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "README.md").read_text()
    assert "- hf-mmr" in card and "- text-classification" in card  # the tags
    assert "### Training results\n\nNo evaluation ran during training" in card
    assert "| `mmr_head` | classifier |" in card  # found, though mmr_head was not set
    for name, value in (("mmr_lambda", "0.1"), ("mmr_form", "weights"), ("mms_selection", "none")):
        assert f"| `{name}` | {value} |" in card
    assert "MMR = mean_i mean_{j in J_i} R² · ||w_{y_i} − w_j||²" in card  # the form trained with


def test_the_card_keeps_a_results_table_the_trainer_wrote(tmp_path):
    from hf_mmr.card import mmr_card_text

    args = make_trainer(tmp_path, mmr_lambda=0.1).args
    with_table = "### Training results\n\n| Epoch | Loss |\n|---|---|\n| 1 | 0.5 |\n\n### Framework versions\n"
    assert mmr_card_text(with_table, args, None, None, "0.0").startswith(with_table)
