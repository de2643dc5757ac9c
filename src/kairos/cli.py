"""`kairos ...`: the command line, driving the same Engine as the API."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kairos.config import Settings
from kairos.engine import Engine
from kairos.progress import progress

app = typer.Typer(help="Kairos: real-time personalized recommendation and push.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
import_app = typer.Typer(help="Import a dataset or a file into the store.", no_args_is_help=True)
app.add_typer(import_app, name="import")
push_app = typer.Typer(help="Push: preview, send and follow notifications; fit the calibration.",
                       no_args_is_help=True)
app.add_typer(push_app, name="push")
experiments_app = typer.Typer(help="A/B experiments on the served list, through the running server.",
                              no_args_is_help=True)
app.add_typer(experiments_app, name="experiments")
keys_app = typer.Typer(help="API keys: create (shown once, stored hashed), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()

DbOption = Annotated[
    Path | None, typer.Option("--db", help="SQLite database (default: KAIROS_DB_PATH or kairos.db).")
]


def _settings(db: Path | None) -> Settings:
    return Settings(db_path=db) if db is not None else Settings()


def open_engine(settings: Settings) -> Engine:
    """Open the store and rebuild online state, with a progress bar."""
    from kairos.store import open_store

    store = open_store(settings)
    total = store.count_events()
    engine = Engine(settings, store=store, rebuild=False)
    with progress("rebuilding state", total, quiet=total < 100_000) as advance:
        engine.rebuild_state(advance)
    return engine


def open_for_import(db: Path | None, append: bool) -> Engine:
    """An engine to import into; refuses a store that already holds events unless
    --append, because importing the same file twice would count every event twice."""
    engine = open_engine(_settings(db))
    if not append and engine.stats()["events"]:
        engine.close()
        console.print(f"[red]error:[/] {engine.settings.db_path} already holds events; "
                      "pass --append to add to them, or choose another --db")
        raise typer.Exit(1)
    return engine


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {error}")
    return typer.Exit(1)


AppendOption = Annotated[bool, typer.Option("--append", help="Add to a store that already holds events.")]


def _serve(engine: Engine, host: str, port: int) -> None:
    """One process serving `engine`."""
    import uvicorn

    from kairos.api import create_app
    from kairos.api.protocol import http_protocol
    from kairos.api.workers import ready_to_serve

    _warn_if_open(engine.settings, host)
    ready_to_serve(engine)
    stats = engine.stats()
    console.print(
        f"[bold green]Kairos[/] serving {stats['items']:,} items, {stats['users']:,} users, "
        f"{stats['events']:,} events (state rebuilt in {stats['rebuild_seconds']:.1f}s) "
        f"on http://{host}:{port}  (API docs: http://{host}:{port}/docs)"
    )
    uvicorn.run(create_app(engine, owns_engine=True), host=host, port=port, log_level="warning",
                http=http_protocol())


def _serve_processes(settings: Settings, host: str, port: int, workers: int) -> None:
    """`workers` processes over one database: each opens its own engine and follows the
    log (api/workers.py). This process only supervises: it opens no engine of its own."""
    import uvicorn

    from kairos.api import supervisor
    from kairos.api.protocol import http_protocol
    from kairos.store import open_store

    _warn_if_open(settings, host)
    store = open_store(settings)  # migrated once, here
    events = store.count_events()
    store.close()
    if settings.semantic_enabled:
        from kairos.text.encoder import prepare_encoder

        prepare_encoder(settings)  # exported once, not by every process at once
    # The processes read their settings from the environment, this database included.
    os.environ["KAIROS_DB_PATH"] = str(Path(settings.db_path).resolve())
    console.print(f"[bold green]Kairos[/] serving {settings.db_path} ({events:,} events) in {workers} processes "
                  f"on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    supervisor.serve(uvicorn.Config("kairos.api.workers:worker_app", factory=True, workers=workers, host=host,
                                     port=port, log_level="warning", http=http_protocol()))


def _warn_if_open(settings: Settings, host: str) -> None:
    if not _keys_configured(settings) and host not in LOOPBACK:
        logging.getLogger("kairos").warning(
            "serving on %s without API keys: anyone who reaches it may write events and delete users "
            "(set KAIROS_API_KEYS or run `kairos keys create`)", host)


def _workers(option: int | None, settings: Settings) -> int:
    chosen = option if option is not None else settings.workers
    return chosen if chosen > 0 else (os.cpu_count() or 1)


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _keys_configured(settings: Settings) -> bool:
    from kairos.api.auth import KeyFile

    return bool(settings.api_keys.strip()) or KeyFile(settings.keys_path()).exists


@app.command()
def prepare() -> None:
    """Export and quantise the text model into the user's cache folder (KAIROS_TEXT_CACHE_DIR),
    once per machine: `make setup` runs it, and a server does it before it answers."""
    from kairos.text.encoder import prepare_encoder

    settings = Settings()
    if not settings.semantic_enabled:
        console.print("the language-model layer is off (KAIROS_SEMANTIC_ENABLED=false): nothing to prepare")
        return
    encoder, seconds = prepare_encoder(settings)
    console.print(f"[green]text model ready[/] {encoder.model_id} in {settings.text_cache_dir} ({seconds:.1f}s)")


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Processes serving the database, each following its log (default: KAIROS_WORKERS, "
             "else one per CPU core).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    settings = _settings(db)
    processes = _workers(workers, settings)
    if processes > 1:
        _serve_processes(settings, host or settings.host, port or settings.port, processes)
        return
    _serve(open_engine(settings), host or settings.host, port or settings.port)


@import_app.command("movielens")
def import_movielens_command(
    path: Annotated[Path, typer.Argument(help="Folder of a MovieLens release (100K, 1M, 10M, latest).")],
    db: DbOption = None,
    append: AppendOption = False,
) -> None:
    """Import MovieLens: ratings become `rating` events, movies items, users users."""
    from kairos.datasets.movielens import import_movielens

    engine = open_for_import(db, append)
    try:
        report = import_movielens(engine, path)
    except (ValueError, OSError) as error:
        raise _fail(error) from None
    console.print(f"[green]imported[/] {report}")
    engine.close()


@import_app.command("events")
def import_events_command(
    file: Annotated[Path, typer.Argument(help="CSV (with a header) or JSON Lines of events.")],
    db: DbOption = None,
    append: AppendOption = False,
) -> None:
    """Import events (columns/keys as in POST /v1/events)."""
    from kairos.datasets.files import import_events_file

    engine = open_for_import(db, append)
    try:
        count = import_events_file(engine, file)
    except (ValueError, OSError) as error:
        raise _fail(error) from None
    console.print(f"[green]imported[/] {count:,} events")
    engine.close()


@import_app.command("items")
def import_items_command(
    file: Annotated[Path, typer.Argument(help="CSV (with a header) or JSON Lines of items.")],
    db: DbOption = None,
) -> None:
    """Import items (fields as in PUT /v1/items/{item_id}, plus item_id)."""
    from kairos.datasets.files import import_items_file

    engine = open_engine(_settings(db))
    try:
        count = import_items_file(engine, file)
    except (ValueError, OSError) as error:
        raise _fail(error) from None
    console.print(f"[green]imported[/] {count:,} items")
    engine.close()


@app.command()
def recommend(
    user_id: Annotated[str, typer.Argument(help="The user to recommend for.")],
    n: Annotated[int, typer.Option("-n", help="How many items.")] = 10,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    db: DbOption = None,
) -> None:
    """Print recommendations for a user, as the API would serve them."""
    from kairos.pseudonyms import Pseudonyms

    engine = open_engine(_settings(db))
    result = engine.recommend(Pseudonyms(engine.settings.pseudonymise_key).user(user_id), n, category=category)
    table = Table(title=f"Recommendations for {user_id} ({result.model_version})")
    for column in ("#", "item_id", "title", "score", "sources", "reason"):
        table.add_column(column)
    for rank, item in enumerate(result.items, 1):
        table.add_row(str(rank), item.item_id, item.title, f"{item.score:.4f}", ", ".join(item.sources),
                      item.reason)
    console.print(table)
    engine.close()


@app.command()
def pseudonym(user_id: Annotated[str, typer.Argument(help="A user id of the platform.")]) -> None:
    """The id Kairos keeps for this user under KAIROS_PSEUDONYMISE_KEY (what notifications
    sent by webhook or email carry), for the platform to match them to its users."""
    from kairos.pseudonyms import Pseudonyms

    settings = Settings()
    if not settings.pseudonymise_key:
        console.print("[yellow]KAIROS_PSEUDONYMISE_KEY is not set: user ids are kept as they are[/]")
    print(Pseudonyms(settings.pseudonymise_key).user(user_id))


@app.command()
def stats(db: DbOption = None) -> None:
    """Counts of items, users and events in a database."""
    engine = open_engine(_settings(db))
    for key, value in engine.stats().items():
        console.print(f"{key}: {value}")
    engine.close()


def _config_overrides(config: str | None, assignments: list[str] | None) -> dict[str, Any]:
    """--config '{"width": 128}' and --set width=128 (values as JSON, else strings)."""
    import json

    overrides: dict[str, Any] = {}
    if config:
        try:
            overrides.update(json.loads(config))
        except json.JSONDecodeError as error:
            raise typer.BadParameter(f"not JSON: {error}", param_hint="--config") from None
        if not isinstance(overrides, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--config")
    for assignment in assignments or []:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{assignment!r} is not FIELD=VALUE", param_hint="--set")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


@app.command()
def train(
    db: DbOption = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model registry (default: <db>.models).")] = None,
    preset: Annotated[str | None, typer.Option(help="auto, long (MovieLens-like) or short (Amazon-like).")]
    = None,
    config: Annotated[str | None, typer.Option(help="SeqRecConfig fields as JSON, over the preset.")] = None,
    assign: Annotated[list[str] | None, typer.Option("--set", help="One SeqRecConfig field, FIELD=VALUE.")]
    = None,
    publish_model: Annotated[bool, typer.Option("--publish/--no-publish",
                                                help="Make it the served version (a running server "
                                                     "swaps to it within KAIROS_MODEL_POLL_S).")] = True,
    json_lines: Annotated[bool, typer.Option("--json", help="Progress as JSON lines on stdout.")] = False,
    model: Annotated[str, typer.Option("--model", help="sequential (the behaviour model), ranker (the learned "
                                                       "ranker, fitted fusion weights and ALS, for the served "
                                                       "behaviour model) or llm (LoRA adapters of the local "
                                                       "language model, to re-rank).")]
    = "sequential",
) -> None:
    """Train the sequential behaviour model (or, with --model ranker, what orders the
    served list; with --model llm, fine-tune the local language model) on the event log
    and publish a new version."""
    import json

    from kairos.models import EpochReport
    from kairos.training.pipeline import (
        NotEnoughData,
        publish,
        registry,
        train_from_store,
    )

    settings = _settings(db)
    updates: dict[str, Any] = {}
    if model not in ("sequential", "ranker", "llm"):
        raise typer.BadParameter("sequential, ranker or llm", param_hint="--model")
    if model_dir is not None:
        updates["model_dir"] = model_dir
    if preset is not None:
        if preset not in ("auto", "long", "short"):
            raise typer.BadParameter("one of auto, long, short", param_hint="--preset")
        updates["sequential_preset"] = preset
    settings = settings.model_copy(update=updates)
    overrides = _config_overrides(config, assign)
    if model == "llm":
        _train_llm(settings, overrides, publish_model, json_lines)
        return
    if model == "ranker":
        _train_ranker(settings, publish_model, json_lines)
        return
    engine = Engine(settings, rebuild=False)  # the store and the embedding caches, no online state

    def report(r: EpochReport) -> None:
        line = {"epoch": r.epoch, "epochs": r.epochs, "loss": round(r.loss, 5),
                "valid_ndcg10": round(r.valid_ndcg10, 5), "valid_hr10": round(r.valid_hr10, 5),
                "best_epoch": r.best_epoch, "seconds": round(r.seconds, 2), "elapsed": round(r.elapsed, 1),
                "eta_seconds": round(r.eta_seconds, 1)}
        if json_lines:
            print(json.dumps(line), flush=True)
        else:
            console.print(f"epoch {r.epoch}: loss {r.loss:.4f}, valid NDCG@10 {r.valid_ndcg10:.4f} "
                          f"HR@10 {r.valid_hr10:.4f} (best epoch {r.best_epoch}), {r.seconds:.1f}s, "
                          f"at most {r.eta_seconds:.0f}s left")

    try:
        run = train_from_store(engine.store, settings,
                               engine.semantic.embed if engine.semantic is not None else None,
                               report, overrides, quiet=json_lines)
    except (NotEnoughData, ValueError, TypeError) as error:
        engine.close()
        raise _fail(error) from None
    metrics = {k: v for k, v in run.model.metrics.items() if k != "history"}
    if publish_model:
        path = publish(run, registry(settings, engine.store_path()))
        where = f"published to {path}"
    else:
        where = "not published (--no-publish)"
    engine.close()
    if json_lines:
        print(json.dumps({"published" if publish_model else "trained": run.model.version, "metrics": metrics}),
              flush=True)
    else:
        validated = (f"valid NDCG@10 {metrics['valid_ndcg10']:.4f}, HR@10 {metrics['valid_hr10']:.4f}, "
                     f"best epoch {metrics['best_epoch']}" if metrics.get("valid_ndcg10") is not None
                     else f"{metrics['epochs_run']} epochs without validation")
        console.print(f"[green]trained[/] {run.model.version} ({run.preset} preset, "
                      f"{run.model.training_seconds:.0f}s): {validated}; {where}")


def _train_ranker(settings: Settings, publish_model: bool, json_lines: bool) -> None:
    import json

    from kairos.training.ranking import train_ranking_for

    engine = Engine(settings)  # the online state too: the ranker's features are read from it
    try:
        ranking = train_ranking_for(engine, quiet=json_lines, publish=publish_model, install=False)
    finally:
        engine.close()
    summary = {"mode": ranking.mode, "examples": ranking.report.get("examples"),
               "held_out_ndcg@10_in_pool": ranking.report.get("held_out_ndcg@10_in_pool"),
               "sequential_version": ranking.sequential_version,
               "training_seconds": ranking.report.get("training_seconds")}
    if json_lines:
        print(json.dumps({"published" if publish_model else "trained": ranking.version, "ranking": summary}),
              flush=True)
    else:
        console.print(f"[green]trained[/] {ranking.version}: {ranking.mode} from {summary['examples']} users' "
                      f"next events, held-out NDCG@10 in the pool {summary['held_out_ndcg@10_in_pool']}, "
                      f"{summary['training_seconds']}s; "
                      + ("published" if publish_model else "not published (--no-publish)"))


def _train_llm(settings: Settings, overrides: dict[str, Any], publish_model: bool, json_lines: bool) -> None:
    import dataclasses
    import json

    from kairos.llm.backend import ModelUnavailable
    from kairos.llm.finetune import FinetuneConfig, train_adapter

    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = (set(overrides) | set(settings.llm_finetune)) - known
    if unknown:
        raise typer.BadParameter(f"unknown fields {sorted(unknown)}; known: {', '.join(sorted(known))}",
                                 param_hint="--set")
    engine = Engine(settings)  # the online state: examples read users' sequences and served lists
    try:
        report = train_adapter(engine, FinetuneConfig(**{**settings.llm_finetune, **overrides}), quiet=json_lines,
                               publish=publish_model)
    except (ModelUnavailable, ValueError) as error:
        raise _fail(error) from None
    finally:
        engine.close()
    if json_lines:
        print(json.dumps({"published" if publish_model else "trained": report["version"],
                          **{k: report[k] for k in ("held_out_letter_accuracy_before",
                                                    "held_out_letter_accuracy_after", "chance")}}), flush=True)
    else:
        console.print(f"[green]fine-tuned[/] {report['version']} on {report['train_examples']} examples "
                      f"({report['seconds']:.0f}s): held-out letter accuracy "
                      f"{report['held_out_letter_accuracy_before']:.3f} -> "
                      f"{report['held_out_letter_accuracy_after']:.3f} (chance {report['chance']:.3f}); "
                      + (f"published to {report['path']}" if publish_model else "not published (--no-publish)"))


@app.command()
def models(
    db: DbOption = None,
    activate: Annotated[str | None, typer.Option(help="Serve this version (a rollback); a running "
                                                      "server swaps to it.")] = None,
) -> None:
    """The versions in the model registry; the current one is served."""
    from kairos.training.pipeline import registry

    target = registry(_settings(db))
    if activate is not None:
        try:
            target.activate(activate)
        except FileNotFoundError as error:
            raise _fail(error) from None
    current = target.current_version()
    table = Table(title=f"Models in {target.root}")
    for column in ("version", "created", "valid NDCG@10", "valid HR@10", "training s", "served"):
        table.add_column(column)
    for entry in target.versions():
        metrics = entry["metrics"]
        table.add_row(entry["version"], entry["created_at"] or "", f"{metrics.get('valid_ndcg10') or 0:.4f}",
                      f"{metrics.get('valid_hr10') or 0:.4f}", f"{entry['training_seconds'] or 0:.0f}",
                      "yes" if entry["version"] == current else "")
    console.print(table)


@app.command()
def demo(
    db: Annotated[Path, typer.Option("--db", help="Database for the demo.")] = Path("kairos-demo.db"),
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 500,
    items: Annotated[int, typer.Option(help="Synthetic items.")] = 600,
    events: Annotated[int, typer.Option(help="Synthetic events.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 7,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve afterwards.")] = True,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int | None, typer.Option(help="Serving processes (default: one per CPU core).")] = None,
) -> None:
    """Generate a synthetic catalogue and behaviour (deterministic by seed), import, serve."""
    from kairos.datasets.demo import DemoConfig, import_demo

    settings = Settings(db_path=db)
    engine = open_engine(settings)
    if engine.stats()["events"] == 0:
        report = import_demo(engine, DemoConfig(n_users=users, n_items=items, n_events=events, seed=seed))
        console.print(f"[green]demo data[/] {report}")
    else:
        console.print(f"[yellow]{db} already holds data; serving it (delete the file for a fresh demo)[/]")
    processes = _workers(workers, settings)
    if serve_after and processes > 1:
        engine.close()
        _serve_processes(settings, host, port, processes)
    elif serve_after:
        _serve(engine, host, port)
    else:
        engine.close()


def _seconds(text: str, option: str) -> float:
    """'90', '30m', '1h', '2d' -> seconds."""
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration such as 1h or 24h", param_hint=option) from None
    if value <= 0:
        raise typer.BadParameter(f"{text!r} must be positive", param_hint=option)
    return value


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (MovieLens, UniSRec) or a Kairos .db.")],
    protocol: Annotated[str, typer.Option(help="loo, coldstart, temporal, replay, push or push-replay.")] = "loo",
    models: Annotated[str | None, typer.Option(help="Comma-separated (default: random, popular, covisit, "
                                                    "semantic, kairos; push: random, active, category, "
                                                    "covisit, semantic, sequential, kairos; push-replay: "
                                                    "kairos, popular, no-policy; loo also: "
                                                    "kairos+llm-rerank, kairos+llm-generate, "
                                                    "kairos+llm-rerank-tuned).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for results.json, report.md, plots.")] = Path("runs/eval"),
    mask_history: Annotated[str, typer.Option(help="loo: both, yes (LlamaRec) or no (RecBole/UniSRec).")]
    = "both",
    split: Annotated[str, typer.Option(help="loo: test or valid.")] = "test",
    core: Annotated[int, typer.Option(help="Keep items, then users, with at least this many events.")] = 0,
    max_users: Annotated[int | None, typer.Option(help="Evaluate a seeded sample of users.")] = None,
    max_events: Annotated[int | None, typer.Option(help="replay: only the first K events after the cut.")]
    = None,
    cut: Annotated[float, typer.Option(help="temporal/replay/push: share of events before the cut.")] = 0.8,
    window_days: Annotated[float, typer.Option(help="push: days in which a notified user must act.")] = 7.0,
    cold: Annotated[bool, typer.Option("--cold", help="push: the candidate items' events before the cut are "
                                                      "removed too (brand-new items, known by text).")] = False,
    max_items: Annotated[int | None, typer.Option(help="push: a seeded sample of the candidate items.")] = None,
    order: Annotated[str, typer.Option(help="push: time (a global cut and a window), per-user (each user's "
                                            "own cut, the rest of their sequence), or auto (per-user where "
                                            "timestamps are synthetic).")] = "auto",
    cold_share: Annotated[float, typer.Option(help="coldstart: share of items held out of training.")] = 0.1,
    decay: Annotated[bool, typer.Option("--decay/--no-decay", help="replay: serving time decay.")] = True,
    refresh: Annotated[str | None, typer.Option(help="replay: peers refreshed in batches at these intervals, "
                                                     "e.g. 1h,24h (s, m, h, d).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    sequential_config: Annotated[str | None, typer.Option(
        help="Behaviour model: SeqRecConfig fields as JSON over the preset, e.g. '{\"epochs\": 5}'.")] = None,
) -> None:
    """Measure models through the serving Engine; print tables, write a report and plots.
    Models that read the sequential source train the behaviour model on the protocol's
    training events first (as `kairos train` does)."""
    import sys

    from kairos.evaluation.report import print_result, write_outputs
    from kairos.evaluation.run import EvalOptions, config_of, run_evaluation

    if mask_history not in ("both", "yes", "no"):
        raise typer.BadParameter("one of both, yes, no", param_hint="--mask-history")
    options = EvalOptions(
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None, mask_history=mask_history, split=split,
        core=core, max_users=max_users, max_events=max_events, cut=cut, window_days=window_days,
        cold=cold, max_items=max_items, order=order, cold_share=cold_share,
        refresh=[_seconds(r, "--refresh") for r in refresh.split(",") if r.strip()] if refresh else None,
        decay=decay, seed=seed, sequential=_config_overrides(sequential_config, None) or None,
    )
    try:
        dataset, results = run_evaluation(data, protocol, options)
    except (ValueError, OSError) as error:
        raise _fail(error) from None
    for result in results:
        print_result(result, console)
    config = {**config_of(dataset, data, protocol, options), "command": " ".join(["kairos", *sys.argv[1:]])}
    written = write_outputs(results, out, config, dataset.notes)
    console.print(f"[green]wrote[/] {', '.join(str(p) for p in written)}")


# -- push ----------------------------------------------------------------------------------

UrlOption = Annotated[str | None, typer.Option("--url", help="The running server (default: "
                                                           "http://KAIROS_HOST:KAIROS_PORT).")]


def _api(url: str | None) -> Any:
    import httpx

    settings = Settings()
    base = url or f"http://{settings.host}:{settings.port}"
    key = os.environ.get("KAIROS_API_KEY")  # the key this command line calls with, if the server wants one
    return httpx.Client(base_url=base, timeout=30.0, headers={"Authorization": f"Bearer {key}"} if key else None)


def _call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as error:
        raise _fail(RuntimeError(f"no Kairos server at {client.base_url} ({error}); start one with "
                                 "`kairos serve` or pass --url")) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise _fail(RuntimeError(f"{response.status_code}: {message}"))
    return response.json()


@push_app.command("preview")
def push_preview(
    item_id: Annotated[str, typer.Argument(help="The item to notify about.")],
    n: Annotated[int, typer.Option("-n", help="How many users.")] = 20,
    url: UrlOption = None,
) -> None:
    """Who would be notified about an item, with p and reason. Nothing is sent."""
    with _api(url) as client:
        rows = _call(client, "GET", "/v1/push/preview", params={"item_id": item_id, "n": n})
    table = Table(title=f"Who would hear about {item_id}")
    for column in ("#", "user_id", "p", "policy", "channel", "reason"):
        table.add_column(column)
    for rank, row in enumerate(rows, 1):
        table.add_row(str(rank), row["user_id"], f"{row['p']:.4f}", row["decision"], row["channel"] or "",
                      row["reason"])
    console.print(table)


@push_app.command("send")
def push_send(
    item_ids: Annotated[list[str], typer.Argument(help="The item (or items: each user gets their best).")],
    campaign_id: Annotated[str | None, typer.Option("--id", help="Campaign id (sending it again changes "
                                                                 "nothing).")] = None,
    max_users: Annotated[int | None, typer.Option(help="Notify at most this many users.")] = None,
    min_p: Annotated[float | None, typer.Option(help="Only users at least this likely to engage.")] = None,
    user: Annotated[list[str] | None, typer.Option("--user", help="Exactly these users (repeatable).")] = None,
    send_time: Annotated[str, typer.Option(help="now, optimal, or epoch seconds / ISO time.")] = "now",
    title: Annotated[str | None, typer.Option(help="Default: the item's title.")] = None,
    body: Annotated[str | None, typer.Option(help="Default: the item's text.")] = None,
    url: UrlOption = None,
) -> None:
    """Send a campaign through the running server: it picks and ranks the audience."""
    request: dict[str, Any] = {"audience": {}, "send_time": send_time}
    request["item_id" if len(item_ids) == 1 else "item_ids"] = item_ids[0] if len(item_ids) == 1 else item_ids
    for key, value in (("id", campaign_id), ("title", title), ("body", body)):
        if value is not None:
            request[key] = value
    if user:
        request["audience"]["user_ids"] = user
    if max_users is not None:
        request["audience"]["max_users"] = max_users
    if min_p is not None:
        request["audience"]["min_p"] = min_p
    with _api(url) as client:
        campaign = _call(client, "POST", "/v1/push/campaigns", json=request)
    console.print(f"[green]campaign[/] {campaign['id']} ({campaign['state']}): {campaign['counts']}"
                  + (f", not sent: {campaign['suppressed']}" if campaign["suppressed"] else ""))


@push_app.command("status")
def push_status(
    campaign_id: Annotated[str | None, typer.Option("--campaign", help="One campaign's counts.")] = None,
    url: UrlOption = None,
) -> None:
    """Counts by status and suppression reason, latencies, open and click rates."""
    import json

    with _api(url) as client:
        found = _call(client, "GET", f"/v1/push/campaigns/{campaign_id}" if campaign_id else "/v1/push/stats")
    console.print_json(json.dumps(found))


@push_app.command("calibrate")
def push_calibrate(
    db: DbOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Fit the map from targeting scores to p on the event log (a server picks it up)."""
    from kairos.push.calibration import describe, fit_calibration
    from kairos.push.database import open_push_database, set_meta

    settings = _settings(db)
    engine = Engine(settings, rebuild=False)
    try:
        registry = engine.model_registry()
        version = registry.current_version()
        registered = registry.load(version) if version else None
        calibrator = fit_calibration(engine.store, settings, registered, quiet=quiet)
    except ValueError as error:
        engine.close()
        raise _fail(error) from None
    try:  # the map for brand-new items: a log too small for it keeps the warm one for them
        calibrator.cold = fit_calibration(engine.store, settings, registered, quiet=quiet, cold=True)
    except ValueError as error:
        if not quiet:
            console.print(f"[yellow]no cold map[/] ({error}): new items use the same one")
    push_db = open_push_database(settings, engine.store_path())
    with push_db.transaction() as connection:
        set_meta(connection, "calibration", calibrator.to_json())
    push_db.close()
    engine.close()
    if not quiet:
        summary = describe(calibrator)
        for name, part in (("calibrated", summary), ("cold map", summary.get("cold"))):
            if part is not None:
                console.print(f"[green]{name}[/] on {part['items']} items, {part['positives']} positives: "
                              f"{part['model']}, held-out AUC {part['held_out_auc'] or float('nan'):.3f}, "
                              f"log loss {part['held_out_log_loss']:.4f}, base rate {part['base_rate']:.5f}")


