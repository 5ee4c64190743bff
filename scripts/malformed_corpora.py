"""Feed malformed corpora and bad options through the command line; print each case's exit code and its one
``error:`` line (a case is clean when it exits with code 2, says one such line and shows no traceback). `python scripts/malformed_corpora.py [folder]` (default: outputs/malformed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEFAULTS = {"benchmark": "none", "tracking.enabled": "false"}   # unless a case sets them
TSV_HEADER = "id\teng_Latn\tfra_Latn\n"
GOOD_ROWS = "a\tThe cat sleeps.\tLe chat dort.\nb\tIt rains.\tIl pleut.\nc\tShe reads.\tElle lit.\n"


def build(folder: Path) -> dict[str, list[str]]:
    """Write one malformed corpus per case; return each case's command-line overrides."""
    folder.mkdir(parents=True, exist_ok=True)

    def tsv(name: str, text: str | bytes) -> str:
        path = folder / f"{name}.tsv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return f"dataset.path={path}"

    def flores(name: str, files: dict[str, bytes]) -> str:
        split = folder / name / "devtest"
        split.mkdir(parents=True, exist_ok=True)
        for code, content in files.items():
            (split / f"{code}.devtest").write_bytes(content)
        return f"dataset.path={folder / name}"

    good = tsv("good", TSV_HEADER + GOOD_ROWS)
    jsonl = folder / "broken.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "eng_Latn": "Hi", "fra_Latn": "Salut"}) + "\n{not json\n")
    nested = folder / "nested.jsonl"
    nested.write_text("".join(json.dumps({"id": i, "eng_Latn": "Hi", "fra_Latn": ["Salut"]}) + "\n" for i in range(3)))
    (folder / "a_file").write_text("not a folder")
    (folder / "garbage.db").write_text("this is not a database")
    lm_eval = folder / "results_2024.json"
    lm_eval.write_text(json.dumps({"results": {"hellaswag": {"acc,none": 0.5}}}))
    return {
        "language missing": ["dataset=tsv", good, "dataset.languages=[eng_Latn,deu_Latn]"],
        "unknown code (close match)": ["dataset=tsv", good, "dataset.languages=[eng_Latn,fra_Latm]"],
        "files of different lengths": ["dataset=flores", flores("unequal", {"eng_Latn": b"a\nb\nc\n", "fra_Latn": b"a\nb\n"})],
        "empty unit": ["dataset=tsv", tsv("empty", TSV_HEADER + GOOD_ROWS + "d\tHello.\t\n")],
        "whitespace-only unit": ["dataset=tsv", tsv("blank", TSV_HEADER + GOOD_ROWS + "d\t   \tBonjour.\n")],
        "invalid UTF-8": ["dataset=flores", flores("latin1", {"eng_Latn": b"a\nb\n", "fra_Latn": b"a\n\xe9t\xe9\n"})],
        "duplicate unit ids": ["dataset=tsv", tsv("dupes", TSV_HEADER + GOOD_ROWS + "a\tAgain.\tEncore.\n")],
        "fewer than two units": ["dataset=tsv", tsv("single", TSV_HEADER + "a\tHi.\tSalut.\n")],
        "pivot absent": ["dataset=tsv", good, "score.pivot=deu_Latn"],
        "empty folder": ["dataset=flores", flores("empty", {})],
        "ragged TSV row": ["dataset=tsv", tsv("ragged", TSV_HEADER + GOOD_ROWS + "d\tOnly English.\n")],
        "invalid JSONL line": ["dataset=jsonl", f"dataset.path={jsonl}"],
        "missing file": ["dataset=tsv", f"dataset.path={folder / 'nowhere.tsv'}"],
        "max_length below 2": ["dataset=tsv", good, "extract.max_length=1"],
        "unknown metric": ["dataset=tsv", good, "metric=nasca", "metric.names=[nascar]"],
        "unknown model name": ["dataset=tsv", good, "model=llama9"],
        "unknown pooling": ["dataset=tsv", good, "pooling=median"],
        "only the pivot language": ["dataset=tsv", good, "dataset.languages=[eng_Latn]"],
        "cache.dir under a file": ["dataset=tsv", good, f"cache.dir={folder / 'a_file' / 'cache'}"],
        "tracking store not a database": ["dataset=tsv", good, "tracking.enabled=true",
                                          f"tracking.uri=sqlite:///{folder / 'garbage.db'}"],
        "lm-eval file, no language task": ["dataset=tsv", good, "benchmark=lm_eval", f"benchmark.path={lm_eval}"],
        "max_units 0": ["dataset=tsv", good, "dataset.max_units=0"],
        "max_units negative": ["dataset=tsv", good, "dataset.max_units=-3"],
        "max_units not a number": ["dataset=tsv", good, "dataset.max_units=many"],
        "layers beyond the model": ["dataset=tsv", good, "extract.layers=999"],
        "batch_size 0": ["dataset=tsv", good, "extract.batch_size=0"],
        "group_units 0": ["dataset=tsv", good, "extract.group_units=0"],
        "JSONL value not text": ["dataset=jsonl", f"dataset.path={nested}"],
        "UTF-16 file": ["dataset=tsv", tsv("utf16", (TSV_HEADER + GOOD_ROWS).encode("utf-16"))],
        "header only": ["dataset=tsv", tsv("header", TSV_HEADER)],
        "unknown target language": ["dataset=tsv", good, "score.languages=[deu_Latn]"],
        "unknown layer pool": ["dataset=tsv", good, "score.layer_pool=median"],
        "neurons: top_rate above 1": ["dataset=tsv", good, "task=neurons", "task.languages=null", "task.top_rate=2"],
        "neurons: missing counts file": ["dataset=tsv", good, "task=neurons", f"task.counts=[{folder / 'no.pt'}]"],
        "neurons: unknown method": ["dataset=tsv", good, "task=neurons", "task.languages=null", "task.method=magic"],
        "model=hf without a model": ["dataset=tsv", good, "model=hf"],
        "model folder missing": ["dataset=tsv", good, "model=hf", f"model.name_or_path={folder / 'no-model'}"],
        "model folder without a model": ["dataset=tsv", good, "model=hf", f"model.name_or_path={folder}"],
        "revision on a packaged model": ["dataset=tsv", good, "model.revision="],
        "device not there": ["dataset=tsv", good, "model.device=cuda:99"],
        "unknown device": ["dataset=tsv", good, "model.device=gpu"],
        "empty cache.dir": ["dataset=tsv", good, "cache.dir="],
        "empty dataset.path": ["dataset=tsv", "dataset.path="],
        "corpus path is a folder": ["dataset=tsv", f"dataset.path={folder}"],
        "corpus folder is a file": ["dataset=flores", f"dataset.path={folder / 'a_file'}"],
        "unknown key": ["dataset=tsv", good, "extract.batch=4"],
        "added key": ["dataset=tsv", good, "+score.pivots=[eng_Latn]"],
        "wrong type": ["dataset=tsv", good, "extract.batch_size=four"],
        "null where a number is needed": ["dataset=tsv", good, "score.resamples=null"],
        "languages not a list": ["dataset=tsv", good, "dataset.languages=eng_Latn"],
        "level out of range": ["dataset=tsv", good, "score.level=95"],
        "every pivot": ["dataset=tsv", good, "score.pivot=all"],
        "unparsable override": ["dataset=tsv", good, "dataset.languages=[eng_Latn"],
        "several values without -m": ["dataset=tsv", good, "pooling=mean,last"],
        "sweep with one bad value": ["-m", "dataset=tsv", good, "extract.batch_size=8,-1"],
        "sweep with one unknown option": ["-m", "dataset=tsv", good, "pooling=mean,median"],
        "unresolvable interpolation": ["dataset=tsv", good, "cache.dir=${paths.nowhere}/cache"],
        "benchmark file missing": ["dataset=tsv", good, "benchmark=csv", f"benchmark.path={folder / 'no.csv'}"],
        "neurons: mask is a folder": ["dataset=tsv", good, "task=neurons", f"task.mask={folder}"],
    }


def clean_error(returncode: int, stderr: str) -> str | None:
    """The one ``error:`` line of a clean refusal (exit code 2, no traceback), or None."""
    said = [line for line in stderr.splitlines() if line.startswith("error:")]
    return said[0] if returncode == 2 and len(said) == 1 and "Traceback" not in stderr else None


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/malformed")
    cases = build(folder)
    width = max(map(len, cases))
    failures = 0
    for name, overrides in cases.items():
        given = {override.split("=")[0] for override in overrides}
        defaults = [f"{key}={value}" for key, value in DEFAULTS.items() if key not in given]
        result = subprocess.run(
            [sys.executable, "-m", "neuronxa.run", *overrides, *defaults, f"hydra.run.dir={folder / 'runs'}"],
            capture_output=True, text=True, timeout=300)
        line = clean_error(result.returncode, result.stderr)
        failures += line is None
        shown = line or "NOT CLEAN: " + " | ".join(result.stderr.strip().splitlines()[-3:])
        print(f"{name:<{width}}  exit {result.returncode}  {shown}", flush=True)
    print(f"{len(cases)} cases, {failures} without a clean error")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
