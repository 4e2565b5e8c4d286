"""The daemon's log: a reply to a request the kernel stopped waiting for is no error."""

import io
import logging

from unionfs.fuse import daemon


class _Opts:
    debug = False
    logfile = None


def test_dropped_replies_are_not_errors_but_real_failures_are():
    daemon._setup_logging(_Opts, to_stderr=True)
    out = io.StringIO()
    logging.getLogger().handlers[0].stream = out
    log = logging.getLogger("pyfuse3")
    log.error("fuse_releasedir(): fuse_reply_* failed with %s", "No such file or directory")
    log.error("fuse_read(): fuse_reply_* failed with %s", "Broken pipe")
    text = out.getvalue()
    assert "releasedir" not in text
    assert " ERROR pyfuse3: fuse_read(): fuse_reply_* failed with Broken pipe" in text
