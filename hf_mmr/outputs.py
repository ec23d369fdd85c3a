"""An output folder's manifest: what the runs wrote there, so that a user's own files are never replaced.

A run writes a known set of files into the top of its ``output_dir`` (``RUN_FILES``: the model, the
tokenizer, the results, the margins, the card ...) and its checkpoint folders. ``record`` notes each
such file with its SHA-256 in ``MANIFEST`` at the end of a run. Before the next run writes into the
folder, ``check_output_folder``:

* refuses an ``output_dir`` that is, contains or lies inside a folder the run loads (the model), after
  resolving symlinks;
* refuses when the folder holds a file of those names that no run wrote (not in the manifest), naming
  the first: the run would replace it;
* keeps a file that a run wrote but that was changed since (an annotated ``train_margins.csv``) as a
  numbered copy beside it (``train_margins.1.csv``) before the run can write a new one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil

from .errors import MMRConfigError

logger = logging.getLogger(__name__)

# The Trainer uploads no "_*" file with push_to_hub: the manifest stays local.
MANIFEST = "_hf_mmr_outputs.json"
# What a run of run_glue_mmr.py may write at the top of its output_dir (checkpoint folders aside).
RUN_FILES = (
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "training_args.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    "trainer_state.json",
    "train_margins.csv",
    "train_probs.npy",
    "label_issues.csv",
    "eval_mms*.npy",
    "predict_results_*.txt",
)


def _is_run_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def _digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def read_manifest(folder: str) -> dict[str, str]:
    """``name -> sha256`` of the files that runs wrote into ``folder`` (empty when none did)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as handle:
            entries = json.load(handle)
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _related(path: str, other: str) -> str | None:
    """How ``path`` stands to ``other`` (both resolved): 'is', 'lies inside', 'contains', or None."""
    if path == other:
        return "is"
    if path.startswith(other + os.sep):
        return "lies inside"
    if other.startswith(path + os.sep):
        return "contains"
    return None


def check_output_folder(output_dir: str, loaded: dict[str, str], overwrite: bool) -> None:
    """Refuse an ``output_dir`` that would replace what a run did not write; keep edited run files as copies.

    ``loaded`` maps each flag to the local folder it loads (``--model_name_or_path``, ...); with
    ``overwrite`` the folder may hold earlier runs' files, which the run then replaces.
    """
    resolved = os.path.realpath(output_dir)
    for flag, source in loaded.items():
        if source and os.path.isdir(source):
            relation = _related(resolved, os.path.realpath(source))
            if relation == "is":
                raise MMRConfigError(
                    f"--output_dir {output_dir!r} is the folder that {flag} loads, which the run would overwrite; "
                    "choose another --output_dir"
                )
            if relation is not None:
                raise MMRConfigError(
                    f"--output_dir {output_dir!r} {relation} the folder of {flag} {source!r}, which the run would "
                    "overwrite; choose another --output_dir"
                )
    if not os.path.isdir(resolved):
        return
    manifest = read_manifest(resolved)
    names = sorted(name for name in os.listdir(resolved) if os.path.isfile(os.path.join(resolved, name)))
    foreign = [name for name in names if _is_run_file(name) and name not in manifest]
    if foreign:
        reason = "--overwrite_output_dir would replace it" if overwrite else "the run would replace it"
        raise MMRConfigError(
            f"--output_dir {output_dir!r} holds {foreign[0]!r}, which no run of hf-mmr wrote there and {reason}; "
            "move it away or choose another --output_dir"
        )
    for name in names:
        if name in manifest and _digest(os.path.join(resolved, name)) != manifest[name]:
            copy = _free_copy_name(resolved, name)
            shutil.copy2(os.path.join(resolved, name), os.path.join(resolved, copy))
            logger.warning(f"{name} in {output_dir} was changed since the run wrote it: kept as {copy}")


def _free_copy_name(folder: str, name: str) -> str:
    """``stem.N.suffix`` with the smallest N >= 1 not yet taken in ``folder``."""
    stem, dot, suffix = name.partition(".")
    number = 1
    while os.path.exists(os.path.join(folder, f"{stem}.{number}{dot}{suffix}")):
        number += 1
    return f"{stem}.{number}{dot}{suffix}"


def record(output_dir: str, names: list[str] | None = None) -> None:
    """Record ``names`` (default: every run file now at the top of ``output_dir``) in the folder's manifest.

    Called at the end of a run, when every such file is the run's own or one recorded before (the run
    refused to start otherwise), and by whatever else of hf-mmr writes a run file (the report).
    """
    if not os.path.isdir(output_dir):
        return
    if names is None:
        names = [n for n in os.listdir(output_dir) if _is_run_file(n) and os.path.isfile(os.path.join(output_dir, n))]
    entries = {**read_manifest(output_dir), **{name: _digest(os.path.join(output_dir, name)) for name in names}}
    entries = {
        name: digest for name, digest in sorted(entries.items()) if os.path.isfile(os.path.join(output_dir, name))
    }
    path = os.path.join(output_dir, MANIFEST)
    with open(path + ".part", "w", encoding="utf-8") as handle:
        json.dump(entries, handle, indent=1)
    os.replace(path + ".part", path)
