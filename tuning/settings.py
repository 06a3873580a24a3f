"""Search settings: the experiment file's `search:` section, then command-line options."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from captioning.config import ConfigError, read_experiment
from captioning.core.names import check_name
from captioning.metrics import watched
from captioning.serving.registry import PROMOTE_MARGIN, check_metric, dev_metrics
from tuning.space import Param, parse_space

ENGINES = ("optuna", "keras-tuner")
PRUNERS = ("median", "hyperband", "successive_halving", "none")  # Optuna: how a trial's epochs are cut short
SAMPLERS = ("tpe", "random", "gp", "cmaes")  # Optuna: how values are chosen
TUNERS = ("bayesian", "hyperband")  # Keras Tuner's oracle
DECODING_CHOICES = ("full", "small", "off")  # the grids of tuning/decoding_choice.py, or none
METRICS = dev_metrics()  # the built-in metrics' dev scores (check_metric also takes those registered since)


@dataclasses.dataclass
class SearchSettings:
    space: list[Param]
    engine: str = "optuna"
    trials: int = 8
    timeout: float | None = None  # seconds after which no new trial starts
    budget: float | None = None  # seconds after which a running trial ends with its epoch (and no new trial starts)
    metric: str = "dev_bleu4"
    seed: int = 0
    # The sampler: the one that reached the earlier default's (TPE) final best in half its time in
    # benchmarks/search_efficiency.py (README: "Which sampler and pruner, all on a quiet machine").
    sampler: str = "random"  # tpe: multivariate TPE, conditional keys grouped (constant liar with several workers)
    pruner: str = "median"
    pruner_startup_trials: int = 2  # median: trials that run to the end before pruning starts
    pruner_warmup_epochs: int = 1  # median: epochs of every trial that are never pruned
    # hyperband, successive_halving: the epochs every trial gets (the first rung; dev BLEU-4 says little before 3)
    pruner_min_epochs: int = 3
    pruner_max_epochs: int | None = None  # hyperband: the most a trial gets (default: the base config's, SCST included)
    pruner_reduction: int = 3  # hyperband, successive_halving: 1 in this many trials goes on to the next rung
    tuner: str = "bayesian"  # Keras Tuner: bayesian, or hyperband (whose epochs budget is pruner_max_epochs)
    registered_model: str = "captioner"
    promote_margin: float = PROMOTE_MARGIN  # how much a new model must beat the champion by, in `metric`'s units
    samples: int = 8  # dev images whose captions are logged with every trial
    ensemble: int = 1  # when the study ends: up to the best N complete trials decoded as one model, each next-best
    # trial joining only if it raises the dev metric (search.grow_ensemble)
    # Then: the beam width and consensus re-ranking of the model to register, chosen on dev (tuning/decoding_choice.py;
    # full: 30 settings, small: 6, off: the model's own decoding). Off unless asked for, as the ensemble is: the
    # experiment says what a study spends after its trials (experiments/*.yaml ask for it).
    decoding_choice: str = "off"
    # The version registered carries the model's inference export (OpenVINO IR: it is served and captions without
    # TensorFlow); false: the best model's bundle as it is, decoded through TensorFlow where it is used.
    export: bool = True
    heartbeat_seconds: int = 10  # on a database server: how often a running trial says it is alive
    grace_seconds: int = 60  # ... and how long after its last heartbeat it counts as lost (its worker died)

    @property
    def epoch_metric(self) -> str:
        """The per-epoch dev metric the pruner watches (scored after every epoch, see selection_beam: NLTK BLEU-1..4
        and CIDEr-D; the Java-based and slower metrics are watched through CIDEr-D)."""
        return "dev_" + watched(self.metric)

    def strategy(self, base_epochs: int) -> dict[str, str]:
        """How trials are chosen and cut short, with the budgets, as the study's parent run records it."""
        if self.engine == "keras-tuner":
            if self.tuner == "hyperband":
                return {"sampler": "keras-tuner hyperband", "pruner": f"hyperband brackets(max_epochs="
                        f"{self.pruner_max_epochs or base_epochs}, reduction={self.pruner_reduction})"}
            return {"sampler": "keras-tuner bayesian (Gaussian process)", "pruner": "none"}
        rungs = f"min_epochs={self.pruner_min_epochs}, reduction={self.pruner_reduction}"
        return {"sampler": self.sampler, "pruner": {
            "median": f"median(startup={self.pruner_startup_trials}, warmup_epochs={self.pruner_warmup_epochs})",
            "hyperband": f"hyperband({rungs}, max_epochs={self.pruner_max_epochs or 'auto'})",
            "successive_halving": f"successive_halving({rungs})", "none": "none"}[self.pruner]}


