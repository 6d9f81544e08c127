"""``dnnscaler``: our default policy — model-based choice of batching, instances or both.

The best static config for an SLO does not depend on the load, only on the latency surface
and the SLO. So the policy:

1. learns the surface ``c(b, m)`` from every window's executed batch sizes and compute
   times (``latency_surface``), with a contention prior from the known networks;
2. predicts each config's capacity under the tail SLO (``capacity_model``), corrected by
   what it has measured at configs it has run (a *floor*: highest load served within the
   SLO; a *ceiling*: lowest load that broke it);
3. moves to the best predicted config — one change at a time, after the previous one has
   been in force for ``dwell_s``, only for a predicted gain of ``min_gain`` or more
   (hysteresis: no oscillation in steady state), at most ``max_instance_step`` instances
   per change;
4. guards the measured tail: a window over the SLO records a ceiling for the config in force
   and triggers an immediate re-plan (no dwell) to a config predicted to do better.

The batcher queue delay is 0: with instances busy, batches form from what queued while they
ran; a delay would only add latency at light load. Knobs never leave ``obs.limits`` nor the
instance count that fits in GPU memory. Everything is reasoned from ``obs.knobs`` (what is
in force) and elapsed time (``obs.now_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

from dnnscaler.core.types import Approach, Knobs, Observation, instances_that_fit
from dnnscaler.policies.base import Decision
from dnnscaler.policies.capacity_model import capacity_rps, predicted_tail_ms
from dnnscaler.policies.config_records import (
    CLEAR_PASS,
    ConfigRecord,
    contention_calibration,
    headroom_rps,
    rescale_records,
    same_load_tail,
    update_records,
)
from dnnscaler.policies.latency_surface import Surface

MIN_TAIL_SAMPLES = 20
MAX_LOG_RATIO = 0.4
LIGHT_TAIL_WEIGHT = 0.1  # least calibration weight of a window (its tail far below the SLO)
STEADY_TAIL_FACTOR = 3.0  # windows with a tail beyond this many SLOs are a backlog
STEADY_GROWTH = 0.2  # or with the backlog growing by this share of the completions
MIN_EVIDENCE = 2.0  # full windows of compute statistics before the first planned move
DWELL_WINDOWS = 2.0  # the dwell is at least this many windows (second-scale models)
BACKOFF_WINDOWS = 30.0  # and the back-off memory at least this many
SURFACE_WINDOWS = 60.0  # the surface's half-life is at least this many windows
SLO_CHANGE_WINDOW_S = 30.0  # after an SLO change, a latency-bound tail steps batches down
OVERLOAD_GROWTH = 1.05  # measured load over throughput that means a growing backlog
OVERLOAD_TAIL = 2.0  # tail over this many SLOs means overloaded
EXPLORE_INSTANCES = 1  # planned moves go at most this far past the largest count run
BATCH_TIE = 0.1  # a violation move on cores takes half the batch for a forecast this close
EXPLORE_BATCH = 2  # on a cores device, a move's batch at most this many x the largest run
KNOWN_GOOD = 0.9  # a config whose floor is this share of the load is a safe retreat
UNTRIED_GAIN = 0.15  # predicted gain a planned move to a config never run needs
DRAIN_SHARE = 0.05  # a backlog shrinking by this share of the completions is draining
MARGINAL_OVER = 1.2  # a single window this little over the SLO may be noise
ROOMY = 1.25  # ... when the config is predicted to carry this many times the load
BROKEN_AT = 1.05  # a ceiling under this many times the load: measured to break this load
STALL_SHARE = 0.5  # a window serving under this share of the next one's rate was a stall
SAME_LOAD = 0.1  # tails measured at loads this close (a share) are compared as like for like
SAME_LOAD_WINDOWS = 3  # ... each config's median over at least this many steady windows
WORSE_LEAST = 2  # ... a config left, measured worse at this load, over at least this many
WORSE_TAIL = 1.25  # an exploration whose median tail is this many times the one left's
BEATEN_TAIL_SHARE = 0.3  # ... and at least this share of the SLO goes back (see below)
HEADROOM_ROOT = 3.0  # the config in force is credited load x (bound / tail) ** (1 / this) ...
HEADROOM_MOST = 1.5  # ... at most this many times the load (on cores devices)


@dataclass(frozen=True)
class PlanEntry:
    """One candidate config and its predicted capacity under the SLO."""

    max_batch_size: int
    instances: int
    capacity_rps: float  # corrected by measurements: what the plan ranks on


@dataclass(frozen=True)
class DnnScalerState:
    """Everything the policy learned and decided; JSON-persistable (``core.state_codec``)."""

    surface: Surface = field(default_factory=Surface)
    target: Knobs = field(default_factory=Knobs)
    changed_s: float = 0.0
    in_force_s: float | None = None
    slo_ms: float = 0.0
    slo_percentile: float = 0.0
    records: tuple[ConfigRecord, ...] = ()
    last_pending: int = 0
    last_throughput_rps: float = 0.0  # the previous window's (a stall shows as a drop)
    draining: bool = False  # the previous window was held as a backlog draining
    plan_key: str = ""
    plan: tuple[PlanEntry, ...] = ()
    plan_s: float = 0.0
    over_windows: int = 0
    tail_log_ratio: float = 0.0  # the same, over every config run (for the status display)
    tail_weight: float = 0.0
    recent_moves_s: tuple[float, ...] = ()  # when the last changes were made (back-off)
    left: tuple[tuple[int, int, float], ...] = ()  # (b, n, when) left by planned moves
    exploring: bool = False  # the target had never been run under this SLO when chosen
    slo_changed_s: float = -1e18  # when the SLO last changed
    explored_instances: int = 1  # the largest instance count measured (survives SLO changes)


def fit_during_change(obs: Observation, target: Knobs) -> int:
    """Instances that fit for ``target``, counting the memory a change under way holds.

    While a change is pending, the GPU holds both configs for a reload (batch size or delay
    changed: the new instances load before the old ones go) or the larger instance count
    for an in-place change, so the memory reading includes our own pending instances.
    """
    cur = obs.knobs
    if (cur.max_batch_size, cur.queue_delay_us) != (target.max_batch_size, target.queue_delay_us):
        ours = cur.instances + target.instances
    else:
        ours = max(cur.instances, target.instances)
    if cur == target:
        ours = cur.instances
    return instances_that_fit(obs.limits, ours, obs.instance_memory_mb, obs.gpu)


def batch_grid(max_batch_size: int) -> tuple[int, ...]:
    """Candidate batch sizes: powers of two up to the limit, and the limit itself."""
    out = [1]
    while out[-1] * 2 <= max_batch_size:
        out.append(out[-1] * 2)
    if out[-1] != max_batch_size:
        out.append(max_batch_size)
    return tuple(out)


@dataclass(frozen=True)
class DnnScalerPolicy:
    """Tunables; the defaults are what the benchmarks run."""

    dwell_s: float = 2.0  # a config stays in force this long before a planned change
    min_gain: float = 0.03  # planned changes need this predicted capacity gain
    tail_margin: float = 0.95  # plan for tails at this fraction of the SLO
    max_instance_step: int = 2
    apply_timeout_s: float = 10.0  # a target not in force after this is abandoned
    memory_s: float = 60.0  # half-life of the latency-surface evidence
    record_memory_s: float = 300.0  # measured floors/ceilings are forgotten after this
    tail_memory_s: float = 20.0  # half-life of the tail-model calibration
    backoff_memory_s: float = 60.0  # changes this recent lengthen the dwell
    replan_interval_s: float = 5.0  # unless over the SLO or the SLO moved
    name: str = "dnnscaler"

    def initial_state(self, obs: Observation) -> DnnScalerState:
        return DnnScalerState(
            target=obs.knobs,
            changed_s=obs.now_s,
            # We did not set the config in force: its first window measures it (waiting one
            # more window at an overloaded start only grows the backlog to drain).
            in_force_s=obs.now_s - obs.window.window_s,
            slo_ms=obs.slo.latency_ms,
            slo_percentile=obs.slo.percentile,
            # The backlog found at take-over counts as this window's growth: at an
            # overloaded start it is what tells the offered load from the throughput.
            last_pending=0,
        )

    # ------------------------------------------------------------------------------------

    def decide(self, obs: Observation, state: DnnScalerState) -> Decision[DnnScalerState]:
        n_fit = instances_that_fit(obs.limits, obs.knobs.instances, obs.instance_memory_mb, obs.gpu)
        prev_throughput = state.last_throughput_rps
        was_draining = state.draining
        state = replace(state, last_throughput_rps=obs.window.throughput_rps, draining=False)
        if (obs.slo.latency_ms, obs.slo.percentile) != (state.slo_ms, state.slo_percentile):
            state = replace(
                state,
                slo_ms=obs.slo.latency_ms,
                slo_percentile=obs.slo.percentile,
                records=(),
                plan_key="",
                over_windows=0,
                recent_moves_s=(),
                left=(),
                slo_changed_s=obs.now_s,
            )
        target = self._legal(state.target, obs, fit_during_change(obs, state.target))
        if target != state.target:
            state = replace(state, target=target, changed_s=obs.now_s, in_force_s=None)
        if not self._in_force(obs.knobs, target):
            if obs.now_s - state.changed_s < self.apply_timeout_s:
                return self._hold(state, "waiting for the change to take effect")
            # The agent did not apply it (or rolled it back): start again from what is true.
            target = self._legal(obs.knobs, obs, n_fit)
            state = replace(state, target=target, changed_s=obs.now_s, in_force_s=obs.now_s)
            return self._hold(state, "the previous change was not applied; re-planning")
        if state.in_force_s is None:
            pending = obs.window.pending_requests or 0
            state = replace(state, in_force_s=obs.now_s, last_pending=pending)
            return self._hold(state, "change in force; measuring")
        w = obs.window
        pending = w.pending_requests or 0
        if obs.now_s - w.window_s < state.in_force_s - 1e-6:
            # This window mixes the old config; do not learn from it.
            return self._hold(replace(state, last_pending=pending), "settling")
        latency = obs.latency_ms
        if latency is None or w.completed == 0:
            return self._hold(replace(state, last_pending=pending), "no completed requests")

        surface = state.surface.observe(
            w, obs.knobs.instances, obs.now_s, self._surface_memory(obs), obs.knobs.max_batch_size
        )
        if not surface.known:
            return self._hold(replace(state, last_pending=pending), "no compute statistics yet")
        if (
            surface.shift_s == obs.now_s
            and surface.shift_s != state.surface.shift_s
            and surface.shift_ratio > 1.0
        ):
            # The device got slower under the config in force (a co-located model): what
            # was measured at every config scales down with it. A reading of "faster" is
            # not acted on: a floor stays a lower bound and a ceiling stands until a clear
            # pass above it lifts it, or the records' memory ends. On real Triton such
            # readings came from a batch law mispredicting a new config, and scaling up
            # made capacity that was never measured: b16 n1's floor of ~1,120 rps became
            # 2,410 after b32 n3 read 2.2 x "faster", and the policy went back to it
            # (12-05 CI run 9, resnet_small, 0.64 x the oracle); b4 n3's ceiling of 483
            # rps became 667 and it was run again over the SLO (12-05 landing CI,
            # wide_mlp, 0.68 x).
            state = replace(state, records=rescale_records(state.records, 1 / surface.shift_ratio))
        assert state.in_force_s is not None  # set above; the replace hides it from mypy
        moves = tuple(t for t in state.recent_moves_s if obs.now_s - t < self._memory(obs))
        load = w.throughput_rps + max(0, pending - state.last_pending) / max(w.window_s, 1e-6)
        slo = obs.slo.latency_ms
        over = latency > slo
        shrink = state.last_pending - pending
        # The first full window after a change that stalled the server (a Triton reload
        # serves next to nothing for seconds) still serves what queued meanwhile: a tail
        # over the SLO there, with the backlog shrinking, is the change's cost, not this
        # config's.
        first = obs.now_s - w.window_s < state.in_force_s + 0.5 * w.window_s
        stalled = first and prev_throughput < STALL_SHARE * w.throughput_rps
        if w.pending_requests is not None and (
            (latency > OVERLOAD_TAIL * slo and shrink > DRAIN_SHARE * w.completed)
            or (stalled and latency > slo and shrink > 0)
            # The drain's last window: what was left of the backlog went (by less than
            # DRAIN_SHARE) and its requests, queued since the drain began, set the tail. On
            # 12-07 (fresh clone 82) serial_io's b2 n5 drained 101 -> 7 -> 0 requests; the
            # window ending at 0 read p99 2,253 ms of 63.2, was taken for b2 n5's own, and
            # the policy left it for b4 n3, which carried 0.71 of the oracle's b1 n4.
            or (was_draining and latency > OVERLOAD_TAIL * slo and shrink > 0)
        ):
            # The backlog shrinks: the config in force serves more than arrives, and the
            # tail is the wait the backlog inherited (from a previous config or a burst).
            # Not a measurement of this config: no ceiling, no move, no tail calibration.
            return self._hold(
                replace(
                    state,
                    surface=surface,
                    last_pending=pending,
                    recent_moves_s=moves,
                    draining=True,
                ),
                f"draining a backlog of {pending} requests (p{obs.slo.percentile:g} "
                f"{latency:.1f}ms / SLO {slo:.1f}ms)",
            )
        planned = next(
            (p.capacity_rps for p in state.plan if _key(p) == _key(target)),
            0.0,
        )
        marginal = latency <= MARGINAL_OVER * slo and planned >= ROOMY * load
        # A change we made (at take-over the config in force was not ours: no cost to wait
        # out, and an overloaded start is acted on at once).
        after_change = (
            first
            and state.in_force_s >= state.changed_s
            and (latency <= OVERLOAD_TAIL * slo or load <= OVERLOAD_GROWTH * w.throughput_rps)
        )
        if over and state.over_windows == 0 and (after_change or marginal):
            # One window over the SLO after a passing one (or after a change) is watched: no
            # ceiling, no move; a second one in a row acts. Two kinds of window are not yet
            # a measurement of the config. One a little over the SLO at a load well inside
            # what the config is predicted to carry: a window's p99 rests on its slowest few
            # requests, so this is likely noise (a host hiccup). And the first window after
            # a change: it still carries the change's cost (a Triton reload
            # serves next to nothing for a second or more, and what queued meanwhile waits
            # in this window) whether or not its backlog shrinks. On 12-07 (fresh clone 61)
            # such a window, p99 122.8 ms of 65.2 with the backlog not shrinking, set the
            # ceiling of ``wide_mlp``'s b8 n2, the oracle's config; the policy retreated and
            # ended at b4 n3, which failed 0.7 x the load b8 n2 carried. Past
            # ``OVERLOAD_TAIL`` SLOs only while the backlog does not grow (fresh clone 64:
            # p99 6.4 x the SLO after an 8 s reload of resnet_small's b8 n2, the oracle's
            # config, retreated from); a growing one is an overload, acted on at once
            # (waiting on it cost the sim's interference test 10 windows over the SLO).
            kind = "the first window after the change" if after_change else "one window"
            return self._hold(
                replace(
                    state,
                    surface=surface,
                    last_pending=pending,
                    over_windows=1,
                    recent_moves_s=moves,
                ),
                f"{kind} over the SLO, watching (p{obs.slo.percentile:g} {latency:.1f}ms"
                f" / SLO {slo:.1f}ms)",
            )
        # Whether the config in force had served this load with margin before this window.
        proven = any(
            _key(r) == _key(target) and r.floor_rps >= KNOWN_GOOD * load for r in state.records
        )
        clear = latency <= CLEAR_PASS * slo
        records = update_records(
            state.records,
            target,
            load,
            over,
            clear,
            obs.now_s,
            self.record_memory_s,
            tail_ms=None if first else latency,
        )
        state = replace(
            state,
            surface=surface,
            records=records,
            last_pending=pending,
            over_windows=state.over_windows + 1 if over else 0,
            recent_moves_s=moves,
            explored_instances=max(state.explored_instances, target.instances),
        )
        state = self._learn_tail(state, obs, target, load, latency)
        state = self._replan(state, obs, n_fit, urgent=over)
        caps = {_key(p): p.capacity_rps for p in state.plan}
        if not caps:
            return self._hold(state, "no feasible config predicted")
        best = max(state.plan, key=lambda p: p.capacity_rps)
        cur_cap = caps.get(_key(target), 0.0)
        why_tail = f"p{obs.slo.percentile:g} {latency:.1f}ms / SLO {slo:.1f}ms at {load:.0f} rps"
        in_force_s = obs.now_s if state.in_force_s is None else state.in_force_s
        since = obs.now_s - in_force_s
        # Overloaded: the backlog grows or the tail is far past the SLO, not merely a
        # pessimistic prediction. Only then is the optimistic fallback worth its risk.
        overloaded = load > OVERLOAD_GROWTH * w.throughput_rps or latency > OVERLOAD_TAIL * slo
        cores_device = w.device_busy_share is not None
        # On a cores device no move, planned or not, goes to a batch size far past those
        # run at its instance count (``_batch_reach``).
        reach = (
            {n: _batch_reach(state.records, n) for n in range(1, obs.limits.max_instances + 1)}
            if cores_device
            else {}
        )
        reachable = [
            p
            for p in state.plan
            if not cores_device
            or p.max_batch_size <= reach.get(p.instances, math.inf)
            or _key(p) == _key(target)
        ]
        if over:
            best = max(reachable, key=lambda p: p.capacity_rps, default=best)
            broken = {
                _key(r)
                for r in state.records
                if 0 < r.ceiling_rps <= BROKEN_AT * load and _key(r) != _key(target)
            }
            retreat = (
                self._retreat(state, target, load, broken, caps)
                if state.exploring and not proven
                else None
            )
            if retreat is not None:
                # The config in force was never run before, never served this load with
                # margin, and broke the SLO at a load that a config run before did serve:
                # the experiment failed, so go back to what is known to work rather than to
                # the next prediction (the model that predicted this one was just proven
                # wrong). A config that had served the load first and broke later saw the
                # device change (a co-located model): old floors are no guide then.
                entry = PlanEntry(
                    retreat.max_batch_size, retreat.instances, caps.get(_key(retreat), 0.0)
                )
                return self._move(state, obs, entry, n_fit, f"retreat ({why_tail}): ")
            if best.capacity_rps < load and overloaded:
                # Nothing is predicted to hold this load with margin: take the config with
                # the most raw capacity (drain the backlog), unless that is where we are.
                raw_caps = self._raw_capacities(state, obs, n_fit)
                cur_raw = raw_caps.get(_key(target), 0.0)
                if cores_device:
                    raw_caps = {
                        k: c for k, c in raw_caps.items() if k[0] <= reach.get(k[1], math.inf)
                    } or raw_caps
                    # Overloaded, the config in force completes all it can: what it
                    # completed is its raw capacity, whatever the model says (12-07: at
                    # b16 n1 completing 420 rps the model's 345 sent the policy to b64 n1,
                    # predicted 365).
                    cur_raw = max(cur_raw, w.throughput_rps)
                raw_key = max(raw_caps, key=lambda k: raw_caps[k])
                raw = PlanEntry(raw_key[0], raw_key[1], raw_caps[raw_key])
                if raw.capacity_rps > cur_raw * (1.0 + self.min_gain):
                    return self._move(
                        state, obs, raw, n_fit, f"overloaded ({why_tail}): ", overloaded=True
                    )
                return self._hold(state, f"overloaded at the best known config ({why_tail})")
            if not overloaded:
                # Latency-bound: bigger batches are not the remedy, so the guard only looks
                # at configs with batches no bigger than the current ones, or at configs
                # measured to serve this load with margin (a retreat to a known-good config:
                # after an exploration into contention the remedy is fewer instances).
                # A config measured to break the SLO at this load is no remedy either (or
                # under a load no config holds, the guard and the overload fallback would
                # swap two configs for ever).
                good = {
                    _key(r)
                    for r in state.records
                    if r.floor_rps >= KNOWN_GOOD * load
                    and (r.ceiling_rps <= 0 or r.ceiling_rps > load)
                }
                best = max(
                    (
                        p
                        for p in reachable
                        if (p.max_batch_size <= target.max_batch_size or _key(p) in good)
                        and _key(p) not in broken
                    ),
                    key=lambda p: p.capacity_rps,
                    default=PlanEntry(target.max_batch_size, target.instances, cur_cap),
                )
            if cores_device and best.max_batch_size >= target.max_batch_size:
                best = _half_batch(reachable, best, BATCH_TIE)
            if best.capacity_rps > cur_cap * (1.0 + self.min_gain):
                return self._move(state, obs, best, n_fit, f"over the SLO ({why_tail}): ")
            tightened = obs.now_s - state.slo_changed_s < SLO_CHANGE_WINDOW_S
            if (
                tightened
                and not overloaded
                and target.max_batch_size > 1
                and state.over_windows >= 2
            ):
                # The SLO just moved, the tail broke it twice in a row and the model knows
                # nothing better: the batches sized for the old SLO are too long, so one grid
                # step smaller. (Under a rising load the same symptom means too little
                # capacity: not this remedy.)
                grid = batch_grid(target.max_batch_size)
                step = PlanEntry(grid[-2], target.instances, 0.0)
                return self._move(state, obs, step, n_fit, f"latency-bound ({why_tail}): ")
            wider = (target.max_batch_size, target.instances + 1)
            saturated = surface.saturated_m
            if (
                not overloaded
                and state.over_windows >= 2
                and target.instances < n_fit
                and not any(_key(r) == wider and r.ceiling_rps > 0 for r in state.records)
                and (saturated is None or wider[1] <= saturated)
            ):
                # Over the SLO twice in a row with the backlog steady and no better config
                # predicted: the tail is queueing behind busy instances, which one more
                # instance shortens, unless the device is seen saturated (it would only
                # time-share). Only once per config: if it broke the SLO too (at any load,
                # within the records' memory), the rule does not send the policy back (under
                # a load no config holds, it fed the hunting between configs).
                step = PlanEntry(wider[0], wider[1], 0.0)
                return self._move(state, obs, step, n_fit, f"queueing ({why_tail}): ")
            return self._hold(state, f"over the SLO at the best known config ({why_tail})")
        # Each recent change doubles the dwell before the next planned one: exploration
        # is allowed, oscillation is not.
        dwell = max(self.dwell_s, DWELL_WINDOWS * obs.window.window_s)
        if since < dwell * 2.0 ** len(state.recent_moves_s):
            return self._hold(state, f"dwelling ({why_tail})")
        if sum(surface.bin_w) < MIN_EVIDENCE:
            return self._hold(state, f"learning the latency surface ({why_tail})")
        # No planned return to a config a planned move left within the back-off memory: the
        # config in force looks worse the more it is measured while the one left looks
        # better as its evidence decays, and the two would swap for ever. Unless the config
        # in force was an exploration (never run before): coming back from one is its
        # point. (A violation still moves anywhere.)
        left = (
            set()
            if state.exploring
            else {(b, n) for b, n, t in state.left if obs.now_s - t < self._memory(obs)}
        )
        back = self._beaten_exploration(state, target, load, slo) if cores_device else None
        if back is not None:
            rec, here_tail, left_tail = back
            # Mark the exploration beaten, so that the plan ranks it below the config left
            # while its record lives (or, tried now, a 3 % predicted gain would send the
            # policy back to it as soon as the back-off memory ends).
            state = replace(
                state,
                records=tuple(
                    replace(r, beaten_by=_key(rec)) if _key(r) == _key(target) else r
                    for r in state.records
                ),
            )
            entry = PlanEntry(rec.max_batch_size, rec.instances, caps.get(_key(rec), 0.0))
            return self._move(
                state,
                obs,
                entry,
                n_fit,
                f"exploration beaten at the same load (p{obs.slo.percentile:g} {here_tail:.1f}ms"
                f" vs {left_tail:.1f}ms at b{rec.max_batch_size}n{rec.instances}, {load:.0f} rps):"
                " ",
            )
        credit = self._headroom(state, target, load, slo) if cores_device else 0.0
        useful = _useful(surface, target, n_fit)
        chosen = self._planned_move(
            [p for p in reachable if _key(p) not in left and p.instances <= useful],
            PlanEntry(target.max_batch_size, target.instances, cur_cap),
            state.records,
            exploring=state.exploring,
            cores_device=cores_device,
            headroom=credit,
            worse_here=(
                _worse_at_load(state.records, target, load, slo)
                if state.exploring and cores_device
                else frozenset()
            ),
        )
        if chosen is not None:
            recent = tuple(x for x in state.left if obs.now_s - x[2] < self._memory(obs))
            gone = (target.max_batch_size, target.instances, obs.now_s)
            state = replace(state, left=(*recent[-5:], gone))
            return self._move(state, obs, chosen, n_fit, f"{why_tail}: ")
        credited = f", {credit:.0f} by its tail's headroom" if credit > cur_cap else ""
        return self._hold(
            state, f"holding, predicted capacity {cur_cap:.0f} rps{credited} ({why_tail})"
        )

    # ------------------------------------------------------------------------------------

    def _surface_memory(self, obs: Observation) -> float:
        """The surface's half-life: seconds, or windows for slow models (a second-scale
        model's windows are ~10 s long: 60 s kept under five windows of evidence)."""
        return max(self.memory_s, SURFACE_WINDOWS * obs.window.window_s)

    def _memory(self, obs: Observation) -> float:
        """How long a change counts in the back-off: seconds, or windows for slow models."""
        return max(self.backoff_memory_s, BACKOFF_WINDOWS * obs.window.window_s)

    def _planned_move(
        self,
        candidates: list[PlanEntry],
        here: PlanEntry,
        records: tuple[ConfigRecord, ...],
        exploring: bool,
        cores_device: bool,
        headroom: float = 0.0,
        worse_here: frozenset[tuple[int, int]] = frozenset(),
    ) -> PlanEntry | None:
        """The planned move from ``here`` (the config in force and its predicted capacity)
        among ``candidates``, or None to hold.

        The best predicted config, for a gain of ``min_gain`` (``UNTRIED_GAIN`` if it was
        never run: a prediction only must promise more, and more than ``headroom``, what the
        config in force is credited for its tail's room under the SLO: see ``_headroom``).
        On a device whose cores are its
        compute (a CPU: it reports its busy share) the contention prior (the known GPUs'
        curves) is not that device's, so an exploration the model, now that it measured
        it, cannot tell (within ``min_gain``) from a config with fewer instances ends
        there (12-06 CI run 21: b4 n3, explored from b4 n2, at 616 rps against b8 n2 at
        608 held b4 n3, which carried 0.68 x b8 n2 on the ladder). Not on GPUs: on ``bench
        sim`` (seed 0) the same rule raised the violation rate 7.7 % -> 8.3 % and the knob
        changes, for no capacity. Never to a config in ``worse_here``: measured at this load
        with a tail ``WORSE_TAIL`` times the one in force (``_worse_at_load``).
        """
        cur_cap = here.capacity_rps
        best = max(candidates, key=lambda p: p.capacity_rps, default=here)
        tried = any(_key(r) == _key(best) for r in records)
        gain = self.min_gain if tried else UNTRIED_GAIN
        if best.capacity_rps >= (cur_cap if tried else max(cur_cap, headroom)) * (1.0 + gain):
            return best if _key(best) != _key(here) else None
        if exploring and cores_device:
            frugal = _frugal(
                [p for p in candidates if _key(p) not in worse_here], best, self.min_gain
            )
            if (
                frugal.instances < here.instances
                and frugal.capacity_rps >= (1.0 - self.min_gain) * cur_cap
            ):
                return frugal
        return None

    def _headroom(self, state: DnnScalerState, target: Knobs, load: float, slo_ms: float) -> float:
        """What the config in force is credited to carry for its median steady tail at this
        load (``SAME_LOAD_WINDOWS`` or more), 0 without one. Only on a device whose cores
        are its compute, and only against a config never run (``_planned_move``).

        Its plan capacity is the model's prediction or its floor, the load it served. Where
        the model under-predicts it, a floor is all it shows while the load stays under its
        capacity, and a forecast for a config never run wins by default: ``wide_mlp`` on a
        2-core CPU left b8 n2 (p99 24 ms of a 54 ms SLO at 710 rps; 12-06 CI run 32) for
        b4 n3 forecast at 863 rps, and (p99 14.6 ms of 50 ms at 713 rps; the landing CI of
        bd0142a) for b4 n2 forecast at 1,044. b8 n2 then carried 1,212 and 1,436 rps, 1.7
        and 2.0 x the load; b4 n3 and b4 n2 failed 849 and 972. The credit, load x (bound /
        tail) ** (1 / 3) at most 1.5 x, is 915 and 1,058 there (the moves needed 15 % over
        it); the square root would give 1,038 and 1,289, and over-credits b4 n2 itself (p99
        22 ms at 926 rps: 1,351 against the ~950 it carried), the cube root 1,191. The first
        move of each real-Triton run (b16 n1 to b8 n2, forecast 1.3-1.7 x its credit) stays
        clear of it. Not on GPUs: ``bench sim`` was tuned without it.
        """
        rec = next((r for r in state.records if _key(r) == _key(target)), None)
        if rec is None:
            return 0.0
        tail = same_load_tail(rec, load, SAME_LOAD, SAME_LOAD_WINDOWS)
        if tail is None:
            return 0.0
        bound = self.tail_margin * slo_ms
        return headroom_rps(rec, load, bound, tail, HEADROOM_ROOT, HEADROOM_MOST)

    @staticmethod
    def _beaten_exploration(
        state: DnnScalerState, target: Knobs, load: float, slo_ms: float
    ) -> tuple[ConfigRecord, float, float] | None:
        """The config a planned move left for an exploration with more instances, if both
        served about this load and the exploration's median tail was ``WORSE_TAIL`` times
        the left one's: (its record, the exploration's tail, its tail).

        Only on a device whose cores are its compute. There the contention prior (the known
        GPUs' curves) can promise capacity from instances that only time-share the cores,
        and at a load well under capacity no window breaks the SLO to refute it: both
        configs pass, and the plan compares a floor (the load served) with a forecast. Their
        tails at the same load are a measurement, like for like (12-06 CI run 32:
        ``wide_mlp`` left b8 n2, p99 24 ms of a 54 ms SLO at 710 rps, for b4 n3 predicted
        at 863 rps; b4 n3 then failed 849 rps where b8 n2 carried 1,212).

        Not for an exploration that also raised the batch size: a bigger batch lengthens
        each request's service at any load, so its worse tail far under capacity is the
        batching trade, not contention (CI run 46: ``wide_mlp`` went b4 n2 -> b8 n3 at
        54 % of b4 n2's capacity, read p99 23.4 against 17.0 ms and went back to b4 n2,
        0.71 of the oracle's b8 n4).

        Nor for tails far under the SLO (under ``BEATEN_TAIL_SHARE`` of it): there a tail is
        a batch's service and the threads' scheduling, not queueing behind contended
        cores, and it does not rank capacities (12-07 fresh clone 71, a quiet host:
        ``resnet_small`` explored b8 n2 from b16 n1 at 515 rps, read p99 26.3 against
        18.7 ms, 0.12 and 0.09 of a 213.7 ms SLO, went back to b16 n1 and ended at 0.68 of
        the oracle's b8 n4, which b8 n2 had nearly matched in the sweep, 798 against 810
        rps; in run 32's case the rule needed b4 n3's tail at 1.25 x b8 n2's 24 ms of a
        54 ms SLO, 0.56 of it).
        """
        if not state.exploring or not state.left:
            return None
        b, n, _ = state.left[-1]
        if n >= target.instances or target.max_batch_size > b:
            return None
        recs = {_key(r): r for r in state.records}
        here, left = recs.get(_key(target)), recs.get((b, n))
        if here is None or left is None or 0 < left.ceiling_rps <= BROKEN_AT * load:
            return None
        here_tail = same_load_tail(here, load, SAME_LOAD, SAME_LOAD_WINDOWS)
        left_tail = same_load_tail(left, load, SAME_LOAD, SAME_LOAD_WINDOWS)
        if here_tail is None or left_tail is None or here_tail <= WORSE_TAIL * left_tail:
            return None
        if here_tail < BEATEN_TAIL_SHARE * slo_ms:
            return None
        return left, here_tail, left_tail

    @staticmethod
    def _retreat(
        state: DnnScalerState,
        target: Knobs,
        load: float,
        broken: set[tuple[int, int]],
        caps: dict[tuple[int, int], float],
    ) -> ConfigRecord | None:
        """Of the configs measured to serve ``load`` with margin, the one the plan ranks
        highest, if any.

        Not the highest floor: at a steady load every config run has a floor near that
        load, so the highest one is noise (12-03 in CI: ``wide_mlp`` went back to b4 n2,
        floor 402 rps, rather than b16 n2, floor 394, which carries more, and ended at
        0.86 x the oracle). Every candidate is safe at this load; the plan (floors and
        ceilings included) says which carries the most.
        """
        here = _key(target)
        good = [
            r
            for r in state.records
            if r.floor_rps >= KNOWN_GOOD * load
            and (r.ceiling_rps <= 0 or r.ceiling_rps > load)
            and _key(r) != here
            and _key(r) not in broken
        ]
        return max(good, key=lambda r: (caps.get(_key(r), r.floor_rps), r.floor_rps), default=None)

    @staticmethod
    def _in_force(knobs: Knobs, target: Knobs) -> bool:
        return _key(knobs) == _key(target)

    @staticmethod
    def _legal(k: Knobs, obs: Observation, n_fit: int) -> Knobs:
        k = k.clamp(obs.limits)
        return Knobs(k.max_batch_size, min(k.instances, max(1, n_fit)), 0)

    def _hold(self, state: DnnScalerState, why: str) -> Decision[DnnScalerState]:
        return Decision(state.target, state, _approach(state.target), why)

    def _move(
        self,
        state: DnnScalerState,
        obs: Observation,
        best: PlanEntry,
        n_fit: int,
        why: str,
        overloaded: bool = False,
    ) -> Decision[DnnScalerState]:
        cur = state.target
        step = self.max_instance_step * (2 if overloaded else 1)
        n = min(max(best.instances, cur.instances - step), cur.instances + step)
        new = self._legal(Knobs(best.max_batch_size, n, 0), obs, n_fit)
        if new == cur:
            return self._hold(state, why + "no legal step")
        recent = tuple(t for t in state.recent_moves_s if obs.now_s - t < self._memory(obs))
        fresh = not any(_key(r) == _key(new) for r in state.records)
        state = replace(
            state,
            exploring=fresh,
            target=new,
            changed_s=obs.now_s,
            in_force_s=None,
            over_windows=0,
            recent_moves_s=(*recent[-5:], obs.now_s),
        )
        return Decision(
            new,
            state,
            _approach(new),
            why + f"b {cur.max_batch_size}->{new.max_batch_size}, n {cur.instances}->{n} "
            f"(predicted {best.capacity_rps:.0f} rps)",
        )

    def _learn_tail(
        self, state: DnnScalerState, obs: Observation, knobs: Knobs, load: float, latency: float
    ) -> DnnScalerState:
        """Calibrate the tail model on what the config in force measured at this load.

        Only steady windows count: a backlog (draining after a change, or an overload)
        says nothing about the config's tail at this load.
        """
        w = obs.window
        growing = (w.pending_requests or 0) - state.last_pending
        if (
            w.completed < MIN_TAIL_SAMPLES
            or latency > STEADY_TAIL_FACTOR * obs.slo.latency_ms
            or growing > STEADY_GROWTH * w.completed
        ):
            return state
        surface = state.surface
        n = knobs.instances
        curve = surface.curve(max(n, len(surface.bin_w)))
        peak = surface.peak_rps(curve, obs.limits.max_batch_size)
        pred = predicted_tail_ms(
            load,
            n,
            knobs.max_batch_size,
            curve[n - 1],
            surface.law,
            obs.slo.percentile / 100.0,
            peak,
        )
        if not (0 < pred < math.inf):
            return state
        r = min(MAX_LOG_RATIO, max(-MAX_LOG_RATIO, math.log(latency / pred)))
        keep = 0.5 ** (obs.window.window_s / self.tail_memory_s)
        # The calibration corrects capacities, i.e. tails at the SLO: a window far below it
        # (light load, a different regime of the queue) says little about them.
        u = min(1.0, max(LIGHT_TAIL_WEIGHT, pred / (self.tail_margin * obs.slo.latency_ms)))
        gw = state.tail_weight * keep + u
        glog = (state.tail_log_ratio * state.tail_weight * keep + u * r) / gw
        recs = list(state.records)
        rec = recs[-1]  # _record leaves the config in force last
        rw = rec.tail_weight * keep + u
        rlog = (rec.tail_log_ratio * rec.tail_weight * keep + u * r) / rw
        recs[-1] = replace(rec, tail_log_ratio=rlog, tail_weight=rw)
        return replace(state, records=tuple(recs), tail_log_ratio=glog, tail_weight=gw)

    def _raw_capacities(
        self, state: DnnScalerState, obs: Observation, n_fit: int
    ) -> dict[tuple[int, int], float]:
        """The uncorrected model at the SLO, optimistic about every unexplored instance
        count: the overload fallback (computed only when overloaded)."""
        surface = state.surface
        n_max = max(1, min(obs.limits.max_instances, n_fit))
        grid = batch_grid(obs.limits.max_batch_size)
        bold = surface.curve(n_max, optimism_steps=n_max)
        peak = surface.peak_rps(bold, grid[-1])
        q = obs.slo.percentile / 100.0
        ratios = contention_calibration(state.records, n_max)
        slo_ms = obs.slo.latency_ms
        return {
            (b, n): capacity_rps(
                n, b, bold[n - 1], surface.law, slo_ms / math.exp(ratios[n - 1]), q, peak
            )
            for n in range(1, n_max + 1)
            for b in grid
        }

    def _replan(
        self, state: DnnScalerState, obs: Observation, n_fit: int, urgent: bool
    ) -> DnnScalerState:
        surface = state.surface
        n_max = max(1, min(obs.limits.max_instances, n_fit))
        grid = batch_grid(obs.limits.max_batch_size)
        curve = surface.curve(n_max)
        key = ";".join(
            [
                f"{obs.slo.latency_ms:.4g}/{obs.slo.percentile:g}/{n_max}/{grid[-1]}",
                f"{surface.law.key()}/{_q(math.exp(state.tail_log_ratio))}"
                f"/{state.explored_instances}",
                ",".join(_q(x) for x in curve),
                ",".join(
                    f"{r.max_batch_size}/{r.instances}/{_q(r.floor_rps)}/{_q(r.ceiling_rps)}"
                    f"/{_q(math.exp(r.tail_log_ratio))}/{r.beaten_by}"
                    for r in state.records
                ),
            ]
        )
        if key == state.plan_key:
            return state
        same_slo = state.plan_key.split(";", 1)[0] == key.split(";", 1)[0]
        if same_slo and not urgent and obs.now_s - state.plan_s < self.replan_interval_s:
            return state  # re-planning costs milliseconds: not on every bit of noise
        # The roofline prior is optimistic about unexplored instance counts, or a
        # pessimistic guess would cap every config at what was seen so far.
        bold = surface.curve(n_max, optimism_steps=n_max)
        peak = surface.peak_rps(bold, grid[-1])
        bound = self.tail_margin * obs.slo.latency_ms
        quantile = obs.slo.percentile / 100.0
        recs = {_key(r): r for r in state.records}
        ratios = contention_calibration(state.records, n_max)
        # Instance counts more than EXPLORE_INSTANCES beyond the largest one measured are not
        # candidates: their contention is the prior's guess (the known GPUs' curves), which
        # a different device (a 2-core CPU) can miss by a factor of two. Instances are
        # explored one measured step at a time; the overload fallback is not bounded.
        n_plan = min(n_max, state.explored_instances + EXPLORE_INSTANCES)
        plan = []
        for n in range(1, n_plan + 1):
            lat = curve[n - 1]
            # Calibration is shared by the batch sizes of one instance count: contention, not
            # batching, is what the queueing model gets wrong, and per-config ratios learned
            # at different loads would make the configs not in force look greener.
            scaled = bound / math.exp(ratios[n - 1])
            model = {b: capacity_rps(n, b, lat, surface.law, scaled, quantile, peak) for b in grid}
            # A ceiling measured at one batch size scales its siblings' predictions too (by
            # the square root: batch size still matters), or a violation would only send the
            # policy to the next untried sibling.
            factor = 1.0
            for b in grid:
                r = recs.get((b, n))
                if r is not None and r.ceiling_rps > 0 and model[b] > 0:
                    factor = min(factor, 0.97 * r.ceiling_rps / model[b])
            for b in grid:
                cap = model[b] * math.sqrt(factor)
                r = recs.get((b, n))
                if r is not None:
                    cap = max(cap, r.floor_rps)
                    if r.ceiling_rps > 0:
                        cap = min(cap, 0.97 * r.ceiling_rps)
                plan.append(PlanEntry(b, n, cap))
        # A config beaten at the same load by another ranks just below it.
        caps = {_key(p): p.capacity_rps for p in plan}
        plan = [
            replace(p, capacity_rps=min(p.capacity_rps, 0.97 * caps[beaten]))
            if (r := recs.get(_key(p))) is not None
            and (beaten := r.beaten_by) is not None
            and beaten in caps
            else p
            for p in plan
        ]
        # Every choice takes the highest capacity (``max`` keeps the first of equals), so
        # the order only breaks exact ties, as when one floor or ceiling sets several
        # configs' capacity: fewer instances, then smaller batches (less memory, less
        # batch-size drift). (It used to rank by capacity rounded to 3 %, which read as a
        # 3 % tie-break but, under ``max``, never acted as one.)
        plan.sort(key=_rank)
        return replace(state, plan_key=key, plan=tuple(plan), plan_s=obs.now_s)


