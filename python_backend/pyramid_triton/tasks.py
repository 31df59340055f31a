"""A task per request: which calibrated router answers a request, by the answer task it names.

A deployment is calibrated for one or more answer tasks (a calibration set, ``pyramid calibrate
--add``); the spec names the default task (``router.task``) and what happens to a request whose task
has no calibration (``router.task_fallback``): ``error`` (the default) or ``oracle`` (the oracle
answers it alone, declared, at the oracle's cost). Never a silent misroute: an unknown task name is
INVALID_ARG naming it, and a known task without a calibration is UNSUPPORTED naming the calibrated
ones, unless the spec declared the fallback.

``auto`` (a request's task, or the spec's ``router.task``; the default of a spec whose calibration set
calibrates several tasks, and the OpenAI gateway's for a request naming none) is no answer task but a
selector: the task is detected from the request's prompt (``pyramid_moa.task_detect``: an option list ->
``choice``, an arithmetic problem -> ``gsm8k``, else ``semantic``) among the calibrated ones. When no
calibrated task fits the prompt, the declared fallback (``oracle``) applies, else the deployment's default
task (``router.task`` when it names one; with ``auto``, the calibration set's first). The response says
which (``TaskRoute.report``: the ``task`` of the response's metadata).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pyramid_client.wire import UNSUPPORTED
from pyramid_moa.answers import AnswerTask, get_task, task_names
from pyramid_moa.artifact import CalibrationArtifact, load_calibrations
from pyramid_moa.router import Router
from pyramid_moa.task_detect import AUTO, detect_task

from .hot_reload import INLINE_PARAM, live_path, router_artifact
from .protocol import ROUTER_PARAMS, InvalidArgument, ServeError
from .routing import ROUTE_TASK

FALLBACKS = ("error", "oracle")


@dataclass(frozen=True)
class TaskRoute:
    """How one request is routed. ``force_tier``: the request's own, or "oracle" for the fallback;
    ``embed``: the task compares answers by meaning, so each agent's answer is embedded before the
    stage decides; ``use_parsed``: engines' own parsed answers (a replay engine's recorded ones) are
    for the deployment's default task only, other tasks extract from the text. ``source``: where the task
    came from (``request``: the request named it; ``default``: the deployment's; ``auto``: detected from the
    prompt, ``detected`` the kind of prompt found and ``reason`` why); ``fallback_to``: ``oracle`` (the
    declared fallback) or ``default`` (an ``auto`` request no calibrated task fits) when one applied."""

    task: AnswerTask
    router: Router
    force_tier: str | None
    fallback: bool
    embed: bool
    use_parsed: bool
    source: str = "default"
    detected: str | None = None
    reason: str = field(default="", compare=False)
    fallback_to: str | None = None

    def extract(self, text: str | None, question: str) -> str | None:
        return self.task.extract_for(text, question)

    def report(self) -> dict[str, Any]:
        """The response's ``task`` metadata: ``name``, ``source`` and, where they apply, ``detected``,
        ``reason`` and ``fallback``."""
        out: dict[str, Any] = {"name": self.task.name, "source": self.source}
        if self.source == AUTO:
            out["detected"], out["reason"] = self.detected, self.reason
        if self.fallback_to:
            out["fallback"] = self.fallback_to
        return out


class TaskRouters:
    """The deployment's routers, one per calibrated task. ``default_task``: a calibrated task, or ``auto``
    (also what several calibrations get when none is named: the task detected per request; ``default`` is
    then the set's first task, for the requests no calibrated task fits); ``auto``: whether it is."""

    def __init__(
        self,
        calibrations: dict[str, CalibrationArtifact],
        default_task: str | None = None,
        fallback: str = ROUTER_PARAMS["task_fallback"],
        embedder: str = "",
    ) -> None:
        if not calibrations:
            raise ValueError("no calibration given")
        if fallback not in FALLBACKS:
            raise ValueError(f"task_fallback must be one of {FALLBACKS}, got {fallback!r}")
        default_task = (default_task or "").strip()
        self.auto = default_task == AUTO or (not default_task and len(calibrations) > 1)
        if self.auto or not default_task:
            default_task = next(iter(calibrations))
        if default_task not in calibrations:
            raise ValueError(
                f"default task {default_task!r} has no calibration (calibrated: {', '.join(sorted(calibrations))})"
            )
        self.calibrations = dict(calibrations)
        self.routers = {t: a.router() for t, a in calibrations.items()}
        embedded = sorted(t for t, r in self.routers.items() if r.uses_embedding)
        if embedded and not embedder:
            raise ValueError(
                f"task(s) {embedded} compare answers' embeddings: the deployment needs an embedder model (spec key 'embedder')"
            )
        self.default = default_task
        self.fallback = fallback
        self.embedder = embedder

    def resolve(self, task: str | None, force_tier: str | None = None, prompt: str | None = None) -> TaskRoute:
        """The route for a request naming ``task`` (None or empty: the deployment's default, which may be
        ``auto``); ``prompt``: the request's text, which ``auto`` reads. The route's ``report()`` is also left
        for the response built in this context (``routing.ROUTE_TASK``)."""
        named = (task or "").strip()
        name = named or (AUTO if self.auto else self.default)
        if name == AUTO:
            route = self._detect(prompt or "", force_tier)
        else:
            route = self._named(name, force_tier, "request" if named else "default")
        ROUTE_TASK.set((route.router, route.report()))
        return route

    def _named(self, name: str, force_tier: str | None, source: str) -> TaskRoute:
        if name not in task_names():
            known = ", ".join([*task_names(), AUTO])
            raise InvalidArgument("task", f"unknown task {name!r}; known: {known}")
        t = get_task(name)
        router = self.routers.get(name)
        if router is not None:
            return TaskRoute(
                t, router, force_tier, False, router.uses_embedding, t.keyed and name == self.default, source
            )
        if self.fallback == "oracle":  # declared: the oracle alone, never another task's committee vote
            return TaskRoute(t, self.routers[self.default], "oracle", True, False, False, source, fallback_to="oracle")
        raise ServeError(
            f"task {name!r} has no calibration in this deployment (calibrated: {', '.join(sorted(self.routers))}); "
            "calibrate it (pyramid calibrate --task ... --add) or declare router.task_fallback: oracle",
            UNSUPPORTED,
        )

    def _detect(self, prompt: str, force_tier: str | None) -> TaskRoute:
        """``auto``: the calibrated task the prompt is; none fits: the declared fallback, else the default."""
        d = detect_task(prompt, self.routers)
        if d.task is not None:
            return replace(self._named(d.task, force_tier, AUTO), detected=d.kind, reason=d.reason)
        if self.fallback == "oracle":
            t = get_task(d.kind)
            return TaskRoute(
                t, self.routers[self.default], "oracle", True, False, False, AUTO, d.kind, d.reason, "oracle"
            )
        route = self._named(self.default, force_tier, AUTO)
        return replace(route, detected=d.kind, reason=f"{d.reason}: the default task", fallback_to="default")


def load_task_routers(params: Any, known_agents: Iterable[str]) -> tuple[TaskRouters, CalibrationArtifact, str]:
    """(the routers, the default task's artifact, where they came from) of a router model: its
    ``calibration`` file (an artifact or a calibration set) and the ``task``, ``task_fallback`` and
    ``embedder`` parameters. A hot-reloaded artifact (``calibration_json``) replaces the default
    task's calibration only."""
    known = list(known_agents)
    path = params.get_path("calibration", None)
    if path is None and not params.get_str(INLINE_PARAM, ""):
        raise ValueError(f"model {params.name!r}: parameter 'calibration' is required")
    path = live_path(path) if path is not None else None  # a deployed calibration wins (hot_reload)
    cals = load_calibrations(path, known_agents=known) if path is not None else {}
    default = params.get_typed("task", ROUTER_PARAMS) or None
    source = str(path)
    if params.get_str(INLINE_PARAM, ""):
        art, source = router_artifact(params, known)
        cals[art.task] = art
        default = default or art.task
    routers = TaskRouters(
        cals,
        default,
        params.get_typed("task_fallback", ROUTER_PARAMS) or ROUTER_PARAMS["task_fallback"],
        params.get_str("embedder", "") or "",
    )
    return routers, routers.calibrations[routers.default], source
