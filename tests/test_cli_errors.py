"""Bad input through the real command line: exit 2, one line naming the flag or file, nothing written or deleted."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_script, subprocess_env

from hf_mmr import default_model_dir
from hf_mmr.recovery import COMPLETE_MARKER


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def rte_dir(tmp_path, train_rows="0\ta\tb\tentailment\n", dev_rows="0\ta\tb\tnot_entailment\n", encoding="utf-8"):
    header = "index\tsentence1\tsentence2\tlabel\n"
    (tmp_path / "glue" / "RTE").mkdir(parents=True, exist_ok=True)
    (tmp_path / "glue" / "RTE" / "train.tsv").write_bytes((header + train_rows).encode(encoding))
    write(tmp_path / "glue" / "RTE" / "dev.tsv", header + dev_rows)
    return str(tmp_path / "glue")


def latin1(path, text):
    """Write ``text`` in latin-1 (not UTF-8) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("latin-1"))
    return str(path)


def data_files(tmp_path, train, dev, extension="csv", *more):
    """--train_file/--validation_file arguments for two files of the given contents."""
    return [
        "--train_file",
        write(tmp_path / f"a.{extension}", train),
        "--validation_file",
        write(tmp_path / f"b.{extension}", dev),
        *more,
    ]


def fifo_files(tmp_path):
    """--train_file naming a named pipe (reading it would block or consume it), --validation_file a real file."""
    os.mkfifo(tmp_path / "pipe.csv")
    return [
        "--train_file",
        str(tmp_path / "pipe.csv"),
        "--validation_file",
        write(tmp_path / "b.csv", "text,label\nhi,1\n"),
    ]


def model_without_weights(folder):
    """A model folder with its config and the packaged tokenizer, but no weights file."""
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(os.path.join(default_model_dir(), name), folder / name)
    return str(folder)


def checkpoint_with_labels(tmp_path, num_labels):
    """A complete-looking checkpoint folder whose config has ``num_labels`` labels."""
    folder = tmp_path / "other" / "checkpoint-5"
    labels = {str(i): f"L{i}" for i in range(num_labels)}
    write(folder / "config.json", json.dumps({"model_type": "bert", "id2label": labels}))
    write(folder / "trainer_state.json", json.dumps({"global_step": 5}))
    (folder / "model.safetensors").write_bytes(len(b"{}").to_bytes(8, "little") + b"{}")  # an empty, whole file
    write(folder / COMPLETE_MARKER, "ok\n")
    return str(folder)


REGRESSION = "text,label\nthe cat sat,1.5\na dog ran,3.2\nbirds fly,0.4\n"

