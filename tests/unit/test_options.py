"""The command line and option parsing, without mounting."""

import pytest

from unionfs.cli import UsageError, parse_argv
from unionfs.options import OptionError, build, parse_o, split_escaped, unescape


def test_escaped_lowerdir():
    opts = build(parse_o([r"lowerdir=/a\:b:/c\,d:/e,upperdir=/u,workdir=/w"]))
    assert opts.lowers == ["/a:b", "/c,d", "/e"]
    assert (opts.upper, opts.work) == ("/u", "/w")


def test_several_o_and_mount_helper_form():
    opts = parse_argv(
        ["overlay", "/mnt", "-o", "rw,noatime,lowerdir=/l", "-o", "upperdir=/u,workdir=/w", "-o", "dev,suid,lazytime"]
    )
    assert opts.mountpoint == "/mnt" and opts.fsname == "overlay"
    assert opts.lowers == ["/l"] and "noatime" in opts.fuse_options


def test_what_podman_passes():
    # A container mount: an empty option and volatile (podman run --rm); a layer mount: lowers only.
    opts = parse_argv(["-o", "lowerdir=/s/l/A:/s/l/B,upperdir=/s/c/diff,workdir=/s/c/work,,volatile", "/m"])
    assert opts.lowers == ["/s/l/A", "/s/l/B"] and opts.upper == "/s/c/diff" and opts.volatile
    opts = parse_argv(["-o", "lowerdir=/s/L/diff:/s/L/empty,", "/m"])
    assert opts.upper is None and not opts.volatile


@pytest.mark.parametrize(
    "text,expected",
    [
        ("lowerdir=/a", True),
        ("lowerdir=/a,whiteout_files", True),
        ("lowerdir=/a,whiteout_files=on", True),
        ("lowerdir=/a,whiteout_files=off", False),
        ("lowerdir=/a,nowhiteout_files", False),
    ],
)
def test_wh_markers_are_read_unless_turned_off(text, expected):
    assert build(parse_o([text])).whiteout_files is expected


@pytest.mark.parametrize("text,expected", [("lowerdir=/a", True), ("lowerdir=/a,passthrough=off", False)])
def test_passthrough_is_on_unless_turned_off(text, expected):
    assert build(parse_o([text])).passthrough is expected


@pytest.mark.parametrize(
    "text,expected", [("lowerdir=/a", 50), ("lowerdir=/a,spin=0", 0), ("lowerdir=/a,spin=10000", 10000)]
)
def test_spin_is_50_microseconds_unless_set(text, expected):
    assert build(parse_o([text])).spin == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("lowerdir=/a,whiteout_files=maybe", "whiteout_files needs on or off"),
        ("lowerdir=/a,spin=lots", "spin needs a number of microseconds"),
        ("lowerdir=/a,spin", "spin needs a number of microseconds"),
        ("lowerdir=/a,readahead", "readahead needs a number of KiB"),
        ("lowerdir=/a,spin=-1", "spin needs a number of microseconds from 0 to 10000"),
        ("lowerdir=/a,spin=10001", "spin needs a number of microseconds from 0 to 10000"),
        ("upperdir=/u,workdir=/w", "no lowerdir"),
        ("lowerdir=/a::/b", "empty component"),
        ("lowerdir=/a:", "empty component"),
        ("lowerdir=/a,upperdir=/u", "together"),
        ("lowerdir=/a,bogus", "unknown option: bogus"),
        ("lowerdir=/a,redirect_dir=sideways", "redirect_dir needs one of"),
        ("lowerdir=/a,index=maybe", "index needs on or off"),
        ("lowerdir=/a,passthrough=maybe", "passthrough needs on or off"),
        ("lowerdir=/a,passthrough", "passthrough needs on or off"),
        ("lowerdir=/a,metacopy=on", "not supported"),
        ("lowerdir=" + ":".join("/l%d" % i for i in range(501)), "too many"),
    ],
)
def test_refused(text, message):
    with pytest.raises(OptionError, match=message):
        build(parse_o([text]))


def test_unbalanced_escape():
    with pytest.raises(OptionError, match="escape"):
        split_escaped("lowerdir=/a\\", ",")
    assert unescape(r"a\\b") == "a\\b"


def test_usage_errors():
    with pytest.raises(UsageError):
        parse_argv(["-o", "lowerdir=/a"])
    with pytest.raises(UsageError):
        parse_argv(["-x", "/mnt"])
    with pytest.raises(UsageError):
        parse_argv(["a", "b", "c"])
