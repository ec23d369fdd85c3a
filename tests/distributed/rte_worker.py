"""Three MMR steps on the first examples of real RTE; run with 1 process (batch 8) or 2 processes (batch 4 each).

Sequential sampling and no dropout make the two runs see the same global batches, so their logged
loss, radius and penalty, and their recorded per-example margins, must agree. Arguments: GLUE_DIR OUT. For
each ``mmr_form``, writes OUT/history{world_size}_{form}.json and OUT/margins{world_size}_{form}.csv from the
main process.
"""

import json
import os
import sys

import numpy as np
from transformers import AutoTokenizer, DataCollatorWithPadding

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from conftest import run_worker, tiny_model

from hf_mmr import MMRTrainer, MMRTrainingArguments, default_model_dir
from hf_mmr.glue import load_glue_tsv


def main(glue_dir: str, out: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    data = load_glue_tsv(glue_dir, "rte", ["train"])["train"].select(range(24))
    data = data.map(
        lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=64),
        batched=True,
        remove_columns=["sentence1", "sentence2", "idx"],
    )
    for form in ("weights", "margin"):
        train(data, tokenizer, out, form)


def train(data, tokenizer, out: str, form: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = tiny_model(
        "bert",
        num_labels=2,
        seed=3,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.5,  # features (and margins) that differ from example to example
    )
    args = MMRTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=8 // world,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        train_sampling_strategy="sequential",
        average_tokens_across_devices=False,
        mmr_lambda=0.5,
        mmr_form=form,
        record_margins=True,
    )
    trainer = MMRTrainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    if trainer.is_world_process_zero():
        steps = [entry for entry in trainer.state.log_history if "loss" in entry]
        with open(os.path.join(out, f"history{world}_{form}.json"), "w") as handle:
            json.dump(steps, handle)
        trainer.train_margins.to_csv(os.path.join(out, f"margins{world}_{form}.csv"), index=False)
        np.save(os.path.join(out, f"probs{world}_{form}.npy"), trainer.train_probs)


if __name__ == "__main__":
    run_worker(main, *sys.argv[1:3])
