"""Tracking: a sink that logs what it is handed to one W&B run, mirrored in the run dir.

    with Tracker(settings.wandb, run_dir, job_type="opcount", name=..., config=...) as tr:
        tr.log({"loss": 0.1}, step=3)            # W&B history + a line of metrics.jsonl
        tr.table(Table("layers", cols, rows))    # wandb.Table + layers.csv
        tr.image("per_layer", png)               # wandb.Image of a PNG in the run dir
        tr.summary(reconciled=True)              # W&B summary
        tr.artifact("model", "model", [ckpt], aliases=["best"])

It knows no pipeline: the runtime hands it a name and tags (dnnlab.run.naming). metrics.jsonl holds
what went to the W&B history: a line per `log` (with `_step`), a `{"<key>": {"_type": "table" |
"image", "path": ...}}` line per table or image. No infinities reach W&B (inf is "inf").
wandb_run.json keeps the run id, for a resume to continue the run. Online W&B that does not
answer within `wandb.init_timeout` is given up with one warning per process: the run (and the
process's later ones) go on offline. Each run is finished on exit, so that a process running
several jobs (joblib's workers) never logs one into another's run.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from dnnlab.core.errors import first_line
from dnnlab.core.jsonio import read_json, write_json
from dnnlab.core.table import Table, csv_value, jsonable
from dnnlab.run.settings import WandbConfig, WandbMode, wandb_dir

ID_FILE = "wandb_run.json"  # the W&B run id of a run dir, for a resume to continue it
MIRROR = "metrics.jsonl"
_STATE = {"warned": False, "down": False}  # per process: one warning; online gave up


def stored_run_id(run_dir: Path) -> str | None:
    """The W&B run id a run dir's wandb_run.json records (None without one)."""
    data = read_json(Path(run_dir) / ID_FILE)
    return data.get("id") if isinstance(data, dict) else None


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


class _Rows:
    """A thread that hands history rows to `run.log`, in order. W&B's `log` takes ~0.4 ms a row
    (encoding, then a hop to its socket thread that the caller waits for); here the trainer
    only queues the row, and W&B's work runs while the trainer is inside torch's kernels
    (which release the GIL). The caller's side takes no Python-level lock (a Ctrl-C can land
    anywhere in it): rows and replies go through C-level SimpleQueues. A row W&B refuses is
    said once on stderr and skipped (it stays in metrics.jsonl): W&B never sinks a run."""

    def __init__(self, run: Any):
        self.run, self.warned = run, False
        self.queue: queue.SimpleQueue = queue.SimpleQueue()  # (data, step), a reply queue, None
        self.thread = threading.Thread(target=self._loop, name="dnnlab-wandb-rows", daemon=True)
        self.thread.start()

    def put(self, data: dict, step: int | None) -> None:
        self.queue.put((data, step))

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if isinstance(item, queue.SimpleQueue):  # `wait`: every row before it is logged
                item.put(True)
                continue
            data, step = item
            try:
                self.run.log(data, step=step)
            except BaseException as err:  # noqa: BLE001 - W&B must never sink a run
                if not self.warned:
                    self.warned = True
                    print(f"warning: W&B refused the history row of step {step} "
                          f"({first_line(err)}); it is in metrics.jsonl, the run goes on",
                          file=sys.stderr)

    def wait(self) -> None:
        """Return once the rows queued before this call are logged (or the thread is gone)."""
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self.queue.put(reply)
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                reply.get(timeout=0.5)
                return

    def close(self) -> None:
        """End the thread once the queued rows are logged (waiting a bounded time for it)."""
        self.queue.put(None)
        self.thread.join(timeout=30)


