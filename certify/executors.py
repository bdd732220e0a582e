"""Who evaluates a run's work units: this process (``serial``) or Ray workers (``RayExecutor``).

An executor takes the units still to do, as (key, unit) pairs, and yields ``(key, records,
seconds)`` as each unit finishes, in any order (``certify.runner.serial`` is the default).
``certify.runner.run_suite`` stays the single writer: it stamps, redacts and appends each unit's
records, so resume and the output lock are the same whichever executor ran the units.

The Ray executor sends each worker the run's config, not the plan: a worker builds the plan once
per process (with the set-up cache the driver has just filled, that is a read of the cached set-up,
not a new calibration), refuses to evaluate if its plan's fingerprint differs from the driver's,
and returns one unit's records. A worker process that dies mid-unit (killed, out of memory) has
its unit retried by Ray on another worker (``max_retries``); an error raised by the unit itself
is not retried and ends the run, as in a serial run. Nothing is written by a worker, so a retried
unit cannot leave a duplicate.

Example::

    executor = RayExecutor(config, plan_digest(plan), workers=2)
    for key, records, seconds in executor(todo, plan.evaluate_unit): ...
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from certify.config import SuiteConfig
from certify.plugins import load_plugins
from certify.provenance import config_sha256, json_data
from certify.runner import Finished, Todo, unit_key
from certify.suites import SuitePlan, get_suite
from guard.errors import ToolkitError

RETRIES = 3  # times a unit whose worker process died is run again


def plan_digest(plan: SuitePlan) -> str:
    """What a worker's plan must equal the driver's in: its fingerprint and its units."""
    return config_sha256({"fingerprint": json_data(plan.fingerprint), "units": [unit_key(u) for u in plan.units]})


def require_ray() -> None:
    """A one-line error, before any model loads, when ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ToolkitError("the ray executor needs ray: pip install -e '.[ray]' (scripts/install.sh installs it)") \
            from err


# per worker process: the plan of each config it was sent (built once, then reused by every unit)
_PLANS: dict[str, tuple[SuitePlan, dict[str, Any]]] = {}


def _worker_plan(config: SuiteConfig, digest: str, cwd: str) -> tuple[SuitePlan, dict[str, Any]]:
    name = config_sha256(config.to_dict())
    if name not in _PLANS:
        if os.getcwd() != cwd:  # relative plugin, subject and data paths mean what they meant to the driver
            os.chdir(cwd)
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        load_plugins(config.plugins)
        plan = get_suite(config.suite).plan(config)
        if plan_digest(plan) != digest:
            raise ToolkitError(f"ray worker on {os.uname().nodename}: its plan of suite {config.suite!r} differs from "
                               "the driver's (other weights, data or code there); every worker needs the same "
                               "toolkit, subject and data")
        _PLANS[name] = plan, {unit_key(u): u for u in plan.units}
    return _PLANS[name]


def evaluate_on_worker(config: SuiteConfig, digest: str, cwd: str, key: str) -> tuple[list[dict[str, Any]], float]:
    """One unit's records and wall time, on a Ray worker."""
    plan, units = _worker_plan(config, digest, cwd)
    start = time.perf_counter()
    records = plan.evaluate_unit(units[key])
    return records, time.perf_counter() - start


class RayExecutor:
    """Units farmed to ``workers`` Ray worker processes, at most ``workers`` in flight; a local cluster
    of that many CPUs unless ``address`` names a running one (or Ray is already initialised here)."""

    def __init__(self, config: SuiteConfig, digest: str, workers: int = 1, address: str = "") -> None:
        self.config = config
        self.digest = digest
        self.workers = workers
        self.address = address

    def __call__(self, todo: Todo, evaluate_unit: Callable[[Any], list[dict[str, Any]]]) -> Finished:
        del evaluate_unit  # the workers evaluate with their own plan of the same config
        import ray

        if not self.config.cache:
            print("ray executor: --no-cache, so every worker computes the whole set-up again", file=sys.stderr)

        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address or None, num_cpus=None if self.address else self.workers,
                     include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        gpus = 1 / self.workers if self.config.device.startswith("cuda") else 0
        remote = ray.remote(evaluate_on_worker).options(num_cpus=1, num_gpus=gpus, max_retries=RETRIES)
        config = dataclasses.replace(self.config, progress=False)
        waiting = list(todo)
        flying: dict[Any, str] = {}
        try:
            while waiting or flying:
                while waiting and len(flying) < self.workers:
                    key, _ = waiting.pop(0)
                    flying[remote.remote(config, self.digest, os.getcwd(), key)] = key
                (done,), _ = ray.wait(list(flying), num_returns=1)
                key = flying.pop(done)
                try:
                    records, seconds = ray.get(done)
                except ray.exceptions.RayTaskError as err:  # the unit's own error, as a serial run raises it
                    raise (err.cause if isinstance(err.cause, Exception) else err) from None
                except ray.exceptions.RayError as err:
                    raise ToolkitError(f"ray executor: unit {key} was lost ({type(err).__name__}) and retried "
                                       f"{RETRIES} times; the finished units' records are kept, and the same "
                                       "command resumes the run") from err
                yield key, records, seconds
        finally:
            for ref in flying:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
