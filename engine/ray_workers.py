"""`batch --ray`: the workers as Ray actors (`pip install highlightsense[ray]`).

One actor per worker keeps its models (engine.workers.Worker), asks for a GPU when the cluster
has them, and is restarted when its process dies, its task then retried (max_restarts,
max_task_retries): a retried input resumes from the progress record the actor keeps on its
node. Results (scores, the source's facts) come back to the driver, which writes the folders
and cuts the clips: the nodes need no shared filesystem for outputs, only inputs (URLs, or paths
every node can read) and highlightsense installed.

Without an address a local Ray is started on this machine, every address on 127.0.0.1
(LOOPBACK_ENV says how), and stopped at the end.
"""
import logging
import os
import sys
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Dict, Optional

from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.workers import (WorkerLost, limit_threads, size_workers, uses_gpus,
                                           run_task, Worker)

log = logging.getLogger("highlightsense")

RESTARTS = 3  # how often a dead actor is started again, and its task retried

# What keeps a Ray that this machine starts on loopback and quiet. Ray replaces 127.0.0.1 with
# the address its "perspective" finds routable unless clusters are off (a single-node Ray needs
# none: this is the switch Ray reads for Windows and macOS); it asks cloud metadata servers
# (169.254.169.254) which cloud it runs on, and reports that usage stats are off to its own
# server, even with them off. The proxy variables send those requests to a closed loopback port
# (no_proxy keeps Ray's own loopback traffic direct); the actors get the driver's own proxy
# settings back (proxy_restore), so inputs are fetched as they would be without Ray.
_NOWHERE = "http://127.0.0.1:9"
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": _NOWHERE + "/",
    "http_proxy": _NOWHERE, "https_proxy": _NOWHERE, "HTTP_PROXY": _NOWHERE,
    "HTTPS_PROXY": _NOWHERE,
    "no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1",
}
_PROXY_KEYS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


def import_ray():
    try:
        import ray
    except ImportError:
        raise HighlightSenseError("--ray needs Ray: pip install 'highlightsense[ray]'") from None
    return ray


def proxy_restore(environ=None) -> Dict[str, str]:
    """The proxy settings the actors get: the driver's own ("" where it has none, which the
    HTTP clients read as unset)."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(k, "") for k in _PROXY_KEYS}


@contextmanager
def loopback_env(environ=None):
    """LOOPBACK_ENV set while a local Ray starts (its processes inherit it), then put back."""
    environ = os.environ if environ is None else environ
    before = {k: environ.get(k) for k in LOOPBACK_ENV}
    environ.update(LOOPBACK_ENV)
    try:
        yield
    finally:
        for k, v in before.items():
            if k == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER":
                continue  # read again by every ray import in this process: keep it off
            if v is None:
                environ.pop(k, None)
            else:
                environ[k] = v


def _clusters_off() -> None:
    """Ray's switch that keeps 127.0.0.1 as it is, which Ray reads once, when first imported:
    set before that, or refused (Ray would connect to another address than the one given)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and constants.ENABLE_RAY_CLUSTER:
        raise HighlightSenseError(
            "Ray was imported before --ray could keep it on 127.0.0.1; set "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray")


class WorkerActor:
    """A Worker in a Ray actor: tasks by name, each answered ("ok", value) or ("error", line),
    so a user's bad input arrives as its one line, not as Ray's wrapped traceback."""

    def __init__(self, threads: int):
        limit_threads(threads)
        self.worker = Worker()

    def run(self, task: str, args: tuple):
        try:
            return "ok", run_task(self.worker, task, args)
        except HighlightSenseError as e:
            return "error", str(e)


class RayHandle:
    """One actor, called as engine.batch's Dispatcher calls a LocalWorker."""

    def __init__(self, actor, name: str):
        self.actor, self.name = actor, name

    def call(self, task: str, *args) -> Future:
        ray = import_ray()
        future: Future = Future()
        future.set_running_or_notify_cancel()
        inner = self.actor.run.remote(task, args).future()

        def done(f: Future) -> None:
            try:
                status, value = f.result()
            except ray.exceptions.RayActorError as e:
                future.set_exception(WorkerLost(
                    f"Ray worker {self.name} died during {task} and was not restarted "
                    f"({type(e).__name__})"))
                return
            except ray.exceptions.RayError as e:
                future.set_exception(HighlightSenseError(
                    f"Ray failed {task}: {str(e).splitlines()[0]}"))
                return
            if status == "ok":
                future.set_result(value)
            else:
                future.set_exception(HighlightSenseError(value))

        inner.add_done_callback(done)
        return future


class RayWorkers:
    """`count` actors on the Ray cluster at `address`, or on a local Ray started here."""

    where = "ray"

    def __init__(self, address: Optional[str], count: Optional[int], cfg: Config):
        self.started = address is None
        if self.started:
            _clusters_off()
            with loopback_env():
                ray = import_ray()
                ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False)
        else:
            loopback = address.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "localhost", "::1")
            if loopback:  # a cluster on this machine's loopback: the driver joins it there
                _clusters_off()
            ray = import_ray()
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                         **({"_node_ip_address": "127.0.0.1"} if loopback else {}))
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise HighlightSenseError(f"cannot connect to Ray at {address}: "
                                          f"{str(e).splitlines()[0]}") from None
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        gpus = gpus if uses_gpus(cfg) else 0
        workers, threads = size_workers(gpus, cpus, count)
        actor = ray.remote(WorkerActor).options(
            num_cpus=min(threads, cpus / workers), num_gpus=(gpus / workers) if gpus else 0,
            max_restarts=RESTARTS, max_task_retries=RESTARTS,
            runtime_env={"env_vars": proxy_restore()})
        self.handles = [RayHandle(actor.remote(threads), f"actor{i}") for i in range(workers)]
        log.info("Ray: %d workers (%d CPUs%s in the cluster)", workers, cpus,
                 f", {gpus} GPUs" if gpus else "")

    def close(self) -> None:
        ray = import_ray()
        for handle in self.handles:
            ray.kill(handle.actor)
        ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