class Tracker:
    """One W&B run (or none, `disabled`) plus its mirror metrics.jsonl in the run dir. History
    rows (`log`) reach W&B from a thread of their own (_Rows); every other call, and reading
    `run`, first waits for the rows before it, so W&B sees everything in call order."""

    def __init__(self, settings: WandbConfig, run_dir: Path, *, job_type: str, name: str,
                 config: dict, tags: list[str] | None = None, group: str | None = None,
                 resume_id: str | None = None, mirror: bool = True):
        self.settings, self.run_dir = settings, Path(run_dir)
        self.job_type, self.name, self.tags, self.group = job_type, name, tags or [], group
        self.config, self.resume_id = jsonable(config), resume_id
        self._run, self._rows = None, None
        self.mirror_path = self.run_dir / MIRROR if mirror else Path(os.devnull)
        self._mirror = open(self.mirror_path, "a")

    def _init(self):
        """wandb.init in the configured mode, else offline, else none (one warning)."""
        import wandb

        s = self.settings
        modes = [m for m in dict.fromkeys((WandbMode(s.mode).value, "offline"))
                 if not (m == "online" and _STATE["down"])]
        for i, m in enumerate(modes):
            try:
                why = _reachable(s.init_timeout) if m == "online" else None
                if why is not None:
                    raise ConnectionError(why)
                if m == "offline":
                    # W&B's own telemetry reads the process-wide mode, not the run's: left
                    # online, an offline run starts two OpenTelemetry exporter threads and its
                    # first `log` takes ~80 ms. Offline sends nothing, so say so process-wide.
                    wandb.setup(settings=wandb.Settings(mode="offline"))
                run = wandb.init(
                    mode=m, project=s.project, entity=s.entity, group=self.group,
                    job_type=self.job_type, name=self.name, tags=self.tags,
                    dir=str(wandb_dir(self.run_dir)), config=self.config, reinit="finish_previous",
                    id=self.resume_id, resume="allow" if self.resume_id else None,
                    settings=wandb.Settings(console="off", x_disable_stats=True, silent=True,
                                            init_timeout=float(s.init_timeout)))
            except Exception as err:  # noqa: BLE001 - W&B must never sink a run
                _STATE["down"] = _STATE["down"] or m == "online"
                if not _STATE["warned"]:
                    then = " then ".join(modes[i + 1:]) or "without W&B"
                    print(f"warning: W&B could not start in mode '{m}' ({first_line(err)}); "
                          f"carrying on {then}", file=sys.stderr)
                    _STATE["warned"] = True
                continue
            write_json(self.run_dir / ID_FILE, {"id": run.id, "name": self.name,
                                                "project": s.project})
            return run
        return None

    def __enter__(self) -> Tracker:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._run = self._init() if self.settings.mode != WandbMode.disabled else None
        if self._run is not None:
            self._rows = _Rows(self._run)
        return self

    @property
    def run(self) -> Any:
        """The W&B run (None without one), once the rows handed to `log` have reached it."""
        if self._rows is not None:
            self._rows.wait()
        return self._run

    def __exit__(self, exc_type, exc, tb) -> None:
        """Finish the W&B run: exit code 0, 1 on an error, 130/143 on Ctrl-C / SIGTERM."""
        code = getattr(exc, "exit_code", 130) if isinstance(exc, KeyboardInterrupt) else int(
            exc is not None)
        self._mirror.close()
        rows, self._rows = self._rows, None
        try:
            if rows is not None:
                rows.close()  # its queued rows first
        finally:
            if self._run is not None:
                run, line = self._run, self.end_line()
                run.finish(exit_code=code)
                print(line, flush=True)
            self._run = None

    def end_line(self) -> str:
        """The run's W&B name and id, and where it is: its URL online; offline, the dir and the
        `wandb sync` command that uploads it. A resumed offline run has a dir per process with
        one id; the newest holds the whole history (the resume replays it: train.resume.replay),
        so that is the one to sync."""
        run = self.run
        head = f"W&B: run {run.name or self.name} (id {run.id}"
        if run.settings.mode not in ("offline", "dryrun"):
            return f"{head}): {run.url}"
        sync = Path(run.settings.sync_dir)
        older = sorted(p for p in sync.parent.glob(f"offline-run-*-{run.id}") if p != sync)
        also = (f"; resumed: sync this dir only, it holds the whole history "
                f"({len(older)} earlier dir(s) of this id, e.g. {older[-1].name}, need no "
                "sync)") if older else ""
        return f"{head}), offline; upload with: wandb sync {sync}{also}"

    @property
    def active(self) -> bool:  # a W&B run is open (without waiting for the rows)
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def next_step(self) -> int:  # the first step W&B does not hold yet
        return int(getattr(self.run, "step", 0) or 0) if self.run is not None else 0

    def _write(self, rec: dict) -> None:
        self._mirror.write(json.dumps(jsonable(rec)) + "\n")
        self._mirror.flush()

    def log(self, metrics: dict, step: int | None = None, to_wandb: bool = True) -> None:
        """Scalars to W&B at `step` (W&B's `_step`) and a line of metrics.jsonl; `to_wandb=False`
        writes the line only (a row W&B already holds)."""
        data = jsonable(dict(metrics))
        self._write(data | ({"_step": step} if step is not None else {}))
        if self._run is not None and to_wandb:
            if self._rows is not None:
                self._rows.put(data, step)
            else:  # wandb.watch is on
                self._run.log(data, step=step)

    def restart_mirror(self) -> None:  # an empty metrics.jsonl, for a resume's replay
        self._mirror.close()
        self._mirror = open(self.mirror_path, "w")

    def define_metric(self, name: str, step_metric: str | None = None,
                      summary: str | None = None) -> None:
        """Chart `name` (a key or a glob: `val/*`) against `step_metric`; summary min, max..."""
        if self.run is not None:
            self.run.define_metric(name, step_metric=step_metric, summary=summary)

    def config_update(self, **kv: Any) -> None:
        if self.run is not None:
            self.run.config.update(jsonable(kv), allow_val_change=True)

    def summary(self, **kv: Any) -> None:
        if self.run is not None:
            for k, v in kv.items():
                self.run.summary[k] = jsonable(v)

    def add_tags(self, *tags: str) -> None:  # W&B tags learned during the run (pruned)
        self.tags += [t for t in tags if t not in self.tags]
        if self.run is not None:
            self.run.tags = tuple(self.tags)

    def table(self, table: Table) -> None:  # <key>.csv in the run dir and a wandb.Table
        path = table.to_csv(self.run_dir)
        self._write({table.key: {"_type": "table", "path": Path(path).name if path else None}})
        if self.run is not None:
            self.run.log({table.key: wandb_table(table)})

    def line(self, table: Table, x: str, y: str, title: str) -> None:
        """A live W&B line plot of two columns of `table` (key `<y>_vs_<x>`)."""
        if self.run is not None:
            import wandb

            self.run.log({f"{y}_vs_{x}": wandb.plot.line(wandb_table(table), x, y, title=title)})

    def lines(self, key: str, xs: list, ys: list[list], keys: list[str], title: str,
              xname: str) -> None:
        """A live W&B chart of several lines over one x (wandb.plot.line_series); points
        without a value (None) are left out of their line."""
        if self.run is not None:
            import wandb

            keep = [[i for i, v in enumerate(y) if v is not None] for y in ys]
            self.run.log({key: wandb.plot.line_series(
                xs=[[xs[i] for i in k] for k in keep], ys=[[y[i] for i in k]
                                                          for y, k in zip(ys, keep)],
                keys=keys, title=title, xname=xname)})

    def image(self, key: str, path: Path, caption: str | None = None) -> None:  # a saved PNG
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

    def watch(self, model: Any, log: str | None, log_freq: int) -> None:  # histograms
        """wandb.watch: its hooks log into the step being built, so the rows are then logged
        in the caller's thread, as the hooks are."""
        if self.run is not None and log:
            if self._rows is not None:
                self._rows.close()
                self._rows = None
            self.run.watch(model, log=log, log_freq=log_freq)


def wandb_table(table: Table):
    """A wandb.Table with the raw values (JSON-safe). W&B wants one type per column: a column
    that mixes numbers and strings (inf is the string "inf") is written as text."""
    import wandb

    cols = [[csv_value(r[j]) for r in table.rows] for j in range(len(table.columns))]
    for j, col in enumerate(cols):
        kinds = {type(v) if not isinstance(v, (int, float)) or isinstance(v, bool)
                 else float for v in col if v is not None}
        if len(kinds) > 1:
            cols[j] = [None if v is None else str(v) for v in col]
    return wandb.Table(columns=table.columns, data=[list(r) for r in zip(*cols)])