def _useful(surface: Surface, target: Knobs, n_max: int) -> int:
    """The most instances a planned move may go to: ``n_max``, or on a cores device the
    instances it runs on compute of their own (``Surface.useful_instances``) if fewer;
    never under the count in force (a bound on adding instances, not a reason to move).
    Planned moves only: they act on forecasts alone. A violation still moves anywhere
    (the busy share overstates an instance's share: it counts the frontend and a load
    generator sharing the host; fresh clone 84's ``resnet_small``, over the SLO at b32 n2,
    went to b16 n2 under the bound where it had gone to b16 n3 without, and read 0.70 of
    the oracle's b8 n4).

    On such a device the contention prior (the known GPUs' curves) promises capacity from
    instances that only time-share the cores, and at a load well under capacity no window
    refutes it: on 12-07 (the stop-32 landing CI, a quiet host) ``wide_mlp`` held b4 n2 at
    349 rps, then moved to b1 n3 (predicted 650 rps) and b2 n4 (635), which failed the
    ladder's first rung, 419 rps, with 282 errors, against the oracle's b8 n2 at 618; and
    (fresh clone 81) b16 n2 went to b8 n3, predicted 1,977 rps, which carried 0.70 of the
    oracle's b8 n1. In the recorded windows each ``wide_mlp`` instance computing took
    0.54-0.77 of the host (two useful), each ``serial_io`` one 0.15 (seven).
    """
    useful = surface.useful_instances
    if useful is None:
        return n_max
    return max(1, min(n_max, max(useful, target.instances)))


