"""Write one BIG-Bench Hard task of ../shared/data as a {prompt, response} pool (for bench runs).

    python bench/bbh_pool.py boolean_expressions bench/out/fidelity/bbh_boolean_expressions.jsonl

The data stay in ../shared/data; the pool is a derived file under bench/out/ that git ignores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh" / "tasks"


def main(task: str, output: str) -> None:
    source = SHARED / f"{task}.json"
    if not source.is_file():
        sys.exit(f"{source}: no such BBH task (../shared/data is needed beside the checkout)")
    examples = json.loads(source.read_text(encoding="utf-8"))["examples"]
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps({"prompt": e["input"], "response": e["target"]}, ensure_ascii=False) + "\n"
                              for e in examples), encoding="utf-8")
    print(f"{len(examples)} examples → {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
