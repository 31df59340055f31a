"""A task per request: which calibrated router answers a request, by the answer task it names.

A deployment is calibrated for one or more answer tasks (a calibration set, ``pyramid calibrate
--add``); the spec names the default task (``router.task``) and what happens to a request whose task
has no calibration (``router.task_fallback``): ``error`` (the default) or ``oracle`` (the oracle
answers it alone, declared, at the oracle's cost). Never a silent misroute: an unknown task name is
INVALID_ARG naming it, and a known task without a calibration is UNSUPPORTED naming the calibrated
ones, unless the spec declared the fallback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyramid_client.wire import UNSUPPORTED
from pyramid_moa.answers import AnswerTask, get_task, task_names
from pyramid_moa.artifact import CalibrationArtifact, load_calibrations
from pyramid_moa.router import Router

from .hot_reload import INLINE_PARAM, live_path, router_artifact
from .protocol import ROUTER_PARAMS, InvalidArgument, ServeError

FALLBACKS = ("error", "oracle")


@dataclass(frozen=True)
class TaskRoute:
    """How one request is routed. ``force_tier``: the request's own, or "oracle" for the fallback;
    ``embed``: the task compares answers by meaning, so each agent's answer is embedded before the
    stage decides; ``use_parsed``: engines' own parsed answers (a replay engine's recorded ones) are
    for the deployment's default task only, other tasks extract from the text."""

    task: AnswerTask
    router: Router
    force_tier: str | None
    fallback: bool
    embed: bool
    use_parsed: bool

    def extract(self, text: str | None, question: str) -> str | None:
        return self.task.extract_for(text, question)


class TaskRouters:
    """The deployment's routers, one per calibrated task."""

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
        if not default_task:
            if len(calibrations) > 1:
                raise ValueError(
                    f"the calibration set has tasks {sorted(calibrations)}: the spec must name the default (router.task)"
                )
            default_task = next(iter(calibrations))
        if default_task not in calibrations:
            raise ValueError(
                f"default task {default_task!r} has no calibration (calibrated: {', '.join(sorted(calibrations))})"
            )
        unkeyed = sorted(t for t in calibrations if not get_task(t).keyed)
        if unkeyed and not embedder:
            raise ValueError(
                f"task(s) {unkeyed} compare answers by meaning: the deployment needs an embedder model (spec key 'embedder')"
            )
        self.calibrations = dict(calibrations)
        self.routers = {t: a.router() for t, a in calibrations.items()}
        self.default = default_task
        self.fallback = fallback
        self.embedder = embedder

    def resolve(self, task: str | None, force_tier: str | None = None) -> TaskRoute:
        """The route for a request naming ``task`` (None or empty: the default)."""
        name = (task or "").strip() or self.default
        if name not in task_names():
            raise InvalidArgument("task", f"unknown task {name!r}; known: {', '.join(task_names())}")
        t = get_task(name)
        router = self.routers.get(name)
        if router is not None:
            return TaskRoute(t, router, force_tier, False, not t.keyed, t.keyed and name == self.default)
        if self.fallback == "oracle":  # declared: the oracle alone, never another task's committee vote
            return TaskRoute(t, self.routers[self.default], "oracle", True, False, False)
        raise ServeError(
            f"task {name!r} has no calibration in this deployment (calibrated: {', '.join(sorted(self.routers))}); "
            "calibrate it (pyramid calibrate --task ... --add) or declare router.task_fallback: oracle",
            UNSUPPORTED,
        )


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