@experiments_app.command("list")
def experiments_list(url: UrlOption = None) -> None:
    """Every experiment, newest first, with its status and winner."""
    with _api(url) as client:
        found = _call(client, "GET", "/v1/experiments")["experiments"]
    for experiment in found:
        arms = ", ".join(f"{arm['name']} {arm['traffic']:.0%}" for arm in experiment["arms"])
        console.print(f"{experiment['id']}: {experiment['status']} ({arms}; {experiment['metric']})"
                      + (f", winner {experiment['winner']}" if experiment["winner"] else ""))
    if not found:
        console.print("no experiments")


@experiments_app.command("create")
def experiments_create(
    spec: Annotated[str, typer.Argument(help="The experiment as JSON, or @file.json: "
                                             '{"id", "arms": [{"name", "config", "traffic"}], "metric"}')],
    url: UrlOption = None,
) -> None:
    """Start an experiment (one runs at a time)."""
    import json

    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(ValueError(f"the experiment is not JSON: {error}")) from None
    with _api(url) as client:
        created = _call(client, "POST", "/v1/experiments", json=body)
    console.print(f"[green]running[/] {created['id']}: " + ", ".join(a["name"] for a in created["arms"]))


@experiments_app.command("show")
def experiments_show(experiment_id: str, url: UrlOption = None) -> None:
    """Per arm: users, requests, impressions, conversions, rate [95%], the difference
    from the first arm [95%] with its p-value; and the sample-ratio check."""
    from rich.table import Table

    with _api(url) as client:
        report = _call(client, "GET", f"/v1/experiments/{experiment_id}")
    table = Table(title=f"{report['id']} ({report['status']}, {report['metric']})")
    for column in ("arm", "users", "requests", "impressions", report["metric"] + "s", "rate [95%]",
                   f"vs {report['control']} [95%]", "p"):
        table.add_column(column)
    for arm in report["arms"]:
        versus = arm.get("vs_" + report["control"])
        table.add_row(arm["name"], str(arm["users"]), str(arm["requests"]), str(arm["impressions"]),
                      str(arm["conversions"]), f"{arm['rate']:.4f} [{arm['rate_low']:.4f}, {arm['rate_high']:.4f}]",
                      f"{versus['diff']:+.4f} [{versus['low']:+.4f}, {versus['high']:+.4f}]" if versus else "",
                      f"{versus['p_value']:.3g}" if versus else "")
    console.print(table)
    ratio = report["sample_ratio"]
    console.print(("[red]sample-ratio mismatch[/]" if ratio["mismatch"] else "sample ratio ok")
                  + f" (p = {ratio['p_value']:.3g})" + (f"; winner {report['winner']}" if report["winner"] else ""))


