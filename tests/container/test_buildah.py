"""buildah as root with pyunionfs as the mount program: a working container made from the base image,
changed with `buildah run` step by step (each step a commit, so each deletion crosses a layer), and
`buildah bud`; the images must hold what the steps say, as with the kernel's overlay, and no `.wh.`
name may show through a mount."""

from __future__ import annotations

import pytest

from tests.container.engines import BASE_IMAGE, skip_reason

pytestmark = [pytest.mark.timeout(300)]

STEPS = [
    "mkdir -p /srv/a/b /srv/d && echo 1 > /srv/a/b/f && echo 2 > /srv/keep && echo 3 > /srv/d/x && echo 4 > /srv/x",
    "rm -rf /srv/a /srv/d/x /bin/vi && echo 22 > /srv/keep && mkdir /srv/x2 && rm /srv/x && mkdir /srv/x",
    "mkdir /srv/a && echo back > /srv/a/new && echo y > /srv/d/y && rmdir /srv/x && echo file > /srv/x",
]
EXPECTED = {
    "srv": "d",
    "srv/a": "d",
    "srv/a/new": "f",
    "srv/d": "d",
    "srv/d/y": "f",
    "srv/keep": "f",
    "srv/x": "f",
    "srv/x2": "d",
}


def _srv(tree):
    return {k: v[0] for k, v in tree.items() if k == "srv" or k.startswith("srv/")}


@pytest.fixture
def buildah_engines(engines):
    reason = skip_reason("buildah")
    if reason:
        pytest.skip(reason)
    return {kind: engines(kind) for kind in ("pyunionfs", "kernel")}


def test_buildah_run_and_commit_layer_by_layer(buildah_engines):
    trees = {}
    for kind, e in buildah_engines.items():
        image = BASE_IMAGE
        for i, step in enumerate(STEPS):
            ctr = e.buildah("from", "--pull-never", image).stdout.strip()
            e.buildah("run", "--network", "none", ctr, "--", "sh", "-c", step)
            image = f"localhost/t/step{i}"
            e.buildah("commit", "-q", ctr, image)
            e.buildah("rm", ctr)
        listing = e.podman(
            "run",
            "--rm",
            "--pull=never",
            image,
            "sh",
            "-c",
            "cat /srv/a/new /srv/keep /srv/x; ls -a /srv /srv/a /srv/d; ls /bin/vi 2>&1; true",
        ).stdout
        assert listing.startswith("back\n22\nfile\n") and ".wh." not in listing, (kind, listing)
        trees[kind] = e.image_tree(image)
    assert _srv(trees["pyunionfs"]) == EXPECTED
    assert "bin/vi" not in trees["pyunionfs"]
    assert not [p for p in trees["pyunionfs"] if ".wh." in p]
    assert trees["pyunionfs"] == trees["kernel"]


def test_buildah_bud(buildah_engines, tmp_path):
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_IMAGE}\n" + "".join(f"RUN {s}\n" for s in STEPS))
    trees = {}
    for kind, e in buildah_engines.items():
        e.buildah("bud", "--pull-never", "--network", "none", "--layers", "-t", "localhost/t/bud", str(tmp_path))
        trees[kind] = e.image_tree("localhost/t/bud")
    assert _srv(trees["pyunionfs"]) == EXPECTED
    assert trees["pyunionfs"] == trees["kernel"]
