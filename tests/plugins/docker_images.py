"""The container tests' Docker daemon and images, started in the background as the session begins.

Building the images from scratch took 273 s of fixture setup in the last foreground run of ``bash .ci/run`` (mostly
single-threaded pip work), while the rest of the suite leaves about two thirds of the CPU idle (``time bash .ci/run``:
13 min of user + sys CPU in 20.5 min on 2 cores; one engine at a time on core 0). So when any test marked
``docker`` is selected, this plugin starts the daemon and both builds in a thread at collection time and moves the
``docker`` tests to the end of the run; their fixtures ``docker`` and ``images`` wait for that thread. Nothing else
changes: the same daemon (``docker_host.DockerHost``), the same builds, the same skip with a reason when no daemon can
be had. ``SAFEGENE_TEST_DOCKER_PREBUILD=0`` builds in the fixture instead (in the foreground).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.deploy.docker_host import DockerHost, DockerUnavailable, build_images


class ImageBuild:
    """A daemon plus the built images, made in a background thread; :meth:`wait` gives them or raises."""

    def __init__(self) -> None:
        self.host: DockerHost | None = None
        self.images: dict[str, str] | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="docker-image-build", daemon=True)

    def start(self) -> "ImageBuild":
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            self.host = DockerHost()
            self.images = build_images(self.host)
        except BaseException as e:  # noqa: BLE001 - handed to the test that waits, which reports it
            self.error = e
        finally:
            self.seconds = time.monotonic() - t0

    def wait(self) -> tuple[DockerHost, dict[str, str]]:
        self._thread.join()
        if isinstance(self.error, DockerUnavailable):
            print(f"\n[container tests] skipped: {self.error}")
            pytest.skip(f"no Docker daemon here: {self.error}")
        if self.error is not None:
            raise RuntimeError(f"building the test images failed: {self.error}") from self.error
        assert self.host is not None and self.images is not None
        print(f"\n[container tests] daemon and images ready after {self.seconds:.0f} s (built in the background)")
        return self.host, self.images

    def close(self) -> None:
        """Stop the daemon; a build still running (an interrupted session) fails fast once its daemon is gone."""
        if self._thread.is_alive() and self.host is not None:
            self.host.close()
        self._thread.join(timeout=300)
        if self.host is not None:
            self.host.close()


_build: ImageBuild | None = None


@pytest.hookimpl(trylast=True)  # after ``-m``/``-k`` deselection: a fast lane without docker tests builds nothing
def pytest_collection_modifyitems(session, config, items) -> None:
    global _build
    docker_items = [it for it in items if it.get_closest_marker("docker")]
    if not docker_items:
        return
    others = [it for it in items if not it.get_closest_marker("docker")]
    items[:] = others + docker_items  # the build overlaps the rest of the suite
    if os.environ.get("SAFEGENE_TEST_DOCKER_PREBUILD", "1") != "0" and not config.option.collectonly:
        _build = ImageBuild().start()


def pytest_sessionfinish(session, exitstatus) -> None:
    if _build is not None:
        _build.close()


@pytest.fixture(scope="session")
def docker_images():
    """``(DockerHost, {"cpu": tag, "prometheus": tag})``: from the background build, or built here."""
    if _build is not None:
        yield _build.wait()
        return
    try:
        host = DockerHost()
    except DockerUnavailable as e:
        print(f"\n[container tests] skipped: {e}")
        pytest.skip(f"no Docker daemon here: {e}")
    try:
        yield host, build_images(host)
    finally:
        host.close()
