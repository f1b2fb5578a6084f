"""Tracking: one W&B run per job, built from the Hydra config, mirrored on local disk.

Every pipeline uses `Tracker`:

    with Tracker(cfg, pipeline="opcount") as tr:
        tr.log({"loss": 0.1}, step=3)           # W&B history + metrics.jsonl
        tr.table(Table("layers", columns, rows)) # wandb.Table + layers.csv
        tr.image("gap_vs_beta", png_path)        # wandb.Image (the PNG is already in the run dir)
        tr.results["totals"] = {...}; tr.save()  # results.json, written as it goes
        tr.summary(reconciled=True)              # W&B summary + results.json
        tr.update(history=[...])                 # results.json only, written now
        tr.artifact("model", "model", [ckpt], aliases=["latest"])  # a W&B artifact

Only pipelines (and the runtime) hold a Tracker: library code returns results.

Every run is named for what it ran (`run_name`: `train-smoothmax_cnn-beta4`, the pipeline, the
model, beta, then the other overrides, short) and tagged with the pipeline, the model and the
experiment preset (`run_tags`). `metrics.jsonl` holds exactly what went to the W&B history:
one line per `log` (with `_step`), and a `{"<key>": {"_type": "table"|"image", "path": ...}}`
line per table or image. W&B config and summary hold no infinities: inf is the string "inf"
(beside a numeric `log10_beta` where a temperature is involved, dnnlab.beta.log10_beta).
At the end of every job results.json, the CSV tables and metrics.jsonl go to W&B as a
`results` artifact (`results-<run id>`).

A resumed job (`resume=True`, the train pipeline's trainer.resume) continues the W&B run whose
id the run dir's `wandb_run.json` records (`resume="allow"`, same id) and `rewind(step)`
replays the history the local copy holds up to the checkpoint: an offline run killed with
kill -9 loses what wandb had buffered, and the resumed run still holds every step once.

Config keys (conf/wandb/default.yaml): `wandb.mode` = offline (default: no account, no
network; `wandb sync <run dir>/wandb/offline-run-*` uploads later) | online | disabled;
`wandb.project`; `wandb.group` (default: in a multirun, the sweep's name, so a sweep's jobs
group together); `wandb.entity`; `wandb.tags`. job_type is the pipeline and the config is the
resolved Hydra config. Files go under the run dir. If W&B cannot start (online without
network, say), a warning is printed once and the run goes on offline, then disabled.

Each job's run is finished on exit (`with wandb.init(...)`): in wandb 0.31 a process that runs
several jobs (joblib workers) would otherwise log them all into the first run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnnlab.table import Table, jsonable

_WARNED = False
ID_FILE = "wandb_run.json"  # the W&B run id of a run dir, for a resume to continue it
DISCARDED = "metrics.discarded.jsonl"  # rows past the checkpoint a resume redid
# overrides a run name leaves out: whole groups that say where, how it is shown or which
# preset (a tag), and keys that say whether it resumed or that the name already holds
_NAME_SKIP_GROUPS = ("hydra", "wandb", "paths", "experiment")
_NAME_SKIP_KEYS = ("model", "trainer.resume", "trainer.progress", "model.name",
                   "model.pool.beta", "model.pool.learnable")
NAME_MAX = 100  # characters of a run name
VALUE_MAX = 24  # characters of one override's value in it


def run_dir_of() -> Path:
    """The job's run dir: Hydra's runtime.output_dir (cwd when not under Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
        return Path(os.getcwd())


def sweep_info() -> tuple[bool, str | None, str | None]:
    """(is multirun, sweep name, job name within the sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return True, f"{hc.job.name}-{Path(hc.sweep.dir).name}", hc.job.override_dirname or str(
                hc.job.num)
        return False, None, hc.job.override_dirname or None
    except (ValueError, ImportError):
        return False, None, None


def _tags(tags) -> list[str]:
    """wandb.tags as a list of strings (one string is one tag)."""
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    return [str(t) for t in tags]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves a half-written results.json): a temp file,
    then a rename. If either fails (an unwritable dir or file), the temp file is removed and
    the OSError names `path`."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(jsonable(data), indent=2, allow_nan=False)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None


def _short(value: Any) -> str:
    """A config value for a run name: 4.0 -> 4, inf -> inf, [16, 32] -> 16_32."""
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "_".join(_short(v) for v in value)
    return str(value)


def run_name(pipeline: str, config: dict, overrides: list[str]) -> str:
    """`<pipeline>[-<model>][-beta<value>[-learnable]][-<key>=<value>,...]`: what the run ran.
    The model is `model.name`, beta `model.pool.beta`; the other command-line overrides follow
    by their last key (`epochs=3`; a long value cut to VALUE_MAX characters), except those
    that only say where, how or whether to show or resume it (hydra.*, wandb.*, paths.*,
    trainer.resume, trainer.progress)."""
    parts = [pipeline]
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if model.get("name"):
        parts.append(str(model["name"]))
    pool = model.get("pool") if isinstance(model.get("pool"), dict) else {}
    if "beta" in pool:
        beta = pool["beta"]
        parts.append(f"beta{_short(beta if not isinstance(beta, str) else beta.lstrip('.'))}"
                     + ("-learnable" if pool.get("learnable") else ""))
    extra = []
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in _NAME_SKIP_KEYS or key.split(".")[0] in _NAME_SKIP_GROUPS:
            continue
        value = value if len(value) <= VALUE_MAX else value[:VALUE_MAX - 3] + "..."
        extra.append(f"{key.rsplit('.', 1)[-1]}={value}")
    if extra:
        parts.append(",".join(extra))
    return "-".join(parts)[:NAME_MAX]


def run_tags(pipeline: str, config: dict, user_tags: Any, experiment: str | None = None,
             *more: str) -> list[str]:
    """The user's `wandb.tags`, then the pipeline, the model's name, the experiment preset
    (Hydra's choice of `experiment` when not given) and `more`, each once."""
    tags = _tags(user_tags)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    extra = [pipeline, model.get("name"), experiment or _experiment(), *more]
    return list(dict.fromkeys(tags + [str(t) for t in extra if t]))


def _experiment() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment") or None
    except (ValueError, ImportError, AttributeError):
        return None


def _task_overrides() -> list[str]:
    """The job's task overrides as given on the command line ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):
        return []


class Tracker:
    """A W&B run for one job plus its local mirror in the run dir."""

    def __init__(self, cfg: DictConfig, pipeline: str, run_dir: Path | None = None,
                 use_wandb: bool = True, resume: bool = False):
        self.cfg, self.pipeline, self.use_wandb, self.resume = cfg, pipeline, use_wandb, resume
        self.run_dir = Path(run_dir) if run_dir is not None else run_dir_of()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.results: dict = {}
        self.run = None
        self._metrics = open(self.run_dir / "metrics.jsonl", "a")
        self.overrides = _task_overrides()  # the job's command-line overrides
        self.config = jsonable(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        self.name = run_name(pipeline, self.config, self.overrides)

    # -- W&B ------------------------------------------------------------------------------------
    def _stored_id(self) -> str | None:
        try:
            return json.loads((self.run_dir / ID_FILE).read_text()).get("id")
        except (OSError, ValueError, AttributeError):
            return None

    def _init_wandb(self):
        global _WARNED
        import wandb

        wcfg = self.cfg.get("wandb", None) or {}
        mode = getattr(wcfg.get("mode", "offline"), "value", wcfg.get("mode", "offline"))
        _, sweep, _ = sweep_info()
        run_id = self._stored_id() if self.resume else None
        kwargs = dict(
            project=wcfg.get("project", "dnnlab"), entity=wcfg.get("entity", None),
            group=wcfg.get("group", None) or sweep, job_type=self.pipeline, name=self.name,
            tags=run_tags(self.pipeline, self.config, wcfg.get("tags", None)),
            dir=str(self.run_dir), config=self.config, reinit="finish_previous",
            id=run_id, resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True,
                                    init_timeout=float(wcfg.get("init_timeout", 60))),
        )
        modes = [mode] + [m for m in ("offline", "disabled") if m != mode]
        for i, m in enumerate(modes):
            try:
                run = wandb.init(mode=m, **kwargs)
            except Exception as err:  # noqa: BLE001 - W&B must never sink a run
                if not _WARNED:
                    then = " then ".join(modes[i + 1:]) or "without W&B"
                    print(f"warning: W&B could not start in mode '{m}' ("
                          f"{(str(err).strip().splitlines() or [type(err).__name__])[0]}); "
                          f"carrying on {then}", file=sys.stderr)
                    _WARNED = True
                continue
            if m != "disabled":
                write_json(self.run_dir / ID_FILE, {"id": run.id, "name": self.name,
                                                    "project": kwargs["project"]})
            return run
        return None

    def __enter__(self) -> Tracker:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.run = self._init_wandb() if self.use_wandb else None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Save results.json (unless there is nothing to save), log it with the CSV tables and
        metrics.jsonl as the `results` artifact, and finish the W&B run: exit code 0, 1 on an
        error, 130/143 and summary status "interrupted" on Ctrl-C / SIGTERM."""
        code = 1 if exc_type else 0
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            code = getattr(exc, "exit_code", 130)
            self.results["status"] = "interrupted"
            if self.run is not None:
                self.run.summary["status"] = "interrupted"
        try:
            if self.results:
                self.save()
        finally:
            self._metrics.close()
            if self.run is not None:
                with contextlib.suppress(Exception):  # never hide the job's own outcome
                    files = [self.run_dir / "results.json", self.run_dir / "metrics.jsonl",
                             *sorted(self.run_dir.glob("*.csv"))]
                    self.artifact("results", "results", [f for f in files if f.exists()],
                                  metadata={"status": self.results.get("status", "finished")})
                self.run.finish(exit_code=code)
            self.run = None

    # -- logging --------------------------------------------------------------------------------
    def _write(self, rec: dict) -> None:
        self._metrics.write(json.dumps(jsonable(rec)) + "\n")
        self._metrics.flush()

    def log(self, metrics: dict, step: int | None = None) -> None:
        """Log scalars to W&B (at `step`, W&B's `_step`, when given) and append them to
        metrics.jsonl."""
        rec = dict(metrics)
        if step is not None:
            rec["_step"] = step
        self._write(rec)
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def define_metric(self, name: str, step_metric: str | None = None,
                      summary: str | None = None, hidden: bool = False) -> None:
        """W&B's define_metric: chart `name` (a key or a glob such as `val/*`) against
        `step_metric`, with the summary aggregation `summary` (min, max, last, ...)."""
        if self.run is not None:
            self.run.define_metric(name, step_metric=step_metric, summary=summary,
                                   hidden=hidden)

    def config_update(self, **kv: Any) -> None:
        """Add values to the W&B config (the resolved Hydra config is there already)."""
        self.config.update(jsonable(kv))
        if self.run is not None:
            self.run.config.update(jsonable(kv), allow_val_change=True)

    def summary(self, **kv: Any) -> None:
        """Set W&B summary values and store them in results.json."""
        self.results.update(kv)
        self.wandb_summary(**kv)
        self.save()

    def wandb_summary(self, **kv: Any) -> None:
        """Set W&B summary values only (inf as "inf")."""
        if self.run is not None:
            for k, v in kv.items():
                self.run.summary[k] = jsonable(v)

    def update(self, **kv: Any) -> None:
        """Store values in results.json and write it now (pipelines call this as results come
        in)."""
        self.results.update(kv)
        self.save()

    def table(self, table: Table) -> None:
        """A Table as <key>.csv in the run dir and a wandb.Table."""
        path = table.to_csv(self.run_dir)
        self._write({table.key: {"_type": "table", "path": Path(path).name if path else None}})
        if self.run is not None:
            self.run.log({table.key: table.to_wandb()})

    def image(self, key: str, path: Path, caption: str | None = None) -> None:
        """A PNG already saved in the run dir, logged to W&B as an image."""
        self._write({key: {"_type": "image", "path": Path(path).name}})
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)})

    def artifact(self, kind: str, type: str, paths: list[Path], metadata: dict | None = None,
                 aliases: list[str] | None = None) -> None:
        """Log files as the W&B artifact `<kind>-<run id>` of `type` (a new version each time;
        the files stay where they are)."""
        if self.run is None:
            return
        import wandb

        art = wandb.Artifact(f"{kind}-{self.run.id}", type=type,
                             metadata=jsonable(metadata or {}))
        for p in paths:
            art.add_file(str(p), name=Path(p).name)
        self.run.log_artifact(art, aliases=list(aliases or []))

    def watch(self, model: Any, log: str | None, log_freq: int) -> None:
        """wandb.watch: histograms of the gradients and/or parameters every `log_freq` steps
        (log: gradients | parameters | all; None: nothing)."""
        if self.run is not None and log:
            self.run.watch(model, log=log, log_freq=log_freq)

    def rewind(self, step: int) -> int:
        """After a resume from a checkpoint taken at `step`: metrics.jsonl keeps the rows up to
        `step` (those after it, from the part of an epoch the resume redoes, move to
        metrics.discarded.jsonl), and the W&B run gets them again from W&B's own next step on
        (an offline run killed with kill -9 lost what wandb had buffered; an online run has
        the steps the server acknowledged). Returns the number of rows replayed."""
        self._metrics.close()
        path = self.run_dir / "metrics.jsonl"
        keep, drop = [], []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by the kill
                drop.append(line)
                continue
            (drop if row.get("_step", -1) > step else keep).append(line)
        if drop:
            with open(self.run_dir / DISCARDED, "a") as f:
                f.write("".join(line + "\n" for line in drop))
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
        self._metrics = open(path, "a")
        if self.run is None:
            return 0
        first = int(getattr(self.run, "step", 0) or 0)
        replayed = 0
        for line in keep:
            row = json.loads(line)
            s = row.pop("_step", None)
            if s is None or s < first:
                continue  # a table or image reference, or a step W&B already holds
            self.run.log(row, step=s)
            replayed += 1
        return replayed

    def save(self) -> None:
        """Write results.json now."""
        write_json(self.run_dir / "results.json", self.results)


