"""The task-record table (SQLAlchemy 2.0 typed models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from appliance.core.constants import TASK_STATES as STATES
from appliance.core.constants import TERMINAL_STATES

__all__ = ["STATES", "TERMINAL_STATES", "Base", "TaskRecord"]


class Base(DeclarativeBase):
    pass


class TaskRecord(Base):
    """What happened to one task, from publish to its final state."""

    __tablename__ = "task_records"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    args: Mapped[Any] = mapped_column(JSON, nullable=True)
    kwargs: Mapped[Any] = mapped_column(JSON, nullable=True)
    queue: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    progress_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    parent_id: Mapped[str | None] = mapped_column(String(64))
    root_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_task_records_status_created", "status", "created_at"),
        Index("ix_task_records_name_created", "name", "created_at"),
        Index("ix_task_records_created", "created_at"),
        Index("ix_task_records_root", "root_id"),
    )
