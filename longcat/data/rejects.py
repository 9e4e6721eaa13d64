"""Why an object is not a training sample: one reason of REJECT_REASONS and a detail, per object."""

from __future__ import annotations

REJECT_REASONS = (
    "zero_bytes",
    "not_a_video",
    "no_video_stream",
    "truncated",
    "undecodable",
    "too_short",
    "too_small",
    "missing_caption",
    "empty_caption",
    "read_error",
    "outside_source",
    "caption_without_video",
)
# Reasons that depend on access to the object (403, gone after listing), not on its bytes: never reused
# by etag, so each probe of the object asks again. A source that does not answer at all (connection
# refused, timeouts, throttling, 5xx after the retries) is no reject: the probe job fails instead.
TRANSIENT_REASONS = frozenset({"read_error"})


class Reject(Exception):
    """The object is rejected for `reason` (one of REJECT_REASONS); `detail` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
