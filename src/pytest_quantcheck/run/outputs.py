"""What a run leaves behind: the plot points, the models table, the baseline document (this
process's records and every pytest-xdist worker's, merged once) and file, and the reports; and
the payload a worker sends the controller, and its merge there.

No pytest here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_quantcheck import baseline, report
from pytest_quantcheck.config import Settings
from pytest_quantcheck.demo.task_sets import task_specs
from pytest_quantcheck.metrics.task_answers import Z95
from pytest_quantcheck.models import Models, QuantModel
from pytest_quantcheck.run.comparands import Comparands
from pytest_quantcheck.run.decider import Decider
from pytest_quantcheck.tensor_mix import fallback_notice, identical_notices
from pytest_quantcheck.variants import recipe_chooses

BaselinePayload = tuple[dict[str, Any], dict[str, dict[str, Any]]]  # keys, records by variant


@dataclass(frozen=True)
class ReportPaths:
    """Where the reports of a run go; ``None``: not asked for."""

    json: Path | None = None
    junit: Path | None = None
    markdown: Path | None = None
    plot: Path | None = None
    github: bool = False  # under GitHub Actions: step summary and annotations


def _standard_error(values: Any) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def _around(key: str, value: float, se: float) -> dict[str, float]:
    """A plotted value and its 95 % interval (normal), as ``key``, ``key_low``, ``key_high``."""
    return {key: value, f"{key}_low": value - Z95 * se, f"{key}_high": value + Z95 * se}


def model_rows(models: Models) -> dict[str, dict[str, Any]]:
    """Per model: chunks decoded in this run, taken from the result cache, looked at, the
    seconds its decoding took, the tasks answered, and what its file holds: the tensor
    types (count and bytes of each), one digest of all tensors, and the tensors that fell
    back from the file type's blocks."""
    by_name = models.by_name()
    names = models.names()
    return {name: {"chunks_decoded": models.store.decoded.get(name, 0),
                   "chunks_from_cache": max(0, models.chunks_used(name)
                                            - models.store.decoded.get(name, 0)),
                   "chunks_used": models.chunks_used(name),
                   "seconds": round(models.store.seconds.get(name, 0.0), 3),
                   # tasks answered over all task sets: scored now, or from the cache
                   "tasks_scored": models.tasks_scored.get(name, 0),
                   "tasks_from_cache": max(0, sum(r.n_tasks for r in
                                                  models.tasks_of(name).values())
                                           - models.tasks_scored.get(name, 0)),
                   **(_values_row(models, by_name[name]) if name in by_name else {}),
                   **(_file_row(models, by_name[name]) if name in by_name else {})}
            for name in sorted(names)}


def _values_row(models: Models, model: QuantModel) -> dict[str, Any]:
    """The model's quality numbers on the default text, each with the chunks (tasks) it
    rests on: a model decided early in looks has fewer than one decoded to the end."""
    row: dict[str, Any] = {}
    used = models.chunks_used(model.name)
    if used and models.has_quality(model.name):
        ppl = models.perplexity(model, used)
        row["perplexity"] = {"ppl": ppl.ppl, "ppl_err": ppl.ppl_err, "chunks": ppl.n_chunks}
    if used and models.has_kl(model.name):
        kld = models.kl_divergence(model, used)
        row["kl_divergence"] = {"mean": float(kld.chunk_kld.mean()), "chunks": kld.n_chunks}
    tasks = models.tasks_of(model.name)
    if tasks:
        row["task_accuracy"] = {task: {"accuracy": r.accuracy, "tasks": r.n_tasks}
                                for task, r in tasks.items()}
    return row


def _file_row(models: Models, model: QuantModel) -> dict[str, Any]:
    mix = models.tensor_mix(model)
    return {"file_type": model.file_type, "tensor_types": mix.by_type(),
            "tensor_data_sha256": mix.data_sha256(),
            "fallback": fallback_notice(model.name, model.file_type, mix,
                                        recipe_chooses(
                                            models.store.settings.recipes.get(model.name)))}


