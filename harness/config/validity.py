"""``[validity]``: the bounds a measured run must keep to be called valid (``harness.validity``)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from pydantic import Field

from harness.config.base import Float, Fraction, NonNegative, table

Share = Annotated[Float, Field(ge=0, le=1)]


@table
class ValidityBounds:
    """Bounds on a run's own conditions; docs/analysis.md says why each default is what it is.

    send_lag_p99_ms       the client's send lag p99
    send_lag_slo_share    for a run judged by SLO attainment (bench's capacity ladder): the send-lag
                          bound is at least this share of the TTFT bound, the loop-lag bound at least
                          that over the wake-ups of a first token's path (``validity.attainment_bounds``)
    loop_lag_p99_ms       each emulated site's event-loop lag p99 (wall ms)
    relay_delay_error_ms  the relay's achieved added delay p99 minus the configured delay
    relay_late_max_ms     the longest the relay held a frame past its due time (wall ms): the link
                          stood still that long, whatever the p99 says
    link_goodput_share    TCP goodput measured before the run / what the configured rate carries (at least)
    failed_share          failed requests / requests
    cpu_steal_share       CPU time stolen by the hypervisor / all CPU time during the run
    cpu_other_share       CPU time of processes outside the run / all CPU time during the run
    client_stall_share    time the client's event loop stalled over 50 ms / the run's time: what
                          arrived then was timestamped late (``harness.loadgen.stalls``)
    link_event_lag_share  of a link change's planned state (until the next change of its direction),
                          the part the link spent in the old state because the change landed late
    """

    send_lag_p99_ms: NonNegative = 10.0
    send_lag_slo_share: Share = 0.01
    loop_lag_p99_ms: NonNegative = 10.0
    relay_delay_error_ms: NonNegative = 1.0
    relay_late_max_ms: NonNegative = 50.0
    link_goodput_share: Fraction = 0.9
    failed_share: Share = 0.01
    cpu_steal_share: Share = 0.10
    cpu_other_share: Share = 0.50
    client_stall_share: Share = 0.01
    link_event_lag_share: Share = 0.1

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)
