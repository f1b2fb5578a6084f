"""Tracking: a sink that logs what it is handed to one W&B run, mirrored in the run dir.

    with Tracker(settings.wandb, run_dir, job_type="opcount", name=..., config=...) as tr:
        tr.log({"loss": 0.1}, step=3)            # W&B history + a line of metrics.jsonl
        tr.table(Table("layers", cols, rows))    # wandb.Table + layers.csv
        tr.image("per_layer", png)               # wandb.Image of a PNG in the run dir
        tr.summary(reconciled=True)              # W&B summary
        tr.artifact("model", "model", [ckpt], aliases=["best"])

It knows no pipeline: names and tags come from the rule each pipeline's config declares
(`wandb.run_name`, read by `run_name` and `run_tags`). `metrics.jsonl` holds exactly what went
to the W&B history: one line per `log` (with `_step`), and a `{"<key>": {"_type": "table" |
"image", "path": ...}}` line per table or image. W&B config and summary hold no infinities (inf is
the string "inf"). The run id is kept in `wandb_run.json` so that a resumed job continues it.
If W&B cannot start (online with an unreachable server: given up after `wandb.init_timeout`),
one warning per process says so and the run goes on offline, then disabled; later runs of the
process start offline. Each job's run is finished on exit, so that a process running several
jobs (joblib's workers) never logs one job into another's run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from dnnlab.config import RunNameRule, WandbConfig
from dnnlab.errors import first_line
from dnnlab.results import read_json, write_json
from dnnlab.table import Table, jsonable

ID_FILE = "wandb_run.json"  # the W&B run id of a run dir, for a resume to continue it
MIRROR = "metrics.jsonl"
JOB_GROUPS = ("hydra", "wandb", "paths")  # where and how a job runs: never in a run name
NAME_MAX = 100  # characters of a run name
VALUE_MAX = 24  # characters of one override's value in it
_STATE = {"warned": False, "down": False}  # per process: one warning; online gave up


def stored_run_id(run_dir: Path) -> str | None:
    """The W&B run id a run dir's wandb_run.json records (None without one)."""
    data = read_json(Path(run_dir) / ID_FILE)
    return data.get("id") if isinstance(data, dict) else None


def _short(value: Any) -> str:
    """A config value for a run name: 4.0 -> 4, inf -> inf, [16, 32] -> 16_32."""
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "_".join(_short(v) for v in value)
    return str(value).lstrip(".")


