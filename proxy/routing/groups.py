"""Model groups: resolve a group name a client sends (``dispatcher``) to a concrete model.

Resolution is pure: it sees only the request facts (``llm_proxy.core.conditions``, which also
holds the ``when:`` language its rules use), the group configs and an injected ``classify``
coroutine, so it is testable without any provider. Everything that can be wrong with a group
(unknown targets, bad regexes, cycles, depth) is reported by :func:`validate_groups` at load
time; the resolver trusts validated configs.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable

from llm_proxy.core.conditions import RequestFacts, condition_errors, holds
from llm_proxy.core.config import GroupConfig, RuleConfig

__all__ = [
    "MAX_DEPTH",
    "ClassifyFn",
    "GroupResolutionError",
    "GroupResolver",
    "bucket_index",
    "validate_groups",
]

MAX_DEPTH = 10  # levels of groups-within-groups
CACHE_MAX_ENTRIES = 10_000
CLASSIFIER_MAX_CHARS = 4000
# Leading word boundary only: "debugging"/"refactoring" match, "improve" does not match "prove".
_COMPLEXITY = re.compile(
    r"\b(?:step by step|debug|implement|refactor|prove|analy[sz]e|architecture|optimi[sz]e"
    r"|algorithm|complex|in detail)",
    re.IGNORECASE,
)
_FIRST_INT = re.compile(r"-?\d+")
ClassifyFn = Callable[[str, str], Awaitable[str]]  # (selector_model, prompt) -> reply text


class GroupResolutionError(Exception):
    """A group could not be resolved (cycle or depth) — only with an unvalidated config."""


def bucket_index(rating: int, threshold: int, n_targets: int) -> int:
    """Map a rating 1..threshold onto target indexes, linearly and rounding to nearest.

    ``idx = round((r - 1) * (n - 1) / (T - 1))`` (halves round up), so 1 always picks the
    first target, T the last, and each target gets a contiguous, near-equal share; for
    T=10, n=3 that is 1–3 → 0, 4–7 → 1, 8–10 → 2. Floor-division bucketing cannot give
    that symmetric split (it yields 1–4/5–7/8–10 or 1–3/4–6/7–10).
    """
    if n_targets <= 1 or threshold <= 1:
        return 0
    r = min(max(rating, 1), threshold)
    return ((r - 1) * (n_targets - 1) * 2 + (threshold - 1)) // (2 * (threshold - 1))


def _classifier_prompt(group: GroupConfig, text: str) -> str:
    if len(text) > CLASSIFIER_MAX_CHARS:
        text = text[:CLASSIFIER_MAX_CHARS] + " …[truncated]"
    use = f"These models are mainly used for: {group.primary_use}.\n" if group.primary_use else ""
    return (
        f"Rate the complexity of the user's task below as one integer from 1 (trivial) to "
        f"{group.complexity_threshold} (hardest: deep, multi-step reasoning).\n{use}"
        f"Reply with the integer only.\n\nTask:\n<<<\n{text}\n>>>"
    )


class GroupResolver:
    """Resolves group names to concrete models; caches classifier decisions per prompt."""

    def __init__(self, groups: dict[str, GroupConfig], *, clock: Callable[[], float] = time.monotonic):
        self._groups = dict(groups)
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str, int]] = {}  # key -> (expiry, target, rating)
        # Compiled up front: validate_groups has already rejected bad patterns.
        self._patterns: dict[tuple[str, int], re.Pattern[str]] = {
            (name, i): re.compile(rule.pattern, 0 if rule.case_sensitive else re.IGNORECASE)
            for name, group in self._groups.items()
            for i, rule in enumerate(group.rules)
            if rule.pattern is not None
        }

    def is_group(self, name: str) -> bool:
        return name in self._groups

    async def resolve(self, name: str, facts: RequestFacts, classify: ClassifyFn) -> tuple[str, list[str]]:
        """Follow groups until a non-group name; return it with one step string per hop."""
        chain: list[str] = []
        seen: list[str] = []
        current = name
        while current in self._groups:
            if current in seen:
                raise GroupResolutionError(f"group cycle: {' -> '.join([*seen, current])}")
            if len(seen) >= MAX_DEPTH:
                raise GroupResolutionError(f"group nesting deeper than {MAX_DEPTH}: {' -> '.join(seen)}")
            seen.append(current)
            target, reason = await self._pick(current, self._groups[current], facts, classify)
            chain.append(f"{current} -> {target} ({reason})")
            current = target
        return current, chain

    async def _pick(
        self, name: str, group: GroupConfig, facts: RequestFacts, classify: ClassifyFn
    ) -> tuple[str, str]:
        # Rules are explicit operator intent, so they win over the classifier too.
        for i, rule in enumerate(group.rules):
            if self._rule_matches(name, i, rule, facts):
                what = [f"pattern {rule.pattern!r}"] if rule.pattern is not None else []
                what += ["conditions"] if rule.when is not None else []
                return rule.target, f"rule {i + 1}: {' + '.join(what) or 'always'}"
        if group.strategy != "classifier" or not group.selector_model:
            return self._heuristic(group, facts)
        return await self._classify(name, group, group.selector_model, facts, classify)

    def _rule_matches(self, name: str, index: int, rule: RuleConfig, facts: RequestFacts) -> bool:
        pattern = self._patterns.get((name, index))
        if pattern is not None and not pattern.search(facts.last_user_text):
            return False
        return rule.when is None or holds(rule.when, facts)

    @staticmethod
    def _heuristic(group: GroupConfig, facts: RequestFacts) -> tuple[str, str]:
        if _COMPLEXITY.search(facts.last_user_text):
            return group.targets[-1], "heuristic: complexity indicators"
        return group.targets[0], "heuristic: default"

    async def _classify(
        self, name: str, group: GroupConfig, selector: str, facts: RequestFacts, classify: ClassifyFn
    ) -> tuple[str, str]:
        threshold = group.complexity_threshold
        digest = hashlib.sha256(facts.last_user_text.encode("utf-8", "surrogatepass")).hexdigest()
        key = (name, digest)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                return hit[1], f"classifier: {hit[2]}/{threshold} (cached)"
            del self._cache[key]

        prompt = _classifier_prompt(group, facts.last_user_text)
        try:
            async with asyncio.timeout(group.classifier_timeout):
                reply = await classify(selector, prompt)
        except TimeoutError:
            return self._fallback(group, facts, "timeout")
        except Exception:  # CancelledError is a BaseException and propagates
            return self._fallback(group, facts, "error")
        match = _FIRST_INT.search(reply) if isinstance(reply, str) else None
        rating = int(match.group()) if match else 0
        if not 1 <= rating <= threshold:
            return self._fallback(group, facts, "garbage")

        target = group.targets[bucket_index(rating, threshold, len(group.targets))]
        if group.cache_ttl > 0:  # only real decisions are cached; a flaky selector retries
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._evict(now)
            self._cache[key] = (self._clock() + group.cache_ttl, target, rating)
        return target, f"classifier: {rating}/{threshold}"

    def _evict(self, now: float) -> None:
        for k in [k for k, v in self._cache.items() if v[0] <= now]:
            del self._cache[k]
        while len(self._cache) >= CACHE_MAX_ENTRIES:
            del self._cache[next(iter(self._cache))]  # dicts keep insertion order: oldest first

    def _fallback(self, group: GroupConfig, facts: RequestFacts, why: str) -> tuple[str, str]:
        target, reason = self._heuristic(group, facts)
        return target, f"classifier fallback: {why}; {reason}"


def validate_groups(groups: dict[str, GroupConfig], known_models: set[str]) -> list[str]:
    """Every problem with every group at once, each as ``path: message``."""
    errors: list[str] = []
    for name, group in groups.items():
        base = f"groups.{name}"
        if name in known_models:
            errors.append(f"{base}: group name is also a model name")
        if not group.targets:
            errors.append(f"{base}.targets: must list at least one target")
        for i, target in enumerate(group.targets):
            if target not in known_models and target not in groups:
                errors.append(f"{base}.targets[{i}]: unknown model or group {target!r}")
        for i, rule in enumerate(group.rules):
            if not isinstance(rule, RuleConfig):
                continue  # not a mapping or no target: the schema walk reported it
            path = f"{base}.rules[{i}]"
            if rule.target not in group.targets:
                errors.append(f"{path}.target: {rule.target!r} is not one of the group's targets")
            if rule.pattern is not None:
                try:
                    re.compile(rule.pattern)
                except (re.error, TypeError) as exc:
                    errors.append(f"{path}.pattern: invalid regex ({exc})")
            if rule.when is not None:
                errors.extend(condition_errors(rule.when, f"{path}.when"))
        if group.strategy not in ("heuristic", "classifier"):
            errors.append(f"{base}.strategy: must be 'heuristic' or 'classifier'")
        if group.strategy == "classifier":
            if not group.selector_model:
                errors.append(f"{base}.selector_model: required by strategy 'classifier'")
            elif group.selector_model not in known_models:
                errors.append(f"{base}.selector_model: unknown model {group.selector_model!r}")
        threshold = group.complexity_threshold
        if not isinstance(threshold, int) or threshold < max(1, len(group.targets)):
            errors.append(
                f"{base}.complexity_threshold: must be at least 1 and at least the number of targets"
            )
        if group.logic_level is not None and not 1 <= group.logic_level <= 10:
            errors.append(f"{base}.logic_level: must be between 1 and 10")
        if not group.classifier_timeout > 0:
            errors.append(f"{base}.classifier_timeout: must be positive")
        if group.cache_ttl < 0:
            errors.append(f"{base}.cache_ttl: must not be negative")
    errors.extend(_graph_errors(groups))
    return errors


def _graph_errors(groups: dict[str, GroupConfig]) -> list[str]:
    """Cycles (each reported once) and chains of more than MAX_DEPTH groups."""
    edges = {n: [t for t in g.targets if t in groups] for n, g in groups.items()}
    errors: list[str] = []
    cycles: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def find_cycles(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :]
                start = cycle.index(min(cycle))
                canon = tuple(cycle[start:] + cycle[:start])
                if canon not in cycles:
                    cycles.add(canon)
                    i = groups[canon[0]].targets.index(canon[1 % len(canon)])
                    path = " -> ".join([*canon, canon[0]])
                    errors.append(f"groups.{canon[0]}.targets[{i}]: group cycle {path}")
            elif nxt not in state:
                find_cycles(nxt)
        stack.pop()
        state[node] = 2

    for name in groups:
        if name not in state:
            find_cycles(name)

    longest: dict[str, list[str]] = {}  # name -> longest chain of groups starting there

    def chain(node: str, visiting: frozenset[str]) -> list[str]:
        if node not in longest:
            subs = [chain(t, visiting | {node}) for t in edges[node] if t not in visiting and t != node]
            longest[node] = [node, *max(subs, key=len, default=[])]
        return longest[node]

    deep = {n for n in groups if len(chain(n, frozenset())) > MAX_DEPTH}
    for name in deep:  # report at the top of each too-deep chain only
        if any(name in edges[other] for other in deep):
            continue
        path = longest[name]
        errors.append(
            f"groups.{name}: nesting {len(path)} groups deep exceeds {MAX_DEPTH} ({' -> '.join(path)})"
        )
    return sorted(errors, key=lambda e: e.split(":", 1)[0]) if errors else errors