@dataclass
class Outputs:
    """The run's outputs, from its models and the decider's outcomes, with what workers sent."""

    settings: Settings
    models: Models
    comparands: Comparands
    decider: Decider
    notes: list[tuple[str, bool]]  # (text, is_error), shown last: the session's
    shard: tuple[int, int] | None = None
    # what pytest-xdist workers sent the controller (run/workers.py takes it in)
    merged_baselines: list[BaselinePayload] = field(default_factory=list)
    merged_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    merged_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    _document: BaselinePayload | None = None

    def baseline_payload(self) -> BaselinePayload | None:
        """Keys and records of every model this process measured, for the baseline file."""
        m = self.models
        measured = m.measured()
        if not measured:
            return None
        records = {}
        for name, model in measured.items():
            has_speed = name in m.timings.speed or name in m.timings.memory_usage
            records[name] = baseline.make_record(
                file_type=model.file_type, size_bytes=model.size_bytes,
                bits_per_weight=model.bits_per_weight,
                # a baseline holds every chunk: a model decided early is decoded to the end
                ppl=m.perplexity(model) if m.has_quality(name) else None,
                kld=m.kl_divergence(model) if m.has_kl(name) else None,
                fingerprint=m.timings.fingerprint() if has_speed else None,
                speed=m.timings.speed.get(name), memory=m.timings.memory_usage.get(name),
                tasks=m.tasks_of(name, complete=True), tensors=m.tensor_mix(model).hashes(),
                texts={t: (m.store.text_keys(t)["text_sha256"], m.perplexity(model, None, t))
                       for t in m.texts_of(name)})
        return m.quality_keys(), records

    # ---- across processes --------------------------------------------------------------------

    def points(self) -> dict[str, dict[str, Any]]:
        """Size, quality and speed of every model measured so far, for the trade-off plots:
        per-chunk NLL and KL divergence as decoded (a model decided early has fewer chunks;
        :func:`report.over_common_chunks` puts every model on the same ones), tokens/s and task
        accuracy with their counts."""
        m = self.models
        out = dict(self.merged_points)
        for name, model in m.measured().items():
            point: dict[str, Any] = {"bits_per_weight": model.bits_per_weight,
                                     "size_bytes": model.size_bytes}
            used = m.chunks_used(name)  # what this run decoded, perhaps stopped early
            if m.has_quality(name):
                point["chunk_nll"] = m.perplexity(model, used).chunk_nll.tolist()
            if m.has_kl(name):
                point["chunk_kld"] = m.kl_divergence(model, used).chunk_kld.tolist()
            speed = m.timings.speed.get(name)
            for phase, result in speed.tests.items() if speed is not None else ():
                point.update(_around(f"{phase}_tokens_per_s", result.mean,
                                     _standard_error(result.samples)))
                point[f"{phase}_repetitions"] = int(result.samples.size)
            for task, scored in m.tasks_of(name).items():
                point[f"{task}_accuracy"] = scored.accuracy
                point[f"{task}_tasks"] = scored.n_tasks
            out[name] = point
        return out

    # ---- the end of the run ------------------------------------------------------------------

    def model_table(self) -> dict[str, dict[str, Any]]:
        """Per model of the run (every worker's): chunks decoded, taken from the result cache,
        looked at, and seconds of decoding."""
        return {**self.merged_models, **model_rows(self.models)}

    def tensor_notes(self) -> list[str]:
        """What llama.cpp wrote that a user should know: variants holding identical tensors,
        and tensors that fell back from the file type's block type."""
        table = self.model_table()
        digests = {name: str(row["tensor_data_sha256"]) for name, row in table.items()
                   if row.get("tensor_data_sha256")}
        return [*identical_notices(digests),
                *(str(row["fallback"]) for _name, row in sorted(table.items())
                  if row.get("fallback"))]

    def cache_note(self) -> str | None:
        """Which models' per-chunk results and task answers came from the result cache, for
        the summary."""
        cached = {name: row for name, row in self.model_table().items()
                  if row["chunks_from_cache"] or row.get("tasks_from_cache")}
        if not cached:
            return None
        parts = []
        for name, row in sorted(cached.items()):
            what = []
            if row["chunks_from_cache"]:
                what.append(f"{row['chunks_from_cache']} of {row['chunks_used']} chunks")
            if row.get("tasks_from_cache"):
                what.append(f"{row['tasks_from_cache']} task answers")
            parts.append(f"{name} ({', '.join(what)})")
        return "results from the cache: " + ", ".join(parts)

    def settings_summary(self) -> dict[str, Any]:
        summary = {k: (str(v) if isinstance(v, Path) else v)
                   for k, v in self.settings.__dict__.items()
                   if k not in ("sources", "bases", "tasks", "recipes")}
        summary["recipes"] = {name: r.describe() for name, r in self.settings.recipes.items()}
        summary["tasks"] = {name: {"file": str(spec.file), "mode": spec.mode, "limit": spec.limit}
                            for name, spec in task_specs(self.settings).items()}
        if self.shard is not None:
            summary["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return summary

    def baseline_document(self) -> BaselinePayload | None:
        """Keys and records of every model measured in the run (this process's and every merged
        worker's), when updating the baseline. Made once, at the end of the run: the baseline
        file and the JSON report both use it, and its keys hash the evaluation text."""
        if self.comparands.baseline_mode != "update":
            return None
        if self._document is None:
            batches = list(self.merged_baselines)
            own = self.baseline_payload()
            if own is not None:
                batches.append(own)
            if not batches:
                return None
            self._document = baseline.merge_documents(batches, self.settings.baseline_runs)
        return self._document

    def write_baseline(self) -> bool:
        """Write the baseline once, from the records of this process and every merged worker,
        when updating; :attr:`notes` say what happened. False if it could not be written."""
        document = self.baseline_document()
        if document is None:
            return True
        keys, records = document
        path = self.comparands.baseline_path()
        try:
            kept_aside = baseline.update(path, keys, records, self.settings.baseline_runs)
        except baseline.BaselineError as exc:  # said plainly, and the run fails; no traceback
            self.notes.append((f"error: {exc}", True))
            return False
        if kept_aside is not None:
            self.notes.append((f"{path} was not a readable baseline; it was moved to {kept_aside}",
                               True))
        self.notes.append((f"baseline written to {path}", False))
        return True

    def _baseline_for_report(self) -> dict[str, Any] | None:
        document = self.baseline_document()
        if document is None:
            return None
        return {"file": self.comparands.baseline_path().name, "keys": document[0], "records": document[1]}

    def write_reports(self, to: ReportPaths) -> list[str]:
        """Write the reports asked for; returns the GitHub annotations to print (each must
        start a line of the log, which only the caller's terminal knows how to ensure)."""
        outcomes = self.decider.outcomes
        texts: dict[Path | None, Callable[[], str]] = {
            to.json: lambda: report.to_json(outcomes, self.settings_summary(),
                                            self._baseline_for_report(), self.model_table()),
            to.markdown: lambda: report.markdown(outcomes, self.model_table(),
                                                 self.tensor_notes())}
        for target, text in texts.items():
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text())
        if to.junit is not None:
            report.write_junit(to.junit, outcomes)
        points = self.points()
        if to.plot is not None and points:
            report.plot_tradeoffs(to.plot, report.over_common_chunks(points),
                                  report.verdicts(outcomes))
        if to.github and outcomes:
            summary = os.environ.get("GITHUB_STEP_SUMMARY")
            if summary:
                with open(summary, "a", encoding="utf-8") as f:
                    f.write(report.markdown(outcomes, self.model_table(), self.tensor_notes()))
            return report.github_annotations(outcomes)
        return []
