"""The Python API of evaluation: `run_evaluation(...)`, which `kairos evaluate` calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairos.evaluation.data import EvalData, load_eval_data
from kairos.evaluation.protocols import BASELINES, leave_one_out
from kairos.evaluation.push_targeting import TARGETERS as PUSH_TARGETERS
from kairos.evaluation.push_replay import STRATEGIES, push_replay
from kairos.evaluation.push_targeting import push_targeting
from kairos.evaluation.replay import replay, temporal_split

PROTOCOLS = ("loo", "coldstart", "temporal", "replay", "push", "push-replay")


@dataclass
class EvalOptions:
    # None: the protocol's defaults (baselines, semantic, sequential, kairos; push: every
    # targeter; push-replay: every strategy)
    models: list[str] | None = None
    mask_history: str = "both"  # both | yes | no (leave-one-out)
    split: str = "test"  # test | valid (leave-one-out)
    core: int = 0  # keep items, then users, with at least this many events
    max_users: int | None = None
    max_events: int | None = None  # replay: the first K events after the cut
    cut: float = 0.8  # share of events before the cut (temporal, replay, push)
    cold_share: float = 0.1  # coldstart: share of items held out of training
    window_days: float = 7.0  # push
    cold: bool = False  # push: the candidate items' events before the cut removed too
    max_items: int | None = None  # push: a seeded sample of the candidate items
    order: str = "auto"  # push: time | per-user | auto (per-user where timestamps are synthetic)
    decay: bool = True  # replay: serving decay on (popularity, co-visitation)
    refresh: list[float] | None = None  # replay: seconds between batch refreshes of peer baselines
    seed: int = 0
    sequential: dict[str, Any] | None = None  # SeqRecConfig fields over the preset (behaviour model)


def run_evaluation(data: Path | EvalData, protocol: str, options: EvalOptions | None = None,
                   quiet: bool = False) -> tuple[EvalData, list[Any]]:
    """Load the dataset (unless given) and run one protocol; results have to_json()."""
    options = options or EvalOptions()
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    models = options.models or [*BASELINES, "semantic", "sequential", "kairos"]
    if not options.models and protocol in ("loo", "coldstart"):  # these train the ranking model (and ALS)
        models = [*BASELINES, "semantic", "sequential", "als", "fusion", "kairos"]
    dataset = data if isinstance(data, EvalData) else load_eval_data(data, options.core, options.core, quiet)
    if protocol == "loo":
        conventions = {"both": [True, False], "yes": [True], "no": [False]}[options.mask_history]
        return dataset, [leave_one_out(dataset, models, mask, options.split, options.seed,
                                       options.max_users, quiet, sequential=options.sequential)
                         for mask in conventions]
    if protocol == "coldstart":
        conventions = {"both": [True, False], "yes": [True], "no": [False]}[options.mask_history]
        return dataset, [leave_one_out(dataset, models, mask, options.split, options.seed, options.max_users,
                                       quiet, cold_share=options.cold_share, sequential=options.sequential)
                         for mask in conventions]
    if protocol == "temporal":
        return dataset, [temporal_split(dataset, models, options.cut, seed=options.seed, quiet=quiet,
                                        sequential=options.sequential)]
    if protocol == "replay":
        return dataset, [replay(dataset, models, options.cut, options.max_events, options.max_users,
                                options.seed, options.decay, quiet, sequential=options.sequential,
                                refresh=options.refresh)]
    if protocol == "push-replay":
        return dataset, [push_replay(dataset, options.models or list(STRATEGIES), options.cut, options.max_events,
                                     options.seed, quiet, sequential=options.sequential)]
    targeters = options.models or list(PUSH_TARGETERS)
    return dataset, [push_targeting(dataset, targeters, options.cut, options.window_days, cold=options.cold,
                                    max_items=options.max_items, order=options.order,
                                    seed=options.seed, quiet=quiet,
                                    sequential=options.sequential)]


def config_of(dataset: EvalData, path: Path, protocol: str, options: EvalOptions) -> dict[str, Any]:
    return {"dataset": dataset.name, "path": str(path), "protocol": protocol, **options.__dict__,
            "fingerprint": dataset.fingerprint(), **dataset.summary()}