def log_sweep_summary(config: DictConfig, sweep_dir: Path, table: Table, png: Path,
                      failed: int, swept: dict | None = None,
                      lines: list[tuple[str, str, str]] | None = None) -> None:
    """The summary of a multirun as its own W&B run (job_type sweep_summary) in the sweep's
    group: config = the swept keys and their values, tags (the user's, the pipeline, the
    experiment, `sweep_summary`), the table, a live `wandb.plot.line` per (x, y, title) of
    `lines` drawn from the table, the plot (if written) and the number of failed jobs."""
    import wandb

    w = config.get("wandb", None) or {}
    mode = getattr(w.get("mode", "offline"), "value", w.get("mode", "offline"))
    if mode == "disabled":
        return
    pipeline = config.hydra.job.name
    group = w.get("group") or f"{pipeline}-{sweep_dir.name}"
    experiment = OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)
    tags = run_tags(pipeline, {}, w.get("tags"), experiment, "sweep_summary")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with wandb.init(project=w.get("project", "dnnlab"), entity=w.get("entity"),
                            group=group, job_type="sweep_summary", name=f"{group}-summary",
                            tags=tags, dir=str(sweep_dir), mode=mode, reinit="finish_previous",
                            config=jsonable({"sweep": swept or {}, "sweep_dir": str(sweep_dir),
                                             "jobs": len(table.rows), "pipeline": pipeline}),
                            settings=wandb.Settings(console="off", x_disable_stats=True,
                                                    silent=True)) as run:
                wtable = table.to_wandb()
                run.log({table.key: wtable})
                for x, y, title in lines or []:
                    run.log({f"{y}_vs_{x}": wandb.plot.line(wtable, x, y, title=title)})
                if png.exists():
                    run.log({"summary_plot": wandb.Image(str(png))})
                run.summary["failed_jobs"] = failed
    except Exception as e:  # noqa: BLE001 - W&B must never sink a sweep
        print(f"warning: W&B sweep summary not logged: {e}", file=sys.stderr)
