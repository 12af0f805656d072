"""Checking the parameters papermill injects into a notebook.

Every chapter uses the same three cells:

    names_before = set(globals())              # cell 1, after the imports
    corpus = "builtin"; vocab_size = 4096 ...   # cell 2, tagged `parameters`
    defaults = params.collect(globals(), names_before)   # last line of cell 2
    # (papermill injects its overrides here, as a cell starting '# Parameters')
    P = params.validate(globals(), defaults)    # cell 3

`validate` fails at once on an injected name the parameters cell does not define
(naming the closest valid one), and on a value of the wrong type; it returns the
final values. Launchers check names before a kernel even starts (`check_names`).
"""
import ast
import difflib
import types


class ParameterError(ValueError):
    """A notebook parameter is unknown, mistyped or out of range."""


def collect(g: dict, names_before: set) -> dict:
    """The parameters cell's names and default values (everything it defined)."""
    return {k: g[k] for k in g if k not in names_before and not k.startswith("_") and k != "names_before"
            and not isinstance(g[k], (types.ModuleType, types.FunctionType, type))}


def closest(name: str, valid) -> str | None:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_error(name: str, valid) -> ParameterError:
    hint = closest(name, valid)
    did = f" Did you mean {hint!r}?" if hint else ""
    return ParameterError(f"unknown parameter {name!r}.{did} Valid parameters: {', '.join(sorted(valid))}")


def coerce(name: str, value, default):
    """`value` converted to the type of `default`, or a ParameterError saying what to pass."""
    if default is None or value is None:
        return value
    want = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # papermill's -p turns "123" into an int
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return want(value)
    elif isinstance(value, want):
        return value
    raise ParameterError(f"parameter {name!r} should be {want.__name__} like its default {default!r}, "
                         f"got {type(value).__name__} {value!r}")


def injected_names() -> list[str]:
    """Names papermill assigned in the cell run just before this one (empty when run by hand).

    Papermill injects a cell starting with '# Parameters' right after the parameters
    cell; IPython's input history holds it, so the names injected are known exactly.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    ip = get_ipython()
    if ip is None:
        return []
    history = ip.user_ns.get("In", [])
    if len(history) < 2 or not history[-2].lstrip().startswith("# Parameters"):
        return []
    tree = ast.parse(history[-2])
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)]


def validate(g: dict, defaults: dict, injected=None) -> dict:
    """Check injected names and every value's type; write coerced values back into `g`.

    Call it in the cell right after the parameters cell. Returns {name: final value}.
    """
    injected = injected_names() if injected is None else injected
    check_names(dict.fromkeys(injected), defaults)
    final = {}
    for name, default in defaults.items():
        value = coerce(name, g[name], default)
        g[name] = value
        final[name] = value
    return final


def check_names(given: dict, defaults: dict) -> None:
    """Raise on any name in `given` that `defaults` lacks (used before launching a notebook)."""
    for name in given:
        if name not in defaults:
            raise unknown_error(name, defaults)


def check_model_options(arch: str, options: dict) -> dict:
    """`model_options` checked against the switches of `arch` in nbcore.model (names and types).

    Each value must have the type of the switch's default (`{"x0_mix": "no"}` is refused, not
    read as on; an int is fine for a float switch); switches whose default is None (derived)
    take a number, a bool or None. Returns the options with ints made floats where meant.
    """
    from .model import ARCH_DEFAULTS

    if not isinstance(options, dict):
        raise ParameterError(f"model_options must be a dict of build_model switches, got {type(options).__name__}")
    if arch not in ARCH_DEFAULTS:
        return dict(options)
    defaults = ARCH_DEFAULTS[arch]
    out = {}
    for name, value in options.items():
        if name not in defaults:
            hint = closest(name, defaults)
            did = f" Did you mean {hint!r}?" if hint else ""
            raise ParameterError(f"model_options: {name!r} is not a switch of arch={arch!r}.{did} "
                                 f"Switches: {', '.join(defaults)}")
        default = defaults[name]
        if default is None:
            if value is not None and not isinstance(value, (bool, int, float)):
                raise ParameterError(f"model_options[{name!r}] should be a number, true/false or null "
                                     f"(default None = derived), got {type(value).__name__} {value!r}")
            out[name] = value
            continue
        try:
            out[name] = coerce(f"model_options[{name!r}]", value, default)
        except ParameterError as e:
            raise ParameterError(f"{e} (the switch {name!r} of arch={arch!r} in nbcore.model)") from None
    return out


def require(ok: bool, message: str) -> None:
    """Range checks in notebooks: `require(D % H == 0, "model_dim must be divisible by num_heads")`."""
    if not ok:
        raise ParameterError(message)


