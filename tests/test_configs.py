"""The shipped configs parse, flags after a config override it, and the console script runs the same main()."""

import glob
import logging
import os
import shutil
import subprocess

import pytest

from hf_mmr import default_model_dir
from run_glue_mmr import ModelArguments, load_pretrained, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_there_is_a_config_per_paper_task():
    names = {os.path.basename(path) for path in CONFIGS}
    assert {"mnli.yaml", "qqp.yaml", "qnli.yaml", "mrpc.yaml", "sst2.yaml", "rte.yaml", "default.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses(path):
    model_args, data_args, training_args = parse_args([path])
    assert training_args.do_train and training_args.do_eval
    if os.path.basename(path) in ("stsb.yaml", "cola.yaml"):
        # Offline MiniLM runs of the tasks beyond the paper's six, MMR off (regression cannot have it).
        assert data_args.task_name == os.path.basename(path)[:-5] and data_args.glue_dir
        assert model_args.model_name_or_path == default_model_dir() and training_args.mmr_lambda == 0
        assert training_args.record_margins == (data_args.task_name == "cola")
        return
    assert data_args.task_name in {"mnli", "qqp", "qnli", "mrpc", "sst2", "rte"} and training_args.mmr_lambda > 0
    if os.path.basename(path) == "default.yaml":
        # The form study's recipe and MRPC's held-out choice.
        assert model_args.model_name_or_path == default_model_dir() and data_args.glue_dir
        assert training_args.mmr_form == "weights" and training_args.mmr_lambda == 0.01
        assert training_args.learning_rate == 1e-4 and training_args.num_train_epochs == 2
    else:
        # The authors' BERT recipe: margin form, constant 0.01, batch 8, lr 2e-5.
        assert model_args.model_name_or_path == "bert-base-uncased"
        assert training_args.learning_rate == 2e-5 and training_args.per_device_train_batch_size == 8
        assert training_args.mmr_form == "margin" and training_args.mmr_lambda == training_args.mmr_lambda_start == 0.01


def test_flags_after_the_file_override_it():
    _, data_args, training_args = parse_args(
        [
            os.path.join(ROOT, "configs", "mrpc.yaml"),
            "--mmr_lambda",
            "0.05",
            "--glue_dir",
            "/data/glue",
            "--num_train_epochs",
            "1",
        ]
    )
    assert training_args.mmr_lambda == 0.05 and training_args.num_train_epochs == 1
    assert data_args.glue_dir == "/data/glue" and training_args.mmr_form == "margin"  # the rest from the file


def test_json_config(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"task_name": "rte", "output_dir": "x", "mmr_lambda": 0.2, "do_train": true}')
    _, data_args, training_args = parse_args([str(path)])
    assert data_args.task_name == "rte" and training_args.mmr_lambda == 0.2 and training_args.do_train


def test_console_script():
    executable = shutil.which("hf-mmr-glue")
    assert executable is not None, "hf-mmr-glue is not on PATH: install the package with pip install -e ."
    result = subprocess.run([executable, "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--mmr_lambda" in result.stdout and "--glue_dir" in result.stdout
    # The hf-mmr flags have their own heading, listed before the Trainer's 800 lines of options.
    heading = result.stdout.index("hf-mmr: MMR, MMS selection, margin recording, calibration, MMR search:")
    flags = ("mmr_lambda", "mms_selection", "record_margins", "calibration")
    mine = [result.stdout.index(f"\n  --{flag} ") for flag in flags]
    assert heading < min(mine) and max(mine) < result.stdout.index("\n  --learning_rate ")
    assert "{none,select,cached}" in result.stdout and "{weights,margin}" in result.stdout


def test_the_config_is_loaded_once_for_tokenizer_and_model(caplog):
    # The tokenizer and the model reuse the one config the script loaded, so the log shows it once.
    # transformers' loggers propagate to the root logger (and so to caplog) only when CI=true is set, so
    # caplog's handler is attached directly, and a record it receives both ways is counted once.
    import transformers

    config_logger = logging.getLogger("transformers.configuration_utils")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_info()
    config_logger.addHandler(caplog.handler)
    try:
        tokenizer, load_model = load_pretrained(ModelArguments(), num_labels=2, task_name="mrpc", online=False)
        model = load_model()
    finally:
        config_logger.removeHandler(caplog.handler)
        transformers.logging.set_verbosity(verbosity)
    records = {id(r): r for r in caplog.records}.values()
    configs = [r.getMessage().split(" {")[0] for r in records if r.getMessage().startswith("Model config")]
    assert configs == ["Model config BertConfig"]
    assert model.config.num_labels == 2 and tokenizer("a b")["input_ids"]
