"""A finished study: its account, its best model (or the best ensemble of its best trials, with the beam width and
re-ranking that score best on dev) registered by the registry's champion rule, and Optuna's figures on its parent
run."""
from __future__ import annotations

from captioning.core.tracking import default_tracking_uri, redact
from captioning.serving.registry import promote_best


def summarize(client, parent, study, settings, dataset, uri, seconds, record, storage=None, register=True,
              prepare=None, ensemble=None, decoding=None) -> None:
    """The study's account (`record`: its trials by state, and its complete trials' MLflow runs, best first), then
    the best model (with search.ensemble > 1, the best ensemble of the best trials if one beats the best trial on
    dev: see grow_ensemble; `decoding`: run -> the run of that model with its decoding chosen on dev, unless
    search.decoding_choice is off) registered (captioning/serving/registry.py decides whether it becomes the
    champion)."""
    states, ranked = record
    print(f"\nsearch: {sum(states.values())} trials in study {study} "
          f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}); this run took {seconds:.0f}s")
    if not ranked:
        print("search: no trial completed, so nothing was registered; see the failed runs' error tags in mlflow ui")
        return
    best = client.get_run(ranked[0])
    if register and ensemble is not None and settings.ensemble > 1 and len(ranked) > 1:
        best = grow_ensemble(best, ranked[1:settings.ensemble], ensemble, settings.metric)
    if register and decoding is not None and settings.decoding_choice != "off":
        try:
            best = decoding(best)
        except Exception as exc:  # the best model is registered all the same, with its own decoding
            print(f"search: no decoding choice ({type(exc).__name__}: {exc}); the best model keeps its own")
    from tuning.decoding_choice import describe  # (it imports TensorFlow: not before a search needs it)

    m, params = best.data.metrics, best.data.params
    decoded = describe((int(float(params.get("beam_width", 3))), int(float(params.get("rerank_neighbours", 0))),
                        float(params.get("rerank_weight", 0.5))))
    name = best.data.tags.get("label") or f"trial {best.data.tags.get('trial')}"
    print(f"best: {name} (run {best.info.run_id}): {settings.metric} "
          f"{m[settings.metric]:.4f}")
    print(f"  dev  BLEU-1..4 ({decoded}): " + " ".join(f"{m.get(f'dev_bleu{n}', float('nan')):.4f}"
                                                     for n in range(1, 5)))
    if not register:
        return
    outcome = promote_best(best, settings.registered_model, settings.metric, settings.promote_margin, dataset, study,
                           storage, prepare=prepare, log=print, export=settings.export)
    version, alias = outcome["version"], outcome["alias"]
    client.set_tag(parent, "best_run_id", best.info.run_id)
    client.log_metric(parent, f"best_{settings.metric}", m[settings.metric])
    if outcome["test"]:
        test = outcome["test"]
        print(f"  test BLEU-1..4 ({decoded}; the registered version only): "
              + " ".join(f"{test[f'test_bleu{n}']:.4f}" for n in range(1, 5)))
    print(f"registered: {settings.registered_model} version {version.version} as @{alias} ({outcome['why']})")
    print(f"load it:    mlflow.pyfunc.load_model('models:/{settings.registered_model}@{alias}')")
    if uri.startswith(("http://", "https://")):
        print(f"browse:     open {redact(uri)}")
    elif uri == default_tracking_uri():
        print("browse:     mlflow ui   (in this directory)")
    else:
        print(f"browse:     mlflow ui --backend-store-uri {uri}")


def grow_ensemble(best, candidates: list[str], ensemble, metric: str):
    """Forward selection: the best trial's run is joined by each next-best trial (`candidates`, run ids best first)
    whose addition raises the ensemble's dev `metric`. Returns the run of the best model found: an ensemble (each
    one tried is logged by `ensemble`, trials.TrialRunner.ensemble), or `best` if none beats it."""
    members, value = [best.info.run_id], best.data.metrics[metric]
    for candidate in candidates:
        against = "the best trial" if len(members) == 1 else f"the {best.data.tags['label']}"
        try:
            combined = ensemble(members + [candidate])
        except Exception as exc:  # the best model so far is registered all the same
            print(f"search: no ensemble ({type(exc).__name__}: {exc}); {against} goes on")
            break
        if combined is None or combined.info.run_id == best.info.run_id:  # the candidate was left out (said why)
            continue
        new = combined.data.metrics[metric]
        verdict = "beats" if new > value else "does not beat"
        print(f"search: the {combined.data.tags['label']} {verdict} {against} on {metric} "
              f"({new:.4f} against {value:.4f})")
        if new > value:
            members, value, best = members + [candidate], new, combined
    return best


def log_study_figures(client, parent: str, study, log) -> None:
    """The finished study's optimisation history and hyperparameter importances (Optuna's own plots) on its parent
    run. Importances need two completed trials that differ; without them the run gets a note instead."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as plots

    with warnings.catch_warnings():  # the matplotlib plots are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in (("optimization_history", plots.plot_optimization_history),
                           ("param_importances", plots.plot_param_importances)):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                client.log_text(parent, f"no {name.replace('_', ' ')}: {exc}\n", f"{name}.txt")
                continue
            figure = axes.figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            client.log_figure(parent, figure, f"{name}.png")
            plt.close(figure)
    log("search: the parent run holds the study's optimisation history and parameter importances")
