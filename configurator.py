"""
nanoGPT-style configuration: a script's defaults are plain globals; then

    python train.py config/some_config.py --batch_size=32 --compile=False

runs each config file (a plain Python file of assignments) and applies each --key=value in order.
Unlike nanoGPT's exec'd configurator, an unknown key or a value of the wrong type is an error that
names the key (and the closest valid ones), raised before the script does any work.
"""

import ast
import difflib
import sys


class ConfigError(ValueError):
    pass


def _check(key, value, defaults, where):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults.keys(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key '{key}' ({where}){hint}")
    default = defaults[key]
    if default is None or value is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # --learning_rate=1 means 1.0
    if type(value) is not type(default):
        raise ConfigError(f"config key '{key}' ({where}) expects {type(default).__name__} "
                          f"like {default!r}, got {type(value).__name__} {value!r}")
    return value


def parse_value(text):
    """--key=value's value: a Python literal (3, 1e-4, True, None, 'x'), else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def configure(defaults, argv=None):
    """The config after applying config files and --key=value overrides in argv to defaults (a dict)."""
    argv = sys.argv[1:] if argv is None else argv
    config = dict(defaults)
    for arg in argv:
        if not arg.startswith("--"):
            namespace = {}
            try:
                with open(arg) as f:
                    exec(compile(f.read(), arg, "exec"), namespace)
            except FileNotFoundError:
                raise ConfigError(f"config file {arg} not found (arguments are config files or --key=value)")
            for key, value in namespace.items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    config[key] = _check(key, value, defaults, f"in {arg}")
        else:
            if "=" not in arg:
                raise ConfigError(f"argument {arg} has no value: write {arg}=VALUE")
            key, text = arg[2:].split("=", 1)
            value = parse_value(text)
            if isinstance(defaults.get(key), str) and not isinstance(value, str) and value is not None:
                value = text  # a string key given something that parses as a number, e.g. --wandb_run_name=1
            config[key] = _check(key, value, defaults, f"--{key}")
    return config


def configure_or_exit(defaults, argv=None):
    """configure(), printing the error and exiting with status 2 instead of raising."""
    try:
        return configure(defaults, argv)
    except ConfigError as e:
        sys.exit(f"error: {e}")
