"""unionfs.logger: loggers that import logging only when there is something to write."""

import subprocess
import sys

_PRELUDE = """
import sys, time
from unionfs import logger
class Out(list):
    def append(self, item):
        print("LINE", item[0], item[1])  # also after the test's own exit hooks
        super().append(item)
out = Out()
def setup():
    import logging
    class ToList(logging.Handler):
        def emit(self, record):
            out.append((record.levelname, record.getMessage(), record.created))
    logging.getLogger().handlers[:] = [ToList()]
log = logger.get_logger("unionfs")
proto = logger.get_logger("unionfs.protocol")
logger.configure_later(setup, {"": logger.INFO, "unionfs.protocol": logger.WARNING})
"""


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", _PRELUDE + code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_info_lines_are_kept_without_importing_logging_and_written_before_a_warning():
    out = _run(
        """
t0 = time.time()
log.info("mounted %s", "/mnt")
proto.info("not written: unionfs.protocol logs warnings only")
assert "logging" not in sys.modules
assert log.isEnabledFor(logger.INFO) and not log.isEnabledFor(logger.DEBUG)
assert not proto.isEnabledFor(logger.INFO) and proto.isEnabledFor(logger.WARNING)
assert "logging" not in sys.modules
time.sleep(0.05)
log.warning("layer %d is odd", 2)
assert "logging" in sys.modules
assert [o[:2] for o in out] == [("INFO", "mounted /mnt"), ("WARNING", "layer 2 is odd")], out
assert out[0][2] < out[1][2] - 0.04  # the kept line has the time it was logged at
log.info("after")  # logging is loaded: written at once
assert out[-1][:2] == ("INFO", "after")
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_kept_lines_are_written_at_exit_and_by_load():
    out = _run(
        """
log.info("first")
logger.load()
assert [o[:2] for o in out] == [("INFO", "first")], out
print("loaded")
"""
    )
    assert out.split("\n")[:2] == ["LINE INFO first", "loaded"]
    out = _run(
        """
log.info("at exit")
print("before exit")
"""
    )
    assert out.split("\n")[:2] == ["before exit", "LINE INFO at exit"]


def test_nothing_kept_nothing_loaded_at_exit():
    """A daemon that logged nothing at its level does not import logging to leave (flush() at exit)."""
    code = (
        "import atexit, sys; from unionfs import logger; "
        "atexit.register(lambda: print('at exit, logging loaded:', 'logging' in sys.modules)); "
        "logger.configure_later(lambda: None, {'': logger.WARNING}); "
        "logger.get_logger('unionfs').info('below the level'); logger.flush(); "
        "print('after flush, logging loaded:', 'logging' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split("\n")[:2] == ["after flush, logging loaded: False", "at exit, logging loaded: False"], (
        res.stdout + res.stderr
    )


def test_exception_is_written_at_once_with_its_traceback():
    out = _run(
        """
try:
    1 / 0
except ZeroDivisionError:
    log.exception("ERROR in %s", "handler")
assert out[0][:2] == ("ERROR", "ERROR in handler"), out
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_without_a_configuration_a_logger_is_logging_s_own():
    code = (
        "import logging, io; from unionfs import logger; s = io.StringIO(); "
        "logging.basicConfig(stream=s, level=logging.DEBUG); logger.get_logger('unionfs.x').debug('hi %d', 1); "
        "print(s.getvalue().strip())"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "DEBUG:unionfs.x:hi 1", res.stderr


def test_a_mount_program_start_imports_neither_logging_nor_typing_nor_collections():
    # collections and weakref: ~2 ms of the ~20 ms start (engine/records.py, engine/weakvalues.py)
    code = (
        "import sys, unionfs.cli, unionfs.fuse.daemon, unionfs.fuse.native_backend, unionfs.protocol.mount; "
        "heavy = ('logging', 'typing', 'trio', 'contextlib', 'collections', 'weakref'); "
        "sys.exit(','.join(m for m in heavy if m in sys.modules) or None)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_the_daemon_answers_its_first_request_without_collections_or_importlib():
    # What the native daemon imports between its fork and its first answer (the engine, the request
    # layer, the session): the same heavy modules stay out, and importlib (with warnings) too.
    code = (
        "import sys, unionfs.cli, unionfs.fuse.daemon, unionfs.fuse.native_backend, unionfs.engine.union, "
        "unionfs.fuse.requests, unionfs.fuse.native_operations, unionfs.protocol.session; "
        "from unionfs.engine import UnionEngine, Caller, LayerInUse; "
        "heavy = ('logging', 'typing', 'trio', 'contextlib', 'collections', 'weakref', 'importlib', 'operator'); "
        "sys.exit(','.join(m for m in heavy if m in sys.modules) or None)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