@experiments_app.command("stop")
def experiments_stop(
    experiment_id: str,
    winner: Annotated[str | None, typer.Option(help="An arm whose config every request gets from now on.")] = None,
    url: UrlOption = None,
) -> None:
    """Stop assigning users; optionally promote the winning arm."""
    with _api(url) as client:
        stopped = _call(client, "POST", f"/v1/experiments/{experiment_id}/stop", json={"winner": winner})
    console.print(f"[green]stopped[/] {stopped['id']}" + (f", promoted {winner}" if winner else ""))


@app.command("push-worker")
def push_worker(db: DbOption = None) -> None:
    """Deliver due notifications (more capacity beside `kairos serve`, or its only
    deliverer with KAIROS_PUSH_INLINE_WORKER=false). Stops on Ctrl-C or SIGTERM."""
    import signal
    import threading

    from kairos.clock import WallClock
    from kairos.push.channels import EmailChannel, InboxChannel, WebhookChannel
    from kairos.push.database import open_push_database
    from kairos.push.outbox import Outbox
    from kairos.push.worker import DeliveryWorker
    from kairos.store import open_store

    settings = _settings(db)
    clock = WallClock()
    push_db = open_push_database(settings, settings.db_path)
    store = open_store(settings)

    def address(user_id: str) -> str | None:
        record = store.get_user(user_id)
        email = record.attributes.get("email") if record is not None else None
        return email if isinstance(email, str) and "@" in email else None

    channels = {"webhook": WebhookChannel(push_db, settings, clock), "email": EmailChannel(settings, clock, address),
                "inbox": InboxChannel()}
    worker = DeliveryWorker(Outbox(push_db), settings, clock, channels)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    console.print(f"[bold green]Kairos push worker[/] {worker.name} delivering from {push_db.path or 'PostgreSQL'}")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    worker.stop()
    console.print(f"delivered {worker.delivered:,} notifications")
    store.close()
    push_db.close()


