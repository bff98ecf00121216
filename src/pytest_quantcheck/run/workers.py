"""What a pytest-xdist worker sends the controller at its end, and how the controller takes it
in: the worker's outcomes, steps, plot points, models table rows, notes and, when updating, its
baseline records; the controller's :class:`~pytest_quantcheck.run.outputs.Outputs` then
reports the whole run (baseline records merged once, by ``baseline.merge_documents``).

The outcomes workers share while running (Holm over the whole run) go through
:mod:`pytest_quantcheck.exchange`. No pytest here.
"""

from __future__ import annotations

import json

from pytest_quantcheck.checks import Outcome
from pytest_quantcheck.run.outputs import Outputs, model_rows


def payload(outputs: Outputs) -> str:
    """A worker's payload, as JSON."""
    baseline = (outputs.baseline_payload() if outputs.comparands.baseline_mode == "update"
                else None)
    return json.dumps({"outcomes": [o.to_dict() for o in outputs.decider.outcomes],
                       "baseline": baseline, "points": outputs.points(),
                       "steps": outputs.models.store.steps,
                       "models": model_rows(outputs.models), "notes": outputs.notes},
                      default=str)


def take_in(outputs: Outputs, data: str, worker: str = "worker") -> None:
    """Take in a worker's payload (on the controller)."""
    found = json.loads(data)
    outputs.decider.outcomes.extend(Outcome.from_dict(o) for o in found["outcomes"])
    outputs.models.store.steps.extend(f"[{worker}] {step}" for step in found.get("steps", []))
    # every worker collects every test, so each sends the same collection notices: one each
    for text, red in found.get("notes", []):
        if (text, red) not in outputs.notes:
            outputs.notes.append((str(text), bool(red)))
    outputs.merged_points.update(found.get("points", {}))
    outputs.merged_models.update(found.get("models", {}))
    if found.get("baseline"):
        keys, records = found["baseline"]
        outputs.merged_baselines.append((keys, records))
