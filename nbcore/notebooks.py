"""Running the chapters headless with papermill, and checking notebook hygiene."""
import ast
import json
from pathlib import Path

from . import paths
from .params import ParameterError, check_names


def notebook_path(name) -> Path:
    """'01', '01_tokenizer', '01_tokenizer.ipynb' or a path -> the chapter's notebook path."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p
    stem = p.stem if p.suffix == ".ipynb" else str(name)
    matches = sorted(paths.NOTEBOOKS.glob(f"{stem}*.ipynb"))
    if len(matches) != 1:
        have = ", ".join(q.stem for q in sorted(paths.NOTEBOOKS.glob("*.ipynb")))
        raise FileNotFoundError(f"no single notebook matches {name!r} (chapters: {have})")
    return matches[0]


def declared_parameters(notebook) -> dict:
    """{name: default} of a notebook's `parameters` cell, read without running it."""
    nb = json.loads(Path(notebook_path(notebook)).read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            out = {}
            for node in ast.parse(src).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    name = node.targets[0].id
                    if name.startswith("_") or name == "defaults":
                        continue
                    try:
                        out[name] = ast.literal_eval(node.value)
                    except ValueError:
                        out[name] = None
            return out
    raise ValueError(f"{notebook}: no cell tagged 'parameters'")


def execute(notebook, output_path, parameters=None, cwd=None, log_output=False, progress_bar=False,
            kernel_name=None, kernel_log_level="ERROR", **kwargs) -> Path:
    """Run a chapter through papermill with `parameters`; the executed copy goes to `output_path`.

    Names are checked against the parameters cell before any kernel starts. The kernel logs at
    `kernel_log_level` ("ERROR"): its start-up warnings (ipykernel's "Kernel is running over TCP
    without encryption", about a kernel on localhost) go nowhere near the user's terminal.
    """
    import papermill as pm

    nb = notebook_path(notebook)
    parameters = dict(parameters or {})
    check_names(parameters, declared_parameters(nb))
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if log_output:  # papermill streams cell output through its logger at INFO: give it the terminal
        import logging
        import sys

        pm_log = logging.getLogger("papermill")
        if not pm_log.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(message)s"))
            pm_log.addHandler(handler)
        pm_log.setLevel(logging.INFO)
    if kernel_log_level:
        kwargs["extra_arguments"] = [*kwargs.get("extra_arguments", []), f"--IPKernelApp.log_level={kernel_log_level}"]
    pm.execute_notebook(str(nb), str(output_path), parameters=parameters, cwd=str(cwd or nb.parent),
                        log_output=log_output, progress_bar=progress_bar, kernel_name=kernel_name, **kwargs)
    return output_path


def has_outputs(notebook_file) -> list[int]:
    """Indices of code cells that carry outputs or execution counts (should be none in git)."""
    nb = json.loads(Path(notebook_file).read_text())
    return [i for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"
            and (c.get("outputs") or c.get("execution_count") is not None)]


__all__ = ["notebook_path", "declared_parameters", "execute", "has_outputs", "ParameterError"]