def _batch_reach(records: tuple[ConfigRecord, ...], instances: int) -> float:
    """The largest batch size a move to ``instances`` may take on a cores device:
    ``EXPLORE_BATCH`` x the largest run at that count, or at the nearest count run below it
    (above it, if none below); unbounded before any config was run.

    The batch law is one table for every instance count, but on a CPU the cost of a batch
    depends on the count: one instance runs its batches on every core, two share them.
    Batches measured at one count and ratios at another then read as batching for free
    (12-07, ``resnet_small`` on the 2-core box: b16 at 15 ms from b16 n1, b8 at 13 ms
    from b8 n2, so f(16)/f(8) = 1.2). The plan forecast b32 n2 at 3,899 rps while b8 n2
    completed 1,000 rps with the host 0.93-1.00 busy; b32 n2's batches then took 48-67 ms,
    the same cost per item as b8's. One grid step at a time, each measured at its count
    before the next, as ``EXPLORE_INSTANCES`` does for instances. The same model under an
    overloaded start went b16 n1 -> b64 n1 by the overload fallback, then b32 n1 and b32 n2,
    and missed (0.00 of the oracle's b8 n4 on 12-07, 19:20).
    """
    by_count: dict[int, int] = {}
    for r in records:
        by_count[r.instances] = max(by_count.get(r.instances, 0), r.max_batch_size)
    if not by_count:
        return math.inf
    below = [n for n in by_count if n <= instances]
    n = max(below) if below else min(by_count)
    return EXPLORE_BATCH * by_count[n]


