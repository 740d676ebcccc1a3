"""
nanoGPT-style configuration: a script's defaults are plain globals; then

    python train.py config/some_config.py --batch_size=32 --compile=False

runs each config file (a plain Python file of assignments) and applies each --key=value in order. Unlike nanoGPT's,
an unknown key, a value of the wrong type, or one (or a default) outside the interval its comment starts with, e.g.
`top_k=200,  # [1, inf): keep ...` (None passes; a None default takes integers unless an end has a point, [0.0, 1]),
is an error naming the key, before any work. overrides() returns only what the files and flags set (train.py puts a
resumed run's config under them).
"""

import ast
import difflib
import io
import os
import re
import sys
import tokenize
import traceback

# the range a key's comment starts with: [ or (, two ends (numbers or inf), ] or ), e.g. (0, 1] or [1, inf)
INTERVAL = re.compile(r"([\[(])(-?inf|[-+.e\d]+), (-?inf|[-+.e\d]+)([\])])")


class ConfigError(ValueError):
    pass


def _check(key, value, defaults, where, comments):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults.keys(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key '{key}' ({where}){hint}")
    default, given = defaults[key], f"{where}={value!r}" if where.startswith("--") else f"{key}={value!r} ({where})"
    if value is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # --learning_rate=1 means 1.0
    if default is not None and type(value) is not type(default):
        raise ConfigError(f"config key '{key}' ({where}) expects {type(default).__name__} "
                          f"like {default!r}, got {type(value).__name__} {value!r}")
    comment = comments.get(key, "")
    interval = INTERVAL.match(comment)
    if interval is None:
        return value
    integers = default is None and not re.search("[.e]", interval[2] + interval[3])  # e.g. [1, inf); not [0.0, 1]
    if type(value) not in ((int,) if integers else (int, float)):
        raise ConfigError(f"{given} is not {'an integer' if integers else 'a number'}: {comment}")
    low, high = float(interval[2]), float(interval[3])
    if not ((low <= value if interval[1] == "[" else low < value)
            and (value <= high if interval[4] == "]" else value < high)):
        raise ConfigError(f"{given} is outside {comment}")
    return value


def key_comments(source_file):
    """{key: the comment at the end of the line that assigns key} in a script's source: its --help text."""
    try:
        with open(source_file, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return {}
    comments = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                comments.setdefault(tok.start[0], tok.string.lstrip("#").strip())
    except (tokenize.TokenError, SyntaxError):
        return {}
    found, literal = {}, {}  # a line that assigns a plain literal (a default) wins over other assignments
    for lineno, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*(\w+)\s*(?::[^=#]*)?=(?!=)([^#]*)", line)  # key = value, or a dataclass's key: type = value
        if not m or lineno not in comments:
            continue
        key = m.group(1)
        found.setdefault(key, comments[lineno])
        try:
            ast.literal_eval(m.group(2).strip().rstrip(","))
            literal.setdefault(key, comments[lineno])
        except (ValueError, SyntaxError):
            pass
    return found | literal


def flag_comments(source_file, comment_files=()):
    """{key: comment} of source_file's keys, and of those it does not comment in comment_files beside it."""
    comments = {}
    for path in [source_file, *(os.path.join(os.path.dirname(source_file), f) for f in comment_files)]:
        comments = key_comments(path) | comments  # the script's own comment wins
    return comments


def help_text(defaults, source_file, comment_files=(), notes=None):
    """Usage and every key with its default and the comment beside it in the script (or, for keys the script does
    not comment, in comment_files beside it, e.g. model.py for GPTConfig's fields), and notes[key] after it."""
    parts = source_file.replace("\\", "/").split("/")
    script = os.path.relpath(source_file)
    if parts[-2:-1] == ["inheritune"]:
        script = f"-m inheritune.{parts[-1][:-3]}"  # a module's CLI
    elif script.startswith(os.pardir + os.sep):
        script = os.path.abspath(source_file)  # a script outside the current folder: its whole path
    comments = flag_comments(source_file, comment_files)
    for key, note in (notes or {}).items():
        comments[key] = f"{comments.get(key, '')} ({note})".strip()
    width = max(len(k) for k in defaults) + 2
    lines = [f"usage: python {script} [config.py ...] [--key=value ...]",
             "config files (plain Python assignments) and --key=value flags apply in order; keys and defaults:", ""]
    for key, value in defaults.items():
        lines.append(f"  --{key:<{width}} {value!r:<24} {comments.get(key, '')}".rstrip())
    return "\n".join(lines)


def check_config_file(path, defaults):
    """Raise ConfigError unless path is a .py file: a folder or a checkpoint as an argument is meant for a flag."""
    keys = [k for k in ("init_from", "ckpt", "model", "out_dir") if k in defaults]  # the flags that take a path
    if os.path.isdir(path):
        flags = " or ".join(f"--{k}={path}" for k in keys) or f"--key={path}"
        raise ConfigError(f"{path} is a folder, not a config file: flags are --key=value, e.g. {flags}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found (arguments are .py config files or --key=value flags)")
    if path.endswith(".pt"):
        flags = " or ".join(f"--{k}={path}" for k in keys if k != "out_dir") or f"--key={path}"
        raise ConfigError(f"{path} is a checkpoint, not a config file: flags are --key=value, e.g. {flags}")
    if not path.endswith(".py"):
        raise ConfigError(f"{path} is not a Python config file: a config file is a .py of assignments, other "
                          f"settings are --key=value flags")


def overrides(defaults, argv=None, source_file=None, comment_files=(), notes=None):
    """{key: value} of what the config files and --key=value flags in argv set (later ones win), each checked
    against defaults. -h / --help prints help_text and exits 0."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text(defaults, source_file or sys.argv[0], comment_files, notes))
        sys.exit(0)
    comments = flag_comments(source_file, comment_files) if source_file else {}
    for key in comments.keys() & defaults.keys():  # a default outside its own declared range: a typo in the script
        _check(key, defaults[key], defaults, "the script's default", comments)
    given = {}
    for arg in argv:
        if not arg.startswith("--"):
            check_config_file(arg, defaults)
            namespace = {}
            with open(arg) as f:
                try:
                    exec(compile(f.read(), arg, "exec"), namespace)
                except SyntaxError as e:
                    raise ConfigError(f"{arg}:{e.lineno}: {e.msg}") from None
                except Exception as e:  # noqa: BLE001 (a config file fails as it runs: its line, not a traceback)
                    line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == arg]
                    raise ConfigError(f"{arg}:{line[-1]}: {type(e).__name__}: {e}") from None
            for key, value in namespace.items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    given[key] = _check(key, value, defaults, f"in {arg}", comments)
        else:
            if "=" not in arg:
                raise ConfigError(f"argument {arg} has no value: write {arg}=VALUE")
            key, text = arg[2:].split("=", 1)
            try:  # a Python literal (3, 1e-4, True, None, 'x'), else the plain string
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if isinstance(defaults.get(key), str) and not isinstance(value, str) and value is not None:
                value = text  # a string key given something that parses as a number, e.g. --wandb_run_name=1
            given[key] = _check(key, value, defaults, f"--{key}", comments)
    return given


def check_device(device):
    """Raise ConfigError unless torch can run on device ('cpu', 'cuda', 'cuda:1', 'mps')."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device={device!r} but {build} (torch {torch.__version__}): "
                              f"use --device=cpu, or install a CUDA build of torch on a GPU machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r} but MPS is not available here: use --device=cpu")
    elif dev.type not in ("cpu", "mps"):
        raise ConfigError(f"device={device!r} is not supported: use cpu, cuda, cuda:N or mps")


def overrides_or_exit(defaults, argv=None, comment_files=(), notes=None, source_file=None):
    """overrides(), printing the error and exiting with status 1 instead of raising; --help lists the keys with the
    comments beside them in the calling script's source (or source_file)."""
    try:
        return overrides(defaults, argv, source_file or sys._getframe(1).f_code.co_filename, comment_files, notes)
    except ConfigError as e:
        sys.exit(f"error: {e}")


def configure_or_exit(defaults, argv=None):
    """The config: defaults, then the config files and --key=value flags in argv over them (as overrides_or_exit)."""
    return dict(defaults) | overrides_or_exit(defaults, argv, source_file=sys._getframe(1).f_code.co_filename)
