"""Why an object is not a training sample: one reason and a detail, per object.

The probe rejects an object for one of REJECT_REASONS; a cache job records a sample it could not encode
as failed, for one of CACHE_FAILURE_REASONS (in its index row's `reason`, as `REASON: detail`). FIXES
says what to do about a reason where the user can do something; `count_reasons` and `reasons_text`
are the one summary of them that the jobs' errors, training's startup check and the report give.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

REJECT_REASONS = (
    "zero_bytes",
    "not_a_video",
    "no_video_stream",
    "truncated",
    "undecodable",
    "edit_list",
    "too_short",
    "too_small",
    "missing_caption",
    "empty_caption",
    "ambiguous_name",
    "read_error",
    "outside_source",
    "caption_without_video",
)
# Reasons that do not depend on the object's bytes (access refused or gone after listing, a name that the
# listing pairs ambiguously): never reused by etag, so each probe of the object asks again. A source that
# does not answer at all (connection refused, timeouts, throttling, 5xx after the retries) is no reject:
# the probe job fails instead.
TRANSIENT_REASONS = frozenset({"read_error", "ambiguous_name"})


class Reject(Exception):
    """The object is rejected for `reason` (one of REJECT_REASONS); `detail` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


CACHE_FAILURE_REASONS = (
    "changed_since_probe",
    "read_error",
    "undecodable",
    "damaged_frames",
    "too_few_frames",
    "missing_caption",
    "nonfinite",
)
# A cache index row written before its reason carried one of CACHE_FAILURE_REASONS.
OTHER_REASON = "other"

_RELIST = "`snakemake --forcerun manifest all` relists and reprobes"
_REPLACE = f"replace the file in the source, then {_RELIST}"
FIXES = {
    "zero_bytes": _REPLACE,
    "not_a_video": _REPLACE,
    "no_video_stream": _REPLACE,
    "truncated": _REPLACE,
    "undecodable": f"{_REPLACE}; or leave its key out of its shard with shards.exclude",
    "edit_list": (
        "re-encode the clip so that it plays as stored (`ffmpeg -i IN -c:v libx264 -c:a copy OUT.mp4`), "
        f"then {_RELIST}"
    ),
    "too_short": "add a smaller frame count to frames.frame_buckets, or set frames.short_clip: stretch",
    "too_small": "lower probe.min_width and probe.min_height to train on such clips",
    "missing_caption": f"put a caption NAME.txt beside each NAME.mp4, then {_RELIST}",
    "empty_caption": f"write the caption into NAME.txt, then {_RELIST}",
    "ambiguous_name": (
        f"rename the files so that no two names differ only in case or extension, then {_RELIST}"
    ),
    "read_error": (
        f"the object is gone or its access refused: check it and the credentials' read access, then {_RELIST}"
    ),
    "outside_source": "set source.follow_symlinks: true to read links that lead out of source.path",
    "caption_without_video": f"put its video beside it, or remove it from the source, then {_RELIST}",
    "changed_since_probe": (
        "the object was replaced or touched after the probe (a copy that drops sub-second modification "
        f"times touches every file): {_RELIST}; the changed objects go into new shards, and the failures "
        "of their old versions no longer count toward cache.max_failed_fraction"
    ),
    "damaged_frames": (
        f"the file is damaged where the plan takes frames (it plays with visible errors): {_REPLACE}; or "
        "leave its key out of its shard with shards.exclude"
    ),
    "too_few_frames": (
        f"the clip plays shorter than its index says (a file cut off, or a broken index): {_REPLACE}"
    ),
    "nonfinite": (
        "check the base model's VAE weights; a clip that alone gives them can be left out with shards.exclude"
    ),
}


def cache_failure(reason: str, detail: str) -> str:
    """The `reason` of a failed sample's cache index row."""
    return f"{reason}: {detail}"


def split_cache_failure(text: str | None) -> tuple[str, str]:
    """(reason, detail) of a cache index row's `reason`; OTHER_REASON for a text without one."""
    reason, _, detail = (text or "").partition(": ")
    if reason in CACHE_FAILURE_REASONS and detail:
        return reason, detail
    return OTHER_REASON, text or ""


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    count: int
    example: str  # the first key with this reason
    detail: str  # what was found for that key


def count_reasons(rows: Iterable[tuple[str, str, str]]) -> list[ReasonCount]:
    """(key, reason, detail) rows counted by reason, the most frequent first, each with its first key."""
    counts: dict[str, int] = {}
    first: dict[str, tuple[str, str]] = {}
    for key, reason, detail in rows:
        counts[reason] = counts.get(reason, 0) + 1
        first.setdefault(reason, (key, detail))
    order = sorted(counts, key=lambda reason: (-counts[reason], reason))
    return [ReasonCount(reason, counts[reason], *first[reason]) for reason in order]


def reasons_text(counts: Iterable[ReasonCount]) -> str:
    """One line per reason: its count, its first key with the detail, and the fix where there is one."""
    lines = []
    for count in counts:
        line = f"  {count.reason}: {count.count:,}, e.g. {count.example} ({count.detail})"
        if count.reason in FIXES:
            line += f"\n    fix: {FIXES[count.reason]}"
        lines.append(line)
    return "\n".join(lines)
