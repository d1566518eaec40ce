"""lm-eval's ``custom_dataset`` for the tasks of this folder (``!function loader.local_json``).

The tasks declare ``dataset_path: json`` and their ``data_files`` like any local lm-eval
task; lm-eval would read those paths relative to the working directory, so this loader
reads them relative to this folder instead (the tasks then run from anywhere, also through
``lm_eval --include_path``). It reads JSON Lines itself, never the network.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def local_json(data_files=None, **metadata):
    """A ``datasets.DatasetDict`` of the JSON Lines files ``data_files`` (split -> file name
    in this folder). ``metadata``: what lm-eval passes besides (the task's version), unused."""
    import datasets

    if not isinstance(data_files, dict) or not data_files:
        raise ValueError("local_json needs dataset_kwargs.data_files: {split: file.jsonl}")
    splits = {}
    for split, name in data_files.items():
        path = HERE / name
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