def _select(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_name(rule: RunNameRule, pipeline: str, config: dict, overrides: list[str]) -> str:
    """`<pipeline>-<parts>-<key>=<value>,...` (at most NAME_MAX characters): the rule's parts by
    value (a key ending in `name` as its value, a true flag as its last key, any other as last
    key + value: `beta4`), then the other overrides by their last key, except those of the
    rule's `skip` and the job groups (hydra, wandb, paths); a long value is cut."""
    parts = [pipeline]
    for key in rule.parts:
        value, last = _select(config, key), key.rsplit(".", 1)[-1]
        if value is None or value is False:
            continue
        parts.append(last if value is True else _short(value) if last == "name"
                     else f"{last}{_short(value)}")
    skip = set(rule.skip) | set(rule.parts)
    extra = []
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in skip or key.split(".")[0] in skip or key.split(".")[0] in JOB_GROUPS:
            continue
        value = value if len(value) <= VALUE_MAX else value[:VALUE_MAX - 3] + "..."
        extra.append(f"{key.rsplit('.', 1)[-1]}={value}")
    if extra:
        parts.append(",".join(extra))
    return "-".join(parts)[:NAME_MAX]


def run_tags(rule: RunNameRule, pipeline: str, config: dict, user_tags: list[str],
             choices: dict | None = None, *more: str) -> list[str]:
    """The user's tags, the pipeline, the values of the rule's `tags` (a config key, or a
    config group's choice in Hydra's `choices`) and `more`, each once."""
    values = [_select(config, k) if _select(config, k) is not None else (choices or {}).get(k)
              for k in rule.tags]
    extra = [pipeline, *values, *more]
    return list(dict.fromkeys([*user_tags, *(str(t) for t in extra if t)]))


def _reachable(timeout: float) -> str | None:
    """None when the W&B server answers within `timeout` seconds, else why not."""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except Exception as err:  # noqa: BLE001 - refused, timed out, no route, bad URL
        return f"{url} did not answer within {timeout:g} s: {first_line(err)}"
    return None


class Tracker:
    """One W&B run (or none, `disabled`) plus its mirror metrics.jsonl in the run dir."""

    def __init__(self, settings: WandbConfig, run_dir: Path, *, job_type: str, name: str,
                 config: dict, tags: list[str] | None = None, group: str | None = None,
                 resume_id: str | None = None):
        self.settings, self.run_dir = settings, Path(run_dir)
        self.job_type, self.name, self.tags, self.group = job_type, name, tags or [], group
        self.config, self.resume_id = jsonable(config), resume_id
        self.run = None
        self._mirror = open(self.run_dir / MIRROR, "a")

    def _init(self):
        import wandb

        mode = getattr(self.settings.mode, "value", self.settings.mode)
        modes = [m for m in dict.fromkeys((mode, "offline", "disabled"))
                 if not (m == "online" and _STATE["down"])]
        kwargs = dict(project=self.settings.project, entity=self.settings.entity,
                      group=self.group, job_type=self.job_type, name=self.name, tags=self.tags,
                      dir=str(self.run_dir), config=self.config, reinit="finish_previous",
                      id=self.resume_id, resume="allow" if self.resume_id else None,
                      settings=wandb.Settings(console="off", x_disable_stats=True, silent=True,
                                              init_timeout=float(self.settings.init_timeout)))
        for i, m in enumerate(modes):
            why = _reachable(self.settings.init_timeout) if m == "online" else None
            try:
                if why is not None:
                    raise ConnectionError(why)
                run = wandb.init(mode=m, **kwargs)
            except Exception as err:  # noqa: BLE001 - W&B must never sink a run
                _STATE["down"] = _STATE["down"] or m == "online"
                if not _STATE["warned"]:
                    then = " then ".join(modes[i + 1:]) or "without W&B"
                    print(f"warning: W&B could not start in mode '{m}' ({first_line(err)}); "
                          f"carrying on {then}", file=sys.stderr)
                    _STATE["warned"] = True
                continue
            if m != "disabled":
                write_json(self.run_dir / ID_FILE, {"id": run.id, "name": self.name,
                                                    "project": self.settings.project})
            return run
        return None

    def __enter__(self) -> Tracker:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.run = self._init() if self.settings.mode != "disabled" else None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Finish the W&B run: exit code 0, 1 on an error, 130/143 on Ctrl-C / SIGTERM."""
        code = 1 if exc_type else 0
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            code = getattr(exc, "exit_code", 130)
        self._mirror.close()
        if self.run is not None:
            self.run.finish(exit_code=code)
        self.run = None

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def next_step(self) -> int:
        """The first step W&B does not hold yet (0 without a run)."""
        return int(getattr(self.run, "step", 0) or 0) if self.run is not None else 0

    def _write(self, rec: dict) -> None:
        self._mirror.write(json.dumps(jsonable(rec)) + "\n")
        self._mirror.flush()

    def log(self, metrics: dict, step: int | None = None, to_wandb: bool = True) -> None:
        """Scalars to W&B at `step` (W&B's `_step`) and a line of metrics.jsonl; `to_wandb=False`
        writes the line only (a row W&B already holds)."""
        self._write(dict(metrics) | ({"_step": step} if step is not None else {}))
        if self.run is not None and to_wandb:
            self.run.log(jsonable(dict(metrics)), step=step)

    def restart_mirror(self) -> None:
        """Empty metrics.jsonl, for a resume to write back the rows it keeps."""
        self._mirror.close()
        self._mirror = open(self.run_dir / MIRROR, "w")

    def define_metric(self, name: str, step_metric: str | None = None,
                      summary: str | None = None, hidden: bool = False) -> None:
        """Chart `name` (a key or a glob such as `val/*`) against `step_metric`, with the
        summary aggregation `summary` (min, max, last, ...)."""
        if self.run is not None:
            self.run.define_metric(name, step_metric=step_metric, summary=summary,
                                   hidden=hidden)

    def config_update(self, **kv: Any) -> None:
        if self.run is not None:
            self.run.config.update(jsonable(kv), allow_val_change=True)

    def summary(self, **kv: Any) -> None:
        if self.run is not None:
            for k, v in kv.items():
                self.run.summary[k] = jsonable(v)

    def table(self, table: Table) -> None:
        """A Table as <key>.csv in the run dir and a wandb.Table."""
        path = table.to_csv(self.run_dir)
        self._write({table.key: {"_type": "table", "path": Path(path).name if path else None}})
        if self.run is not None:
            self.run.log({table.key: table.to_wandb()})

    def line(self, table: Table, x: str, y: str, title: str) -> None:
        """A live W&B line plot of two columns of `table` (key `<y>_vs_<x>`)."""
        if self.run is not None:
            import wandb

            self.run.log({f"{y}_vs_{x}": wandb.plot.line(table.to_wandb(), x, y, title=title)})

    def image(self, key: str, path: Path, caption: str | None = None) -> None:
        """A PNG already saved in the run dir, logged to W&B as an image."""
        self._write({key: {"_type": "image", "path": Path(path).name}})
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)})

    def artifact(self, kind: str, type: str, paths: list[Path], metadata: dict | None = None,
                 aliases: list[str] | None = None) -> None:
        """Files as the W&B artifact `<kind>-<run id>` of `type` (a new version each time)."""
        if self.run is None:
            return
        import wandb

        art = wandb.Artifact(f"{kind}-{self.run.id}", type=type,
                             metadata=jsonable(metadata or {}))
        for p in paths:
            art.add_file(str(p), name=Path(p).name)
        with contextlib.suppress(Exception):  # an artifact must never sink a run
            self.run.log_artifact(art, aliases=list(aliases or []))

    def watch(self, model: Any, log: str | None, log_freq: int) -> None:
        """wandb.watch: histograms of gradients and/or parameters every `log_freq` steps."""
        if self.run is not None and log:
            self.run.watch(model, log=log, log_freq=log_freq)
