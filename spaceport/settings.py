"""Settings of the job service (`spaceport serve`, `spaceport worker`, `spaceport jobs`), from the environment.

Every field reads ``SPACEPORT_<NAME>`` (``SPACEPORT_DATABASE_URL``, ``SPACEPORT_BROKER_URL``, ...). The CLI passes
its flags as keyword arguments, which win over the environment. Pipeline settings are not here: they are the
``PipelineConfig`` of each job (``spaceport.presets``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPACEPORT_", extra="ignore")

    # -- where things live ---------------------------------------------------------------------------
    data_dir: Path = Field(Path("spaceport-data"), description="SQLite file, uploads and local workspaces")
    database_url: str | None = Field(None, description="SQLAlchemy URL; None: sqlite:///<data_dir>/spaceport.db")
    broker_url: str | None = Field(None, description="redis://... runs stages on Celery workers; None: embedded")
    storage_url: str | None = Field(None, description="where workspaces are kept: file:///... or s3://bucket/prefix; "
                                    "None: <data_dir>/workspaces")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, ...)")
    import_roots: list[Path] = Field(default_factory=list, description="folders a job may read with file://")
    public_url: str = Field("http://127.0.0.1:8000", description="base of the links in e-mails and webhooks")

    # -- workers -------------------------------------------------------------------------------------
    cpu_slots: int = Field(1, ge=0, description="embedded worker: stages of resource 'cpu' run at once")
    gpus: str = Field("all", description="the GPUs workers use, one slot each: all | none | indices 0,1 (as this "
                      "process sees them: spaceport.gpus); none found: the gpu stages run on the CPU")
    gpu_slots: int = Field(1, ge=0, description="embedded worker without a GPU: stages of resource 'gpu' run at once "
                           "on the CPU (with GPUs: one slot per GPU)")
    heartbeat_s: float = Field(5.0, gt=0, description="how often a worker running a stage renews its claim")
    stale_after_s: float = Field(60.0, gt=0, description="a claim not renewed for this long goes back to the queue "
                                 "(its worker is taken for dead)")

    # -- limits --------------------------------------------------------------------------------------
    max_upload_bytes: int = Field(20 * GIB, ge=1, description="largest upload of one job (413 above)")
    max_running_jobs_per_owner: int = Field(4, ge=1, description="queued + running jobs one owner may have")

    # -- notifications -------------------------------------------------------------------------------
    smtp_host: str | None = Field(None, description="None: no e-mail is sent")
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "spaceport@localhost"
    webhook_secret: str = Field("", description="HMAC-SHA256 key of X-Spaceport-Signature; empty: unsigned")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'spaceport.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "workspaces").resolve().as_uri()
