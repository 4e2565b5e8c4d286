"""Loggers that import the logging package only when it is needed.

`logging` pulls in re, traceback, tokenize, textwrap, string and threading: about a fifth of a mount
program's start (5 ms of ~30 here), paid on every `podman run`. So the package's modules take their
loggers from here. Such a logger is a plain `logging.Logger` once logging is loaded; until then:

- with no configuration noted (a library user, the tests), its first use imports logging and it behaves
  as `logging.getLogger(name)` from then on;
- once the daemon has noted its configuration (`configure_later`), records below WARNING that the
  configuration lets through are kept, with their time, and written when logging is loaded: by a
  record of WARNING or more (at once, so that errors are never late), by `load()` (the native backend
  calls it before it starts its event loop), or at exit (`flush()`: not loaded when nothing was kept).
  `isEnabledFor` answers from the noted level.

The daemon's INFO lines ("mounted", "unmounted") therefore cost nothing at start, and a mount that
fails or warns loads logging the moment it has something to say.
"""

import sys
import time

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_pending = None  # (setup, levels): the configuration noted by configure_later, until load()
_kept: list = []  # (created, name, level, msg, args) of records kept until load()
_loggers: dict = {}
_registered = False  # the exit hook that writes what is still kept


def get_logger(name: str) -> "Logger":
    logger = _loggers.get(name)
    if logger is None:
        logger = _loggers[name] = Logger(name)
    return logger


def configure_later(setup, levels: dict) -> None:
    """Note the daemon's configuration: *setup()* installs its handlers (it imports logging); *levels*
    maps logger names to their level ("" is the root). Applied at once when logging is loaded already
    or *levels* asks for DEBUG (debugging wants its lines as they come)."""
    global _pending
    _pending = (setup, levels)
    if "logging" in sys.modules or min(levels.values()) <= DEBUG:
        load()
    elif not _registered:
        _register_exit()


def load() -> None:
    """Import logging, apply the noted configuration, and write the records kept until now."""
    global _pending
    import logging

    pending, _pending = _pending, None
    if pending is not None:
        setup, levels = pending
        setup()
        for name, level in levels.items():
            logging.getLogger(name or None).setLevel(level)
    for logger in _loggers.values():
        logger._real = logging.getLogger(logger.name)
    kept = _kept[:]
    del _kept[:]
    for created, name, level, msg, args in kept:
        real = logging.getLogger(name)
        if real.isEnabledFor(level):
            record = real.makeRecord(name, level, "(kept)", 0, msg, args, None)
            record.created = created
            record.msecs = (created - int(created)) * 1000
            real.handle(record)


def _register_exit() -> None:
    global _registered
    import atexit

    atexit.register(flush)
    _registered = True


def flush() -> None:
    """Write the records kept until now, if any: logging is imported only when there is one (a daemon
    that logged nothing at its level leaves without it: importing logging at exit cost ~10 ms of CPU a
    container mount, in the container engine's time)."""
    if _kept:
        load()


def _level_of(name: str) -> int:
    levels = _pending[1] if _pending is not None else {}
    while True:
        if name in levels:
            return levels[name]
        if not name:
            return WARNING
        name = name.rpartition(".")[0]


class Logger:
    """A stand-in for `logging.getLogger(name)` until logging is loaded (see the module's docstring)."""

    __slots__ = ("name", "_real")

    def __init__(self, name: str):
        self.name = name
        self._real = None

    def _logger(self):
        if self._real is None:
            load()  # gives every logger of get_logger its real one
        return self._real

    def isEnabledFor(self, level: int) -> bool:
        if self._real is None and _pending is not None:
            return level >= _level_of(self.name)
        return self._logger().isEnabledFor(level)

    def _log(self, level: int, msg, args, kwargs) -> None:
        if self._real is None and _pending is not None and level < WARNING and not kwargs:
            if level >= _level_of(self.name):
                _kept.append((time.time(), self.name, level, msg, args))
            return
        self._logger().log(level, msg, *args, **kwargs)

    def debug(self, msg, *args, **kwargs) -> None:
        self._log(DEBUG, msg, args, kwargs)

    def info(self, msg, *args, **kwargs) -> None:
        self._log(INFO, msg, args, kwargs)

    def warning(self, msg, *args, **kwargs) -> None:
        self._log(WARNING, msg, args, kwargs)

    def error(self, msg, *args, **kwargs) -> None:
        self._log(ERROR, msg, args, kwargs)

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        self._logger().error(msg, *args, exc_info=exc_info, **kwargs)

    def log(self, level: int, msg, *args, **kwargs) -> None:
        self._log(level, msg, args, kwargs)
