"""The router's scheduler: which profiles the managed servers run, and who waits for which.

One scheduler, two policies (`Policy`):

One server, switched (`switching()`, no `server.ports`): capacity one, a load replaces whatever
runs. Requests for the running profile proceed at once, concurrently. A request for another
profile waits in one bounded FIFO (full: 429) with a deadline (504). The head of the queue
decides the next profile; the switch starts once the running profile's in-flight requests have
finished (bounded by `inflight_timeout`), and every waiter for that profile, including those that
arrive during the load, is let through together when it is ready. A failed load fails each of
them with the reason. While a switch is pending, new requests for the old profile queue behind
it, so a busy profile cannot starve the others.

Several servers (`server.ports`): loads placed by memory. Requests for a loaded profile proceed
at once, whatever else loads. A request for a profile that is not loaded waits in that profile's
bounded queue (full: 429) with a deadline (504) while the profile is loaded with the placer, one
load at a time. The placer names the servers to unload first; new requests for them queue from
that moment, and their requests in flight may finish (bounded by `inflight_timeout`) before they
stop. A failed or refused load fails only that profile's waiters, with the reason. `ttl` unloads
each profile on its own.

A stop from a shell (`llmctl stop`/`unload`, supervisor/stops.py) wins: before a load, the
waiters that arrived before the newest such stop of that profile are answered 503
(`model_stopped`) and the load goes on only for those that came after it (`stopped_after`).

The order of the waiting (both policies) is router/order.py's: while a load would evict a busy
profile, its requests (and new ones for it) go first, up to `bound`; then the swap happens, its
reason logged. `max_concurrency` caps a profile's requests in flight and waiting (429).

The modules:
effects.py    the backend's functions the scheduler drives (plan, load, stop), and `Progress`
leases.py     the loaded profiles: leases, requests in flight, draining before an unload
waiters.py    the queue: admission (429), deadlines (504), answers and progress to waiters
core.py       `Scheduler` and `Policy`: the public calls and the loop that loads and stops
factories.py  `switching()` for one server, `configure()` from a manifest
"""

from __future__ import annotations

from llmctl.router.errors import SwitchFailed  # the effects raise it
from llmctl.router.scheduler.core import PLACEMENT, SWITCH, Policy, Scheduler
from llmctl.router.scheduler.effects import (
    LoadFn,
    PlanFn,
    Progress,
    ProgressFn,
    StopFn,
    StoppedFn,
    SwitchFn,
    WaitFn,
)
from llmctl.router.scheduler.factories import configure, switching
from llmctl.router.scheduler.leases import Lease, Waited

__all__ = [
    "PLACEMENT",
    "SWITCH",
    "Lease",
    "LoadFn",
    "PlanFn",
    "Policy",
    "Progress",
    "ProgressFn",
    "Scheduler",
    "StopFn",
    "StoppedFn",
    "SwitchFailed",
    "SwitchFn",
    "WaitFn",
    "Waited",
    "configure",
    "switching",
]