def _worse_at_load(
    records: tuple[ConfigRecord, ...], target: Knobs, load: float, slo_ms: float
) -> frozenset[tuple[int, int]]:
    """The configs run at about this load (``SAME_LOAD``) whose median tail there, over
    ``WORSE_LEAST`` windows or more, was ``WORSE_TAIL`` times the config in force's (over
    ``SAME_LOAD_WINDOWS``) and at least ``BEATEN_TAIL_SHARE`` of the SLO: measured worse,
    like for like. (Two windows suffice for the config left: a move leaves it after its
    first steady windows.)

    The frugal end of an exploration (``_planned_move``) goes back to fewer instances when
    the plan cannot tell them apart, and on a CPU the plan is often flat, every config
    capped by one roofline. Fresh clone 91 (12-08): ``resnet_small`` at ~1,000 rps went
    b16 n1 (p99 36-80 ms of 101.2) -> b8 n2 (10.9-23.7 ms), then back to b16 n1 with the
    plan flat at 1,108 rps over n = 2 and 3 and b16 n1 at 1,022; b16 n1 then failed the
    ladder's first rung, 1,236 rps, where b8 n2, the oracle's config, passed 1,826.
    """
    recs = {_key(r): r for r in records}
    here = recs.get(_key(target))
    if here is None:
        return frozenset()
    here_tail = same_load_tail(here, load, SAME_LOAD, SAME_LOAD_WINDOWS)
    if here_tail is None:
        return frozenset()
    out = set()
    for key, rec in recs.items():
        if key == _key(target):
            continue
        tail = same_load_tail(rec, load, SAME_LOAD, WORSE_LEAST)
        if (
            tail is not None
            and tail > WORSE_TAIL * here_tail
            and tail >= BEATEN_TAIL_SHARE * slo_ms
        ):
            out.add(key)
    return frozenset(out)


