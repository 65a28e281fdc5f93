"""Where the broker's access token comes from: the environment, ``feed.token_file`` or
``feed.token_command``, read again at every connect (and after an 807) so a token renewed
overnight is used without a restart.

A token command is a desk's own renewal script: its stdout is the token, its stderr is logged
(with the token masked), and it is killed after ``feed.token_command_timeout_s``. It runs in a
worker thread (the feed client calls the reader through ``asyncio.to_thread``), never on the
event loop. A command that fails after a first success logs an ERROR and hands back the last
token it gave: if that token has expired, Dhan's 807 then stops the service naming the command,
instead of a reconnect storm. A command that fails at startup stops it (exit 2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from service.errors import ConfigError

log = logging.getLogger(__name__)

_STDERR_LOG_CHARS = 2000
_MASK = "[token]"


def token_from_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); a ConfigError naming the file."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"feed.token_file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ConfigError(f"feed.token_file {path} is empty")
    return token


class TokenCommand:
    """A callable running ``feed.token_command``; thread-safe, remembers the last good token."""

    setting = "feed.token_command"

    def __init__(self, command: str, timeout_s: float) -> None:
        self.argv = shlex.split(command)
        self.timeout_s = timeout_s
        self.runs = 0
        self._last: str | None = None
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        # The program only: arguments may carry a vault path or a secret of their own.
        return f"{self.setting} ({Path(self.argv[0]).name})"

    def __call__(self) -> str:
        with self._lock:
            self.runs += 1
            try:
                token = self._run()
            except _CommandFailed as exc:
                if self._last is None:
                    raise ConfigError(f"{self.source} failed: {exc}") from None
                log.error("%s failed: %s; keeping the previous token", self.source, exc)
                return self._last
            self._last = token
            return token

    def latest(self) -> str:
        """The last token the command gave (running it when it never has): what REST requests
        use, since the command runs only when a feed connection opens."""
        with self._lock:
            last = self._last
        return last if last is not None else self()

    def _run(self) -> str:
        try:
            proc = subprocess.run(
                self.argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout_s, check=False,
                env=os.environ.copy(),
            )
        except subprocess.TimeoutExpired as exc:
            self._log_stderr(exc.stderr, None, logging.WARNING)
            raise _CommandFailed(f"no answer within {self.timeout_s:g}s (feed.token_command_timeout_s); killed") from None
        except OSError as exc:
            raise _CommandFailed(f"cannot run {self.argv[0]!r}: {exc.strerror or exc}") from None
        token = proc.stdout.decode("utf-8", errors="replace").strip()
        self._log_stderr(proc.stderr, token, logging.INFO if proc.returncode == 0 else logging.WARNING)
        if proc.returncode != 0:
            raise _CommandFailed(f"exit status {proc.returncode}")
        if not token:
            raise _CommandFailed("printed nothing on stdout; it must print the access token")
        if any(ch.isspace() for ch in token):
            raise _CommandFailed("printed more than one word on stdout; it must print the token alone (diagnostics go to stderr)")
        return token

    def _log_stderr(self, stderr: bytes | None, token: str | None, level: int) -> None:
        text = (stderr or b"").decode("utf-8", errors="replace").strip()
        if not text:
            return
        if token:
            text = text.replace(token, _MASK)
        if len(text) > _STDERR_LOG_CHARS:
            text = text[:_STDERR_LOG_CHARS] + "…"
        log.log(level, "%s stderr: %s", self.setting, text)


class _CommandFailed(Exception):
    pass


def token_reader(
    token_file: Path | None, token_command: str | None, token_command_timeout_s: float, *, env_var: str
) -> tuple[Callable[[], str], str]:
    """(a reader called at every connect, the name of its source for messages). The first
    token is read now, so a missing file or a failing command stops startup (ConfigError)."""
    if token_command is not None:
        command = TokenCommand(token_command, token_command_timeout_s)
        command()
        return command, command.source
    if token_file is not None:
        path = token_file
        token_from_file(path)
        return (lambda: token_from_file(path)), f"feed.token_file {path}"
    if not os.environ.get(env_var, "").strip():
        raise ConfigError(f"no access token: set {env_var}, feed.token_file or feed.token_command")

    def from_env() -> str:
        return os.environ.get(env_var, "").strip()

    return from_env, env_var


# A broker's credentials: a dataclass whose ``access_token`` field is the reader.
C = TypeVar("C")


def rest_credentials(credentials: C) -> C:
    """The credentials (any broker's dataclass with an ``access_token`` reader) for REST
    requests: a token command's last token rather than a new run of the command per request."""
    latest = getattr(credentials.access_token, "latest", None)
    return dataclasses.replace(credentials, access_token=latest) if latest is not None else credentials
