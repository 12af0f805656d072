"""Every parameter the docs tell a user to pass exists: `-p NAME VALUE` in README, HOW_TO_EXPERIMENT,
CONTRIBUTING and the parameter sets' YAML comments, and "`NAME` in `04_train`" mentions.

A `-p` on a line that names a parameter set (papermill_params/X.yaml) goes through the launcher's
own check for that set (launch.apply_overrides), so it must be valid for *that* set; elsewhere it
must be a parameter of some chapter, the run name, or a var of some parameter set.
"""
import re
from pathlib import Path

import pytest

from nbcore import launch, notebooks, paths
from nbcore.params import ParameterError

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "HOW_TO_EXPERIMENT.md", "CONTRIBUTING.md", *sorted(
    str(p.relative_to(REPO)) for p in (REPO / "papermill_params").glob("*.yaml"))]
_P = re.compile(r"(?<![\w-])-p\s+([A-Za-z_][A-Za-z0-9_]*)\b")
_IN_CHAPTER = re.compile(r"`([a-z_][a-z0-9_]*)` in `(0\d_[a-z]+)`")
_PLAN = re.compile(r"papermill_params/([A-Za-z0-9_.-]+\.yaml)")


def _lines(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    if doc.endswith(".yaml"):  # only the comments of a parameter set are prose
        return [ln.split("#", 1)[1] for ln in text.splitlines() if "#" in ln]
    return text.splitlines()


def _anywhere() -> set:
    names = {"name"}
    for nb in sorted(paths.NOTEBOOKS.glob("0*.ipynb")):
        names |= set(notebooks.declared_parameters(nb))
    for y in sorted(paths.PARAMS_DIR.glob("*.yaml")):
        names |= set(launch.load_plan(y)["vars"])
    return names


def doc_parameter_problems() -> list[str]:
    valid, problems = _anywhere(), []
    for doc in DOCS:
        for i, line in enumerate(_lines(doc), 1):
            names = [n for n in _P.findall(line) if n != "NAME"]  # NAME: the placeholder in `-p NAME VALUE`
            plan = _PLAN.search(line)
            for n in names:
                if plan and (paths.PARAMS_DIR / plan.group(1)).exists():
                    try:
                        launch.apply_overrides(launch.load_plan(paths.PARAMS_DIR / plan.group(1)), {n: 0})
                    except ParameterError as e:
                        problems.append(f"{doc}:{i}: -p {n} with {plan.group(1)}: {e}")
                elif n not in valid:
                    problems.append(f"{doc}:{i}: -p {n}: no chapter, parameter set or var has it")
            for n, chapter in _IN_CHAPTER.findall(line):
                if n not in notebooks.declared_parameters(chapter):
                    problems.append(f"{doc}:{i}: `{n}` is not a parameter of {chapter}")
    return problems


def test_every_parameter_the_docs_name_exists():
    assert doc_parameter_problems() == []


def test_the_check_finds_a_wrong_name(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text(
        "python -m nbcore.launch papermill_params/xs_1x8gb.yaml -p name a -p value_embeds 0\n"
        "cost (`gpu_hourly_usd` in `04_train`) and `gpu_hourly_price` in `04_train`; `-p seed 1`, -p sed 2\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    monkeypatch.setattr(__import__(__name__), "DOCS", ["README.md"])
    problems = doc_parameter_problems()
    assert len(problems) == 3, problems
    assert "-p value_embeds with xs_1x8gb.yaml" in problems[0] and "model_options" in problems[0]
    assert "-p sed" in problems[1] and "gpu_hourly_usd" in problems[2]