def _half_batch(entries: list[PlanEntry], best: PlanEntry, tie: float) -> PlanEntry:
    """``best``, or the config with half its batch (the grid's next size down) at its
    instance count if that is predicted within ``tie`` of it."""
    half = next(
        (
            p
            for p in entries
            if p.instances == best.instances and 2 * p.max_batch_size == best.max_batch_size
        ),
        None,
    )
    return half if half is not None and half.capacity_rps >= (1 - tie) * best.capacity_rps else best


def _frugal(entries: list[PlanEntry], default: PlanEntry, tie: float) -> PlanEntry:
    """Of the configs predicted within ``tie`` of the best one, the one with the fewest
    instances (then the highest capacity): a gain under the policy's hysteresis is not one
    the model can tell, and more instances cost memory and contention it predicts worst."""
    if not entries:
        return default
    top = max(p.capacity_rps for p in entries)
    near = [p for p in entries if p.capacity_rps >= (1.0 - tie) * top]
    return min(near, key=lambda p: (p.instances, -p.capacity_rps, p.max_batch_size))


def _rank(p: PlanEntry) -> tuple[float, int, int]:
    """The plan's order: highest capacity first, then fewer instances, smaller batches."""
    return (-p.capacity_rps, p.instances, p.max_batch_size)


def plan_summary(state: DnnScalerState) -> str:
    """The plan the last decision ranked (best first) and what was measured at each config
    run: what a move was chosen from, for a run that ended somewhere unexpected."""
    ranked = sorted(state.plan, key=_rank)
    plan = ", ".join(f"b{p.max_batch_size}n{p.instances}={p.capacity_rps:.0f}" for p in ranked)
    measured = ", ".join(
        f"b{r.max_batch_size}n{r.instances} floor {r.floor_rps:.0f} ceiling {r.ceiling_rps:.0f}"
        for r in state.records
    )
    return f"plan (rps) {plan or '-'}; measured {measured or '-'}"


class _Config(Protocol):
    @property
    def max_batch_size(self) -> int: ...
    @property
    def instances(self) -> int: ...


def _key(c: _Config) -> tuple[int, int]:
    """A config's identity (knobs, records and plan entries alike; queue delay is 0)."""
    return (c.max_batch_size, c.instances)


def _q(x: float) -> str:
    """Value quantised to ~3 % steps, so that noise does not force a re-plan."""
    if x <= 0:
        return "0"
    return str(round(math.log(x) / math.log(1.03)))


def _approach(k: Knobs) -> Approach:
    if k.max_batch_size > 1 and k.instances > 1:
        return Approach.HYBRID
    if k.instances > 1:
        return Approach.MULTI_TENANCY
    if k.max_batch_size > 1:
        return Approach.BATCHING
    return Approach.UNDECIDED
