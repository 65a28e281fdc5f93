"""Exceptions raised by the ``service`` package, each mapped to a process exit code.

    ServiceError                                                → exit 1
    ├── TaskFailed         a FATAL background task crashed      → exit 1
    ├── ConfigError        settings or credentials invalid      → exit 2
    ├── ReadinessTimeout   the cache never reached coverage     → exit 3
    ├── FeedFatal          the broker refused us for good       → exit 4
    └── RedisUnavailable   redis.enabled = true and no Redis    → exit 5
"""

from __future__ import annotations


class ServiceError(Exception):
    exit_code = 1


class TaskFailed(ServiceError):
    """A background task whose death leaves wrong data crashed (``service.tasks.FATAL``)."""


class ConfigError(ServiceError):
    exit_code = 2


class ReadinessTimeout(ServiceError):
    exit_code = 3


class FeedFatal(ServiceError):
    exit_code = 4


class RedisUnavailable(ServiceError):
    exit_code = 5
