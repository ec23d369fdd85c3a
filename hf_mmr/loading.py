"""Loading what run_glue_mmr.py trains on, offline first: GLUE TSVs, a user's CSV/JSON files or the Hub's
datasets, and the model, config and tokenizer; a Hub name that cannot be reached fails at once, in one line
naming what to pass instead."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import datasets
from datasets import load_dataset
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .errors import UsageError
from .glue import get_task, load_glue_tsv, split_path

logger = logging.getLogger(__name__)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub (``HF_ENDPOINT``, huggingface.co by default) answers within seconds: no minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_raw_datasets(model_args: Any, data_args: Any, training_args: Any, online: bool) -> datasets.DatasetDict:
    """The task's splits: from --glue_dir, from local files, or from the Hub."""
    if data_args.task_name is not None and data_args.glue_dir is not None:
        logger.warning(f"Reading {data_args.task_name} from the GLUE TSV files in {data_args.glue_dir}")
        task = get_task(data_args.task_name)
        splits = []
        if training_args.do_train:
            splits.append("train")
        if training_args.do_eval:
            splits += task.eval_splits
        if training_args.do_predict:
            splits += task.test_splits
        return load_glue_tsv(data_args.glue_dir, data_args.task_name, splits)
    if data_args.task_name is not None or data_args.dataset_name is not None:
        name = "nyu-mll/glue" if data_args.task_name is not None else data_args.dataset_name
        if not online:
            raise UsageError(
                f"the Hub cannot be reached to download {name!r}; pass --glue_dir DIR with the original GLUE TSV "
                "files, or --train_file and --validation_file"
            )
        config_name = data_args.task_name or data_args.dataset_config_name
        logger.warning(f"Downloading {name} {config_name or ''} from the Hub")
        return load_dataset(name, config_name, cache_dir=model_args.cache_dir, token=model_args.token)
    data_files = {"train": data_args.train_file, "validation": data_args.validation_file}
    if training_args.do_predict:
        if data_args.test_file is None:
            raise UsageError("--do_predict needs a GLUE --task_name or a --test_file")
        data_files["test"] = data_args.test_file
    builder = "csv" if data_args.train_file.endswith(".csv") else "json"
    try:
        raw = load_dataset(builder, data_files=data_files, cache_dir=model_args.cache_dir)
    except Exception as error:  # noqa: BLE001 - datasets raises many types here; each means an unreadable file
        cause = error.__cause__ or error
        raise UsageError(
            f"cannot read {', '.join(data_files.values())} as {builder}: {cause}".splitlines()[0]
        ) from None
    for split, dataset in raw.items():
        if split != "test" and "label" not in dataset.column_names:
            raise UsageError(f"{data_files[split]} has no 'label' column")
    return raw


def cannot_load(flag: str, source: str, error: Exception, online: bool) -> UsageError:
    """The one line for a model, config or tokenizer that did not load: why, or that the Hub cannot be reached."""
    if online or os.path.isdir(source):
        return UsageError(f"cannot load {flag} {source!r}: {str(error).splitlines()[0]}")
    return UsageError(
        f"{flag} {source!r} is not a local folder and the Hub cannot be reached; "
        "pass a local model path, or leave the flag out for the packaged MiniLM"
    )


def load_pretrained(
    model_args: Any, num_labels: int, task_name: str | None, online: bool
) -> tuple[Any, Callable[[], Any]]:
    """Tokenizer, and a function that loads the model (again for every search trial); a Hub name that cannot be
    reached fails at once with what to do instead."""
    common = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
        "local_files_only": not online,
    }
    config_flag, config_source = model_args.source("config")
    tokenizer_flag, tokenizer_source = model_args.source("tokenizer")
    try:
        config = AutoConfig.from_pretrained(config_source, num_labels=num_labels, finetuning_task=task_name, **common)
    except (OSError, ValueError) as error:
        raise cannot_load(config_flag, config_source, error, online) from None
    # The model's config, already loaded, tells AutoTokenizer its class (instead of loading and logging it again).
    same_folder = {"config": config} if not model_args.tokenizer_name else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_source, use_fast=model_args.use_fast_tokenizer, **same_folder, **common
        )
    except (OSError, ValueError) as error:
        raise cannot_load(tokenizer_flag, tokenizer_source, error, online) from None

    def load_model() -> Any:
        try:
            return AutoModelForSequenceClassification.from_pretrained(
                model_args.model_name_or_path,
                config=config,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                **common,
            )
        except OSError as error:
            raise UsageError(
                f"cannot load the model weights of --model_name_or_path {model_args.model_name_or_path!r}: "
                + str(error).splitlines()[0]
            ) from None

    return tokenizer, load_model


def split_sources(data_args: Any, raw: datasets.DatasetDict) -> dict[str, str]:
    """Where each split was read from, for error messages: a file, or the Hub dataset and split."""
    if data_args.task_name is not None and data_args.glue_dir is not None:
        task = get_task(data_args.task_name)
        return {split: split_path(data_args.glue_dir, task, split) for split in raw}
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    name = "nyu-mll/glue" if data_args.task_name else data_args.dataset_name
    return {split: files.get(split) or f"{name} ({split} split)" for split in raw}
