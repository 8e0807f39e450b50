"""The Python client of the Daily Aggregator service.

`AsyncClient` (asyncio) and `Client` (synchronous) call the service's RPCs with typed
arguments and results; their `writer()` gives a batching `AsyncEventWriter` / `EventWriter`
for endless event feeds. Every failure is a `DailyAggregatorError`; see `_errors` for the
hierarchy. This package depends on the generated contract only, never on the server.
"""

from daily_aggregator.client._async import AsyncClient
from daily_aggregator.client._errors import (
    DailyAggregatorError,
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from daily_aggregator.client._models import (
    BreakdownRow,
    DeleteUserResult,
    Dimension,
    Event,
    EventError,
    Granularity,
    LearnerStats,
    Metric,
    RecordResult,
    RetentionCohort,
    RetentionResult,
    SummaryBucket,
    SummaryResult,
    SummaryTotals,
    UniquesBucket,
    UniquesResult,
)
from daily_aggregator.client._retry import RetryPolicy
from daily_aggregator.client._sync import Client, EventWriter
from daily_aggregator.client._writer import AsyncEventWriter

__all__ = [
    "AsyncClient",
    "AsyncEventWriter",
    "BreakdownRow",
    "Client",
    "DailyAggregatorError",
    "DeadlineExceededError",
    "DeleteUserResult",
    "Dimension",
    "Event",
    "EventError",
    "EventWriter",
    "FieldViolation",
    "Granularity",
    "InvalidArgumentError",
    "LearnerStats",
    "Metric",
    "PermissionDeniedError",
    "RecordResult",
    "ResourceExhaustedError",
    "RetentionCohort",
    "RetentionResult",
    "RetryPolicy",
    "SummaryBucket",
    "SummaryResult",
    "SummaryTotals",
    "UnauthenticatedError",
    "UnavailableError",
    "UniquesBucket",
    "UniquesResult",
]