def read_settings(experiment: Path, **options) -> SearchSettings:
    section = dict(read_experiment(experiment).get("search") or {})
    if "space" not in section:
        raise ConfigError(f"{experiment} has no search.space section; see experiments/shapes.yaml for an example")
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"unknown search setting(s) {', '.join(sorted(unknown))} in {experiment}; "
                          f"known: {', '.join(sorted(known))}")
    section["space"] = parse_space(section["space"])
    if isinstance(section.get("decoding_choice"), bool):  # YAML reads a bare `off` (or `on`) as a boolean
        section["decoding_choice"] = "full" if section["decoding_choice"] else "off"
    section.update({k: v for k, v in options.items() if v is not None})
    settings = SearchSettings(**section)
    if settings.engine not in ENGINES:
        raise ConfigError(f"unknown engine {settings.engine!r}; choose one of {', '.join(ENGINES)}")
    check_name(settings.registered_model, "--registered-model (or search.registered_model)", "captioner")
    check_metric(settings.metric, "--metric or search.metric")
    if not (settings.heartbeat_seconds >= 1 and settings.grace_seconds >= 2 * settings.heartbeat_seconds):
        raise ConfigError(f"search.grace_seconds ({settings.grace_seconds}) must be at least twice "
                          f"search.heartbeat_seconds ({settings.heartbeat_seconds}), which must be at least 1")
    if isinstance(settings.promote_margin, bool) or not isinstance(settings.promote_margin, (int, float)) \
            or not settings.promote_margin >= 0:
        raise ConfigError(f"search.promote_margin must be a number >= 0 (in the metric's units), got "
                          f"{settings.promote_margin!r}")
    for key in ("timeout", "budget"):
        value = getattr(settings, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ConfigError(f"--{key} (search.{key}) must be a number of seconds > 0, got {value!r}")
    if settings.budget is not None and (settings.timeout is None or settings.timeout > settings.budget):
        settings.timeout = settings.budget  # no trial starts after the budget either
    if settings.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {settings.trials}")
    if not isinstance(settings.export, bool):
        raise ConfigError(f"search.export must be true or false, got {settings.export!r}")
    if isinstance(settings.ensemble, bool) or not isinstance(settings.ensemble, int) or settings.ensemble < 1:
        raise ConfigError(f"search.ensemble must be a whole number >= 1 (1: no ensemble), got {settings.ensemble!r}")
    _check_engine_choices(settings)
    return settings


def _check_engine_choices(settings: SearchSettings) -> None:
    for key, value, choices in (("sampler", settings.sampler, SAMPLERS), ("pruner", settings.pruner, PRUNERS),
                                ("tuner", settings.tuner, TUNERS), ("decoding_choice", settings.decoding_choice,
                                                                    DECODING_CHOICES)):
        if value not in choices:
            raise ConfigError(f"unknown search.{key} {value!r}; choose one of {', '.join(choices)}")
    needs = {"gp": ("torch", "PyTorch (pip install torch)"), "cmaes": ("cmaes", "the cmaes package")}
    if settings.sampler in needs:
        import importlib.util

        module, what = needs[settings.sampler]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"search.sampler {settings.sampler} needs {what}, which is not installed; choose "
                              f"another of {', '.join(SAMPLERS)}")
    low, high, factor = settings.pruner_min_epochs, settings.pruner_max_epochs, settings.pruner_reduction
    # pruner_min_epochs is Optuna's first rung; Keras Tuner's Hyperband brackets start at one epoch.
    floor, named = (1, "1") if settings.engine == "keras-tuner" else (low, "pruner_min_epochs")
    if not (isinstance(low, int) and low >= 1) or (high is not None and not (isinstance(high, int) and high >= floor)):
        raise ConfigError(f"search.pruner_min_epochs ({low}) must be a whole number >= 1, and pruner_max_epochs "
                          f"({high}) one >= {named}")
    if not (isinstance(factor, int) and factor >= 2):
        raise ConfigError(f"search.pruner_reduction must be a whole number >= 2, got {factor!r}")


def search_identity(settings: SearchSettings) -> dict:
    """What a study searches: each key's space as described, and the metric (recorded when the study is created)."""
    return {"space": {p.name: p.describe() for p in settings.space}, "metric": settings.metric}


def check_same_search(study: str, recorded: dict | None, settings: SearchSettings) -> None:
    """A study resumes only the search it was created for: another space or metric would mix trials of two searches
    in one ranking. One error names every difference. `recorded` None: a new study (or one from before studies
    recorded their search), which takes this one."""
    if recorded is None:
        return
    current = search_identity(settings)
    old, new = recorded.get("space", {}), current["space"]
    changes = [f"{old[k]} is now {new[k]}" for k in old if k in new and old[k] != new[k]]
    changes += [f"{new[k]} is new" for k in new if k not in old]
    changes += [f"{old[k]} is gone" for k in old if k not in new]
    if recorded.get("metric") != current["metric"]:
        changes.append(f"the metric was {recorded.get('metric')}, now {current['metric']}")
    if changes:
        raise ConfigError(f"study {study!r} was created for another search: {'; '.join(changes)}. To resume it, "
                          "keep the space and metric it was created for; for the new ones, start a new study: "
                          "--study NEW_NAME")