# (name, argument builder, expected words in the message)
CASES = [
    (
        "empty label cell",
        lambda t, g: data_files(t, "text,label\nhi,1\nyo,\nok,0\n", "text,label\nhi,1\n"),
        ["a.csv", "row 2 has no label"],
    ),
    (
        "labels mix numbers and words",
        lambda t, g: data_files(
            t, '{"text": "a", "label": 1}\n{"text": "b", "label": "yes"}\n', '{"text": "a", "label": 1}\n', "jsonl"
        ),
        ["1 in", "'yes' in", "spell every label one way"],
    ),
    (
        "margins on regression",
        lambda t, g: data_files(t, REGRESSION, REGRESSION, "csv", "--record_margins", "true"),
        ["--record_margins false", "regression"],
    ),
    (
        "MMR on regression",
        lambda t, g: data_files(t, REGRESSION, REGRESSION, "csv", "--mmr_lambda", "0.1"),
        ["--mmr_lambda 0", "regression"],
    ),
    (
        "calibration on regression",
        lambda t, g: data_files(t, REGRESSION, REGRESSION, "csv", "--calibration", "temperature"),
        ["--calibration none", "regression"],
    ),
    (
        "regression of words",
        lambda t, g: data_files(
            t, "text,label\nhi,pos\nyo,neg\n", "text,label\nhi,pos\n", "csv", "--do_regression", "true"
        ),
        ["--do_regression needs numeric labels", "'pos'"],
    ),
    (
        "regression flag against the task",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--do_regression", "true"],
        ["--do_regression True contradicts --task_name rte"],
    ),
    ("unknown task", lambda t, g: ["--task_name", "mrcp"], ["--task_name", "mrpc"]),
    ("missing glue dir", lambda t, g: ["--task_name", "rte", "--glue_dir", str(t / "nowhere")], ["--glue_dir"]),
    ("no task folder", lambda t, g: ["--task_name", "cola", "--glue_dir", g], ["CoLA/"]),
    ("missing split file", lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--do_predict"], ["test.tsv"]),
    (
        "ragged row",
        lambda t, g: ["--task_name", "rte", "--glue_dir", rte_dir(t, train_rows="0\ta\tentailment\n")],
        ["train.tsv:2", "fields"],
    ),
    (
        "unknown label",
        lambda t, g: ["--task_name", "rte", "--glue_dir", rte_dir(t, dev_rows="0\ta\tb\tyes\n")],
        ["dev.tsv:2", "'yes'"],
    ),
    (
        "missing train file",
        lambda t, g: ["--train_file", str(t / "no.csv"), "--validation_file", str(t / "no.csv")],
        ["--train_file", "does not exist"],
    ),
    (
        "bad extension",
        lambda t, g: ["--train_file", write(t / "a.txt", "x"), "--validation_file", write(t / "b.txt", "x")],
        ["--train_file", ".csv"],
    ),
    (
        "no label column",
        lambda t, g: [
            "--train_file",
            write(t / "a.csv", "text\nhi\n"),
            "--validation_file",
            write(t / "b.csv", "text\nhi\n"),
        ],
        ["a.csv", "'label'"],
    ),
    (
        "no rows",
        lambda t, g: [
            "--train_file",
            write(t / "a.csv", "text,label\n"),
            "--validation_file",
            write(t / "b.csv", "text,label\nhi,0\n"),
        ],
        ["a.csv", "no rows"],
    ),
    ("negative lambda", lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mmr_lambda", "-1"], ["--mmr_lambda"]),
    ("nan lambda", lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mmr_lambda", "nan"], ["--mmr_lambda"]),
    ("top_k zero", lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mmr_top_k", "0"], ["--mmr_top_k"]),
    (
        "top_k too large",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mmr_lambda", "0.1", "--mmr_top_k", "2"],
        ["--mmr_top_k", "1"],
    ),
    (
        "warmup ratio",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mmr_lambda_warmup_ratio", "1.5"],
        ["--mmr_lambda_warmup_ratio"],
    ),
    (
        "unknown mode",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mms_selection", "smart"],
        ["--mms_selection"],
    ),
    (
        "pool factor",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mms_pool_factor", "0"],
        ["--mms_pool_factor"],
    ),
    (
        "quantile",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mms_keep_quantile", "1"],
        ["--mms_keep_quantile"],
    ),
    (
        "regression with mmr",
        lambda t, g: [
            "--train_file",
            write(t / "a.csv", "text,label\nhi,0.5\nho,1.5\n"),
            "--validation_file",
            write(t / "b.csv", "text,label\nhi,0.5\n"),
            "--mmr_lambda",
            "0.1",
        ],
        ["regression", "--mmr_lambda 0"],
    ),
    (
        "unreachable model",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--model_name_or_path", "nobody/nothing"],
        ["local model path"],
    ),
    ("unknown flag", lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--mmr_lamda", "0.1"], ["--mmr_lamda"]),
    ("missing config file", lambda t, g: [str(t / "absent.yaml")], ["absent.yaml"]),
    (
        "config key twice",
        lambda t, g: [write(t / "twice.yaml", "task_name: rte\nmmr_lambda: 0.1\nmmr_lambda: 0.2\n")],
        ["twice.yaml", "key 'mmr_lambda' is given twice (lines 2 and 3); keep one"],
    ),
    ("empty config file", lambda t, g: [write(t / "empty.yaml", "# nothing yet\n")], ["empty.yaml is empty"]),
    (
        "deepspeed not installed",
        lambda t, g: [
            write(
                t / "ds.yaml",
                f"task_name: rte\nglue_dir: {g}\noutput_dir: {t / 'out'}\ndeepspeed:\n  train_batch_size: 8\n",
            )
        ],
        ["--deepspeed needs the package 'deepspeed'", 'pip install "deepspeed>=', "or remove --deepspeed"],
    ),
    ("named pipe as data file", lambda t, g: fifo_files(t), ["--train_file", "is a named pipe; name a regular file"]),
    # Data files as they come in real projects.
    (
        "empty text cell",
        lambda t, g: data_files(t, "text,label\nhi,0\n,1\n", "text,label\nhi,0\n"),
        ["a.csv", "row 2", "'text'", "--drop_rows_with_missing_text"],
    ),
    (
        "empty text cell in json lines",
        lambda t, g: data_files(
            t, '{"text": "hi", "label": 0}\n{"text": null, "label": 1}\n', '{"text": "hi", "label": 0}\n', "jsonl"
        ),
        ["a.jsonl", "row 2", "'text'"],
    ),
    (
        "broken json",
        lambda t, g: data_files(t, '[{"text": "hi", "label": 0},', '[{"text": "hi", "label": 0}]', "json"),
        ["a.json"],
    ),
    (
        "label only in dev",
        lambda t, g: data_files(t, "text,label\nhi,pos\nho,neg\n", "text,label\nhi,meh\n"),
        ["b.csv", "'meh'", "not in the training labels"],
    ),
    (
        "single class with mmr",
        lambda t, g: data_files(
            t, "text,label\nhi,pos\nho,pos\n", "text,label\nhi,pos\n", "csv", "--mmr_lambda", "0.1"
        ),
        ["a.csv", "one class"],
    ),
    (
        "csv not utf-8",
        lambda t, g: [
            "--train_file",
            latin1(t / "a.csv", "text,label\ncafé,0\nthé,1\n"),
            "--validation_file",
            write(t / "b.csv", "text,label\nhi,0\n"),
        ],
        ["a.csv"],
    ),
    (
        "tsv not utf-8",
        lambda t, g: [
            "--task_name",
            "rte",
            "--glue_dir",
            rte_dir(t, train_rows="0\tcaf\xe9\tb\tentailment\n", encoding="latin-1"),
        ],
        ["train.tsv", "UTF-8", "line 2"],
    ),
    # Paths.
    (
        "output_dir is a file",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--output_dir", write(t / "afile", "x")],
        ["--output_dir", "is a file"],
    ),
    (
        "train_file is a folder",
        lambda t, g: ["--train_file", str(t), "--validation_file", str(t)],
        ["--train_file", "folder"],
    ),
    (
        "model folder without weights",
        lambda t, g: [
            "--task_name",
            "rte",
            "--glue_dir",
            g,
            "--model_name_or_path",
            model_without_weights(t / "model"),
        ],
        ["--model_name_or_path", "weights"],
    ),
    (
        "checkpoint of another label count",
        lambda t, g: ["--task_name", "rte", "--glue_dir", g, "--resume_from_checkpoint", checkpoint_with_labels(t, 3)],
        ["--resume_from_checkpoint", "3 labels", "2"],
    ),
    # Numbers run_glue users set.
    *[
        (
            f"{flag} {value}",
            lambda t, g, flag=flag, value=value: ["--task_name", "rte", "--glue_dir", g, flag, value],
            [flag],
        )
        for flag, value in [
            ("--per_device_train_batch_size", "0"),
            ("--per_device_eval_batch_size", "-1"),
            ("--gradient_accumulation_steps", "0"),
            ("--learning_rate", "nan"),
            ("--learning_rate", "-1e-5"),
            ("--num_train_epochs", "0"),
            ("--num_train_epochs", "nan"),
            ("--max_steps", "0"),
            ("--warmup_steps", "-1"),
            ("--weight_decay", "nan"),
            ("--max_grad_norm", "-1"),
            ("--max_seq_length", "0"),
            ("--max_train_samples", "0"),
            ("--logging_steps", "0"),
        ]
    ],
    # Config files.
    (
        "config syntax error",
        lambda t, g: [write(t / "bad.yaml", "task_name: rte\nmmr_lambda: [0.1\n")],
        ["bad.yaml", "line"],
    ),
    (
        "config unknown key",
        lambda t, g: [write(t / "c.yaml", f"task_name: rte\nglue_dir: {g}\nmmr_lamda: 0.1\n")],
        ["c.yaml", "mmr_lamda"],
    ),
    (
        "half-written checkpoint",
        lambda t, g: [
            "--task_name",
            "rte",
            "--glue_dir",
            g,
            "--resume_from_checkpoint",
            os.path.dirname(write(t / "out" / "checkpoint-7" / "model.safetensors", "x")),
        ],
        ["--resume_from_checkpoint", "did not finish saving"],
    ),
]


DRIVER = """
import contextlib, io, json, sys, traceback
sys.argv[0] = "run_glue_mmr.py"
sys.path.insert(0, {root!r})
from run_glue_mmr import main
results = []
for args in json.loads(sys.stdin.read()):
    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr):
        try:
            main(args)
        except SystemExit as exit:
            code = exit.code
        except Exception:  # a case that escapes main() is a failure of that case, not of the others
            traceback.print_exc()
            code = "uncaught"
    results.append({{"code": code, "stderr": stderr.getvalue()}})
print(json.dumps(results))
"""


def prepare(tmp_path, case_index, build):
    """Arguments of one case, and its output_dir holding a file of the user's."""
    case_dir = tmp_path / f"case{case_index}"
    glue = rte_dir(case_dir)
    output_dir = case_dir / "out"
    output_dir.mkdir()
    (output_dir / "mine.txt").write_text("keep me")
    args = build(case_dir, glue)
    if not args[0].endswith(".yaml"):
        args += ["--do_train", "--do_eval", "--overwrite_output_dir"]
        if "--output_dir" not in args:
            args += ["--output_dir", str(output_dir)]
    return args, output_dir


def check(code, stderr, words, output_dir):
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    message = stderr.strip().splitlines()[-1]
    assert "error:" in message
    for word in words:
        assert word in message, message
    assert "mine.txt" in os.listdir(output_dir) and (output_dir / "mine.txt").read_text() == "keep me"
    assert set(os.listdir(output_dir)) <= {"mine.txt", "checkpoint-7"}


def test_every_bad_input_fails_cleanly(tmp_path):
    """All cases through main(argv), the command line's entry point, in one process (imports are slow)."""
    prepared = [prepare(tmp_path, i, build) for i, (_, build, _) in enumerate(CASES)]
    driver = DRIVER.format(root=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", driver],
        input=json.dumps([args for args, _ in prepared]),
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    failures = []
    for (name, _, words), (_, output_dir), outcome in zip(CASES, prepared, outcomes):
        try:
            check(outcome["code"], outcome["stderr"], words, output_dir)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["unknown task", "ragged row"])
def test_real_command_line(tmp_path, name):
    """An argument error and a data error as real command lines, exit code included."""
    index = [case[0] for case in CASES].index(name)
    args, output_dir = prepare(tmp_path, index, CASES[index][1])
    result = run_script(*args, cwd=str(tmp_path), timeout=300)
    check(result.returncode, result.stderr, CASES[index][2], output_dir)


def test_missing_text_rows_can_be_dropped_on_request(tmp_path):
    train = write(tmp_path / "a.csv", "text,label\nhi there,pos\n,neg\nfine words,neg\nbad words,pos\n")
    dev = write(tmp_path / "b.csv", "text,label\nhello,pos\n")
    result = run_script(
        "--train_file",
        train,
        "--validation_file",
        dev,
        "--do_train",
        "--max_steps",
        "1",
        "--save_strategy",
        "no",
        "--drop_rows_with_missing_text",
        "--output_dir",
        str(tmp_path / "out"),
        cwd=str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Dropped 1 rows with missing text from {train}" in result.stdout + result.stderr


STOP_MID_RUN = """
import sys
sys.argv[0] = "run_glue_mmr.py"
sys.path.insert(0, {root!r})
from hf_mmr import MMRTrainer
from hf_mmr import NonFiniteLossError
import run_glue_mmr

original = MMRTrainer.compute_loss

def compute_loss(self, *args, **kwargs):
    if self.state.global_step == 2:
        raise NonFiniteLossError("the training loss is nan at step 2")
    return original(self, *args, **kwargs)

MMRTrainer.compute_loss = compute_loss
run_glue_mmr.main({args!r})
"""


def test_a_fault_mid_run_prints_the_error_last(glue_dir, tmp_path):
    """The progress bar is closed before the one-line error, so the error is the last line."""
    args = [
        "--task_name",
        "rte",
        "--glue_dir",
        glue_dir,
        "--do_train",
        "--max_train_samples",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "no",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(
        [sys.executable, "-c", STOP_MID_RUN.format(root=ROOT, args=args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "it/s" in result.stderr  # the bar was drawn ...
    assert result.stderr.rstrip().splitlines()[-1] == "run_glue_mmr.py: error: the training loss is nan at step 2"


def test_missing_optuna_is_a_one_line_error(glue_dir, tmp_path, monkeypatch, capsys):
    import run_glue_mmr

    monkeypatch.setitem(sys.modules, "optuna", None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sentinel").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_glue_mmr.main(
            [
                "--task_name",
                "rte",
                "--glue_dir",
                glue_dir,
                "--do_train",
                "--max_train_samples",
                "20",
                "--mmr_search_trials",
                "2",
                "--output_dir",
                str(tmp_path / "out"),
                "--overwrite_output_dir",
                "true",
            ]
        )
    assert exit_info.value.code == 2
    assert 'pip install "hf-mmr[search]"' in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["sentinel"]