def main() -> None:
    # Our own notes at INFO; libraries (onnxruntime's quantiser writes hundreds of INFO
    # lines) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kairos").setLevel(logging.INFO)
    app()


__all__ = ["app", "main"]


# -- keys ----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option("--scope", help="read, ingest, admin, or several joined by '+'.")],
    name: Annotated[str, typer.Option(help="What the key is for (shown by `kairos keys list`).")] = "",
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key and its row as JSON.")] = False,
) -> None:
    """Create an API key. It is printed once; only its SHA-256 is stored (KAIROS_KEYS_FILE,
    default <db>.keys.json), and a running server accepts it within a second."""
    import json

    from kairos.api.auth import KeyFile

    try:
        key, row = KeyFile(_settings(db).keys_path()).create(scope, name)
    except ValueError as error:
        raise _fail(error) from None
    if as_json:
        typer.echo(json.dumps({"key": key, **{k: v for k, v in row.items() if k != "sha256"}}))
        return
    console.print(f"[green]created[/] key {row['id']} ({'+'.join(row['scopes'])}); it is not shown again:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """The stored keys: id, scopes, name, creation time (never the keys)."""
    import datetime

    from kairos.api.auth import KeyFile

    table = Table("id", "scopes", "name", "created")
    for row in KeyFile(_settings(db).keys_path()).rows():
        created = datetime.datetime.fromtimestamp(row["created_at"], datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        table.add_row(row["id"], "+".join(row["scopes"]), row.get("name", ""), created)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The id `kairos keys list` shows.")],
                db: DbOption = None) -> None:
    """Revoke a stored key; a running server refuses it within a second."""
    from kairos.api.auth import KeyFile

    if not KeyFile(_settings(db).keys_path()).revoke(key_id):
        raise _fail(ValueError(f"no stored key has the id {key_id!r}"))
    console.print(f"[green]revoked[/] {key_id}")
