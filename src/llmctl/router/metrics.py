"""Counters and gauges of the router, rendered in the Prometheus text format (version 0.0.4)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SWITCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SPEED_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.switch_buckets: dict[tuple[str, str], list[int]] = {}
        self.switch_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.switch_count: dict[tuple[str, str], int] = defaultdict(int)
        self.fallbacks: dict[tuple[str, str], int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        # per profile: requests by generation speed (tokens/s), their sum, count, and tokens
        self.speed_buckets: dict[str, list[int]] = {}
        self.speed_sum: dict[str, float] = defaultdict(float)
        self.speed_count: dict[str, int] = defaultdict(int)
        self.generated: dict[str, int] = defaultdict(int)

    def count_request(self, profile: str | None, upstream: str | None, status: int) -> None:
        self.requests[(profile or "", upstream or "", str(status))] += 1

    def count_fallback(self, from_upstream: str, reason: str) -> None:
        self.fallbacks[(from_upstream, reason)] += 1

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] += 1

    def observe_switch(self, profile: str | None, ok: bool, seconds: float) -> None:
        key = (profile or "", "ok" if ok else "error")
        buckets = self.switch_buckets.setdefault(key, [0] * len(SWITCH_BUCKETS))
        for i, bound in enumerate(SWITCH_BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
        self.switch_sum[key] += seconds
        self.switch_count[key] += 1

    def observe_generation(self, profile: str | None, per_second: float, tokens: int) -> None:
        """One answer's generation speed, as llama-server's timings state it."""
        key = profile or ""
        buckets = self.speed_buckets.get(key)
        if buckets is None:
            buckets = self.speed_buckets[key] = [0] * len(SPEED_BUCKETS)
        for i, bound in enumerate(SPEED_BUCKETS):
            if per_second <= bound:
                buckets[i] += 1
        self.speed_sum[key] += per_second
        self.speed_count[key] += 1
        self.generated[key] += tokens

    def render(
        self,
        *,
        queue_depth: int,
        inflight: int,
        loaded: str | None,
        breakers: Mapping[str, int],
        breaker_opens: Mapping[str, int],
    ) -> str:
        out: list[str] = []

        def head(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        head(
            "llmctl_requests_total",
            "counter",
            "Requests answered, by profile, upstream and status.",
        )
        for (profile, upstream, status), n in sorted(self.requests.items()):
            lbl = _labels([("profile", profile), ("upstream", upstream), ("status", status)])
            out.append(f"llmctl_requests_total{lbl} {n}")
        head("llmctl_fallbacks_total", "counter", "Attempts that moved on to the next upstream.")
        for (upstream, reason), n in sorted(self.fallbacks.items()):
            out.append(
                f"llmctl_fallbacks_total{_labels([('upstream', upstream), ('reason', reason)])} {n}"
            )
        head("llmctl_rejected_total", "counter", "Requests refused before reaching an upstream.")
        for reason, n in sorted(self.rejected.items()):
            out.append(f"llmctl_rejected_total{_labels([('reason', reason)])} {n}")
        head("llmctl_queue_depth", "gauge", "Requests waiting for a model switch.")
        out.append(f"llmctl_queue_depth {queue_depth}")
        head("llmctl_inflight_requests", "gauge", "Requests in flight to the managed server.")
        out.append(f"llmctl_inflight_requests {inflight}")
        head("llmctl_loaded_profile", "gauge", "1 for the profile the managed server runs.")
        if loaded:
            out.append(f"llmctl_loaded_profile{_labels([('profile', loaded)])} 1")
        head("llmctl_switch_duration_seconds", "histogram", "Time to switch the managed server.")
        for key in sorted(self.switch_buckets):
            base = [("profile", key[0]), ("result", key[1])]
            for bound, n in zip(SWITCH_BUCKETS, self.switch_buckets[key], strict=True):
                lbl = _labels([*base, ("le", _num(bound))])
                out.append(f"llmctl_switch_duration_seconds_bucket{lbl} {n}")
            inf = _labels([*base, ("le", "+Inf")])
            out.append(f"llmctl_switch_duration_seconds_bucket{inf} {self.switch_count[key]}")
            out.append(
                f"llmctl_switch_duration_seconds_sum{_labels(base)} {self.switch_sum[key]:.6f}"
            )
            out.append(
                f"llmctl_switch_duration_seconds_count{_labels(base)} {self.switch_count[key]}"
            )
        head(
            "llmctl_generation_tokens_per_second",
            "histogram",
            "Requests by generation speed (tokens/s, llama-server's timings), by profile.",
        )
        for profile in sorted(self.speed_buckets):
            mine = [("profile", profile)]
            for bound, n in zip(SPEED_BUCKETS, self.speed_buckets[profile], strict=True):
                lbl = _labels([*mine, ("le", _num(bound))])
                out.append(f"llmctl_generation_tokens_per_second_bucket{lbl} {n}")
            count, total = self.speed_count[profile], self.speed_sum[profile]
            inf = _labels([*mine, ("le", "+Inf")])
            out.append(f"llmctl_generation_tokens_per_second_bucket{inf} {count}")
            out.append(f"llmctl_generation_tokens_per_second_sum{_labels(mine)} {total:.3f}")
            out.append(f"llmctl_generation_tokens_per_second_count{_labels(mine)} {count}")
        head(
            "llmctl_generated_tokens_total",
            "counter",
            "Tokens generated in answers that carry llama-server's timings, by profile.",
        )
        for profile, n in sorted(self.generated.items()):
            out.append(f"llmctl_generated_tokens_total{_labels([('profile', profile)])} {n}")
        head(
            "llmctl_breaker_state",
            "gauge",
            "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.",
        )
        for name, value in sorted(breakers.items()):
            out.append(f"llmctl_breaker_state{_labels([('upstream', name)])} {value}")
        head("llmctl_breaker_opens_total", "counter", "Times each breaker opened.")
        for name, value in sorted(breaker_opens.items()):
            out.append(f"llmctl_breaker_opens_total{_labels([('upstream', name)])} {value}")
        return "\n".join(out) + "\n"


def with_profile_label(servers: Iterable[tuple[str, str]]) -> str:
    """The metrics of each profile's llama-server (its own text format), with `profile="..."`
    added to every sample, so that one scrape of the router sees every server; HELP and TYPE
    lines once per metric name."""
    seen: set[tuple[str, str]] = set()
    out: list[str] = []
    for profile, text in servers:
        label = f'profile="{_escape(profile)}"'
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                key = (parts[1], parts[2]) if len(parts) >= 3 else (line, "")
                if key not in seen:
                    seen.add(key)
                    out.append(line)
                continue
            name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
            if name_end < 0:
                continue  # not a sample
            name, rest = line[:name_end], line[name_end:]
            if rest.startswith("{"):
                inner = rest[1:]
                sep = "" if inner.startswith("}") else ","
                out.append(f"{name}{{{label}{sep}{inner}")
            else:
                out.append(f"{name}{{{label}}}{rest}")
    return "".join(line + "\n" for line in out)


def render_order(
    depth: Mapping[str, int], passed_over_s: float, loads_avoided: int, swaps: Mapping[str, int]
) -> str:
    """The scheduler's order: requests waiting per profile, time passed over, loads avoided,
    swaps by reason."""
    out = [
        "# HELP llmctl_queue_depth_profile Requests waiting, by the profile they wait for.",
        "# TYPE llmctl_queue_depth_profile gauge",
    ]
    out += [
        f"llmctl_queue_depth_profile{_labels([('profile', p)])} {n}"
        for p, n in sorted(depth.items())
    ]
    out += [
        "# HELP llmctl_passed_over_seconds_total Time swaps waited while a loaded profile served.",
        "# TYPE llmctl_passed_over_seconds_total counter",
        f"llmctl_passed_over_seconds_total {passed_over_s:.6f}",
        "# HELP llmctl_loads_avoided_total Requests a loaded profile served while a swap waited.",
        "# TYPE llmctl_loads_avoided_total counter",
        f"llmctl_loads_avoided_total {loads_avoided}",
        "# HELP llmctl_swaps_total Loads that evicted a profile, by reason.",
        "# TYPE llmctl_swaps_total counter",
    ]
    out += [f"llmctl_swaps_total{_labels([('reason', r)])} {n}" for r, n in sorted(swaps.items())]
    return "\n".join(out) + "\n"
