"""Where benchmark numbers land: ``bench/results/<name>.json``, pretty-printed, also echoed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def default_path(name: str) -> str:
    return str(RESULTS / f"{name}.json")


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    target.write_text(text)
    print(text, end="")
