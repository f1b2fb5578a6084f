"""The command line: a pipeline's `__main__` (`launch`), the terminal (rich consoles, a
spinner) and `describe`, which turns what Hydra, OmegaConf and dnnlab raise into one line and an
exit status: 2 for what Hydra finds while composing (an unknown option or key, a wrong type, a
malformed YAML), 1 for a bad value, a shape a network cannot take or a failed job, 130 for
Ctrl-C, 143 for SIGTERM. HYDRA_FULL_ERROR=1 shows tracebacks."""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys

from rich.console import Console
from rich.markup import escape

from dnnlab.core.errors import DnnlabError, first_line

console = Console() if Console().is_terminal else Console(width=150)
err_console = Console(stderr=True)


def status(message: str):
    """A spinner in a terminal; nothing when output is piped (no refresh thread while timing)."""
    return console.status(message) if console.is_terminal else contextlib.nullcontext()


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _file_in_the_way(e: OSError) -> str | None:
    """The file where a dir was to be made (mkdir's EEXIST or ENOTDIR), else None."""
    import errno
    from pathlib import Path

    if e.errno not in (errno.EEXIST, errno.ENOTDIR):
        return None
    p = Path(str(e.filename))
    for q in (p, *p.parents):
        if q.is_file():
            return str(q)
    return None


# what joblib (loky), concurrent.futures and submitit raise when a job's process is gone
LAUNCHER_FAILURES = {"TerminatedWorkerError", "BrokenProcessPool", "UncompletedJobError",
                     "FailedJobError", "FailedSubmissionError"}


def stopping() -> None:
    """The process is ending (an interrupt is being handled, or the command is done): further
    Ctrl-C and SIGTERM are ignored, so that a second one (a launcher's SIGTERM to the survivors
    of a Ctrl-C) cannot cut the saving short or break an atexit handler (torch's, W&B's) into a
    traceback. kill -9 still ends it."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def describe(err: BaseException) -> tuple[str, int] | None:
    """(one line, exit status) for an error a user caused; None for anything else (a bug)."""
    import yaml
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    chain = [err]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 10:
            break
    if isinstance(err, DnnlabError):
        return str(err), getattr(err, "exit_code", 1)
    for e in chain:  # a launcher lost a job (a worker killed, submitit's job gone): one line
        name = type(e).__name__
        if name in LAUNCHER_FAILURES:
            return (f"the launcher lost a job ({name}: {first_line(e)}); the jobs that finished "
                    "kept their run dirs, and the same command resumes the others"), 1
    for e in chain:  # a malformed YAML: the file and the line
        if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
            mark = e.problem_mark
            where = next((x.args[0] for x in chain if isinstance(x, HydraException)
                          and "Error loading" in str(x)), mark.name)
            return f"{first_line(where)}: line {mark.line + 1}: {e.problem}", 2
    for e in chain:  # the run dir or a log file is unwritable (Hydra's logging set-up)
        if isinstance(e, OSError) and e.filename:
            file = _file_in_the_way(e)
            if file is not None:
                return (f"cannot make the dir {e.filename}: {file} is a file, not a directory "
                        "(give hydra.run.dir or hydra.sweep.dir a directory)"), 1
            return f"cannot write {e.filename}: {e.strerror or e}", 1
    if isinstance(err, MissingConfigException):
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        if err.options and group:
            return f"{group}={option}: no such config (options: {', '.join(err.options)})", 2
        return first_line(err), 2
    if isinstance(err, OverrideParseException):
        return f"{err.override}: {first_line(err)} (see Hydra's override grammar)", 2
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        cause = err.__cause__ or err.__context__
        if "Could not override" in str(err) and cause is not None:
            return f"{first_line(err)} ({first_line(cause)})", 2
        key = getattr(cause, "full_key", None) or getattr(err, "full_key", None)
        if isinstance(cause, OmegaConfBaseException) and key:
            return f"{key}: {first_line(cause)}", 2
        line = first_line(err)
        if cause is not None and first_line(cause) not in line:
            line = f"{line}: {first_line(cause)}"
        return line, 2
    return None


def _quick_help() -> None:
    """For `--help` / `--hydra-help` only: Hydra's help lists every config group's options,
    and each of its ~100 look-ups deep-copies the whole config repository (seconds in all);
    within one help the repository cannot change, so the copy for a given (config, overrides)
    is made once (ConfigLoaderImpl._parse_overrides_and_create_caching_repo, memoized for this
    process, which ends once the help is printed)."""
    import functools

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    slow = getattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None)
    if slow is None:  # another Hydra: its help as it is, only slower
        return
    memo: dict = {}

    @functools.wraps(slow)
    def once(self, config_name, overrides):
        key = (id(self), config_name, tuple(overrides))
        if key not in memo:
            memo[key] = slow(self, config_name, overrides)
        return memo[key]

    ConfigLoaderImpl._parse_overrides_and_create_caching_repo = once


def launch(module: str, switches: tuple = ()) -> None:
    """A pipeline's `__main__`: run `<module>.main` (imported under its own name, so that the
    launchers that pickle the task, joblib and submitit, pickle it by reference) and report
    errors in one line. `switches`: config groups whose options are true/false (quote_switches)."""
    if switches:
        sys.argv[1:] = quote_switches(sys.argv[1:], switches)
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we print the one line ourselves
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun: rank 0 alone says it
    if {"--help", "-h", "--hydra-help"} & set(sys.argv[1:]):
        _quick_help()
    try:
        importlib.import_module(module).main()
    except KeyboardInterrupt as err:
        stopping()
        if main_rank:
            error_line("interrupted (Ctrl-C); what the run wrote so far is in its run dir")
        sys.exit(getattr(err, "exit_code", 130))
    except Exception as err:  # noqa: BLE001 - sorted below: user errors one line, bugs re-raised
        said = None if full else describe(err)
        if said is None:
            raise
        if main_rank:
            error_line(said[0])
        else:
            _leave_it_to_rank_0(said[0])
        sys.exit(said[1])
    finally:
        stopping()


def _leave_it_to_rank_0(line: str, wait_s: float = 60.0) -> None:
    """Another rank under torchrun met an error: rank 0 meets the same one (same command line)
    and says it. This rank waits for torchrun to stop it once rank 0 has exited (SIGTERM), so
    that its own earlier exit cannot make torchrun kill rank 0 before rank 0 has said the line;
    an error rank 0 did not meet (this rank's alone) is said here, with the rank, after wait_s."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun's stop ends this rank quietly
    try:
        time.sleep(wait_s)
    except KeyboardInterrupt:  # a Ctrl-C reaches every rank: rank 0 says the line
        return
    error_line(f"rank {os.environ.get('RANK', '?')}: {line}")


def quote_switches(argv: list, groups: tuple = ("memory",)) -> list:
    """Config groups whose options are true/false (opcount's `memory=true` selects
    conf/memory/true.yaml): Hydra's grammar reads a bare true/false as a bool, which a config
    group refuses, so the option is quoted ('true') before Hydra parses it (sweeps too:
    memory=true,false). `memory.optimizer=sgd` is an ordinary key."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in groups:
            value = re.sub(r"(?<![\w'\"])(true|false)(?![\w'\"])", r"'\1'", value,
                           flags=re.IGNORECASE)
            arg = f"{key}={value.lower()}"
        out.append(arg)
    return out
