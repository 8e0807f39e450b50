import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_HOUR: _ClassVar[Granularity]
    GRANULARITY_DAY: _ClassVar[Granularity]
    GRANULARITY_WEEK: _ClassVar[Granularity]
    GRANULARITY_MONTH: _ClassVar[Granularity]

class Dimension(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIMENSION_UNSPECIFIED: _ClassVar[Dimension]
    DIMENSION_USER: _ClassVar[Dimension]
    DIMENSION_COUNTRY: _ClassVar[Dimension]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_EVENTS: _ClassVar[Metric]
    METRIC_WORD_COUNT: _ClassVar[Metric]
    METRIC_STUDY_SECONDS: _ClassVar[Metric]
    METRIC_UNIQUE_USERS: _ClassVar[Metric]
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_HOUR: Granularity
GRANULARITY_DAY: Granularity
GRANULARITY_WEEK: Granularity
GRANULARITY_MONTH: Granularity
DIMENSION_UNSPECIFIED: Dimension
DIMENSION_USER: Dimension
DIMENSION_COUNTRY: Dimension
METRIC_UNSPECIFIED: Metric
METRIC_EVENTS: Metric
METRIC_WORD_COUNT: Metric
METRIC_STUDY_SECONDS: Metric
METRIC_UNIQUE_USERS: Metric

class Event(_message.Message):
    __slots__ = ("user_id", "idempotency_key", "occurred_at", "word_count", "study_seconds", "country")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    STUDY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    idempotency_key: str
    occurred_at: _timestamp_pb2.Timestamp
    word_count: int
    study_seconds: int
    country: str
    def __init__(self, user_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., word_count: _Optional[int] = ..., study_seconds: _Optional[int] = ..., country: _Optional[str] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("received", "inserted", "duplicates", "conflicts", "rejected", "errors", "errors_truncated")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    received: int
    inserted: int
    duplicates: int
    conflicts: int
    rejected: int
    errors: _containers.RepeatedCompositeFieldContainer[EventError]
    errors_truncated: bool
    def __init__(self, received: _Optional[int] = ..., inserted: _Optional[int] = ..., duplicates: _Optional[int] = ..., conflicts: _Optional[int] = ..., rejected: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[EventError, _Mapping]]] = ..., errors_truncated: _Optional[bool] = ...) -> None: ...

class EventError(_message.Message):
    __slots__ = ("index", "idempotency_key", "field", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    idempotency_key: str
    field: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SummaryRequest(_message.Message):
    __slots__ = ("user_id", "start_time", "end_time", "granularity", "time_zone", "moving_average_window", "countries", "exclude_countries", "compare_previous")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    MOVING_AVERAGE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    COMPARE_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    granularity: Granularity
    time_zone: str
    moving_average_window: int
    countries: _containers.RepeatedScalarFieldContainer[str]
    exclude_countries: _containers.RepeatedScalarFieldContainer[str]
    compare_previous: bool
    def __init__(self, user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., time_zone: _Optional[str] = ..., moving_average_window: _Optional[int] = ..., countries: _Optional[_Iterable[str]] = ..., exclude_countries: _Optional[_Iterable[str]] = ..., compare_previous: _Optional[bool] = ...) -> None: ...

class SummaryResponse(_message.Message):
    __slots__ = ("time_zone", "buckets", "totals", "previous_start_time", "previous_end_time", "previous_buckets", "previous_totals")
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_END_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TOTALS_FIELD_NUMBER: _ClassVar[int]
    time_zone: str
    buckets: _containers.RepeatedCompositeFieldContainer[SummaryBucket]
    totals: SummaryTotals
    previous_start_time: _timestamp_pb2.Timestamp
    previous_end_time: _timestamp_pb2.Timestamp
    previous_buckets: _containers.RepeatedCompositeFieldContainer[SummaryBucket]
    previous_totals: SummaryTotals
    def __init__(self, time_zone: _Optional[str] = ..., buckets: _Optional[_Iterable[_Union[SummaryBucket, _Mapping]]] = ..., totals: _Optional[_Union[SummaryTotals, _Mapping]] = ..., previous_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_buckets: _Optional[_Iterable[_Union[SummaryBucket, _Mapping]]] = ..., previous_totals: _Optional[_Union[SummaryTotals, _Mapping]] = ...) -> None: ...

class SummaryBucket(_message.Message):
    __slots__ = ("start_time", "local_start", "events", "word_count", "study_seconds", "average_word_count", "average_study_seconds", "word_count_sma", "study_seconds_sma")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    LOCAL_START_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    STUDY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_STUDY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_SMA_FIELD_NUMBER: _ClassVar[int]
    STUDY_SECONDS_SMA_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    local_start: str
    events: int
    word_count: int
    study_seconds: int
    average_word_count: float
    average_study_seconds: float
    word_count_sma: float
    study_seconds_sma: float
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., local_start: _Optional[str] = ..., events: _Optional[int] = ..., word_count: _Optional[int] = ..., study_seconds: _Optional[int] = ..., average_word_count: _Optional[float] = ..., average_study_seconds: _Optional[float] = ..., word_count_sma: _Optional[float] = ..., study_seconds_sma: _Optional[float] = ...) -> None: ...

class SummaryTotals(_message.Message):
    __slots__ = ("events", "word_count", "study_seconds", "active_users")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    STUDY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_USERS_FIELD_NUMBER: _ClassVar[int]
    events: int
    word_count: int
    study_seconds: int
    active_users: int
    def __init__(self, events: _Optional[int] = ..., word_count: _Optional[int] = ..., study_seconds: _Optional[int] = ..., active_users: _Optional[int] = ...) -> None: ...

class UniquesRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "granularity", "time_zone", "countries", "exclude_countries", "rolling_days", "compare_previous")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    ROLLING_DAYS_FIELD_NUMBER: _ClassVar[int]
    COMPARE_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    granularity: Granularity
    time_zone: str
    countries: _containers.RepeatedScalarFieldContainer[str]
    exclude_countries: _containers.RepeatedScalarFieldContainer[str]
    rolling_days: int
    compare_previous: bool
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., time_zone: _Optional[str] = ..., countries: _Optional[_Iterable[str]] = ..., exclude_countries: _Optional[_Iterable[str]] = ..., rolling_days: _Optional[int] = ..., compare_previous: _Optional[bool] = ...) -> None: ...

class UniquesResponse(_message.Message):
    __slots__ = ("time_zone", "buckets", "unique_users", "previous_start_time", "previous_end_time", "previous_buckets", "previous_unique_users")
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_USERS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_END_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_UNIQUE_USERS_FIELD_NUMBER: _ClassVar[int]
    time_zone: str
    buckets: _containers.RepeatedCompositeFieldContainer[UniquesBucket]
    unique_users: int
    previous_start_time: _timestamp_pb2.Timestamp
    previous_end_time: _timestamp_pb2.Timestamp
    previous_buckets: _containers.RepeatedCompositeFieldContainer[UniquesBucket]
    previous_unique_users: int
    def __init__(self, time_zone: _Optional[str] = ..., buckets: _Optional[_Iterable[_Union[UniquesBucket, _Mapping]]] = ..., unique_users: _Optional[int] = ..., previous_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_buckets: _Optional[_Iterable[_Union[UniquesBucket, _Mapping]]] = ..., previous_unique_users: _Optional[int] = ...) -> None: ...

class UniquesBucket(_message.Message):
    __slots__ = ("start_time", "local_start", "unique_users", "rolling_unique_users")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    LOCAL_START_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_USERS_FIELD_NUMBER: _ClassVar[int]
    ROLLING_UNIQUE_USERS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    local_start: str
    unique_users: int
    rolling_unique_users: int
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., local_start: _Optional[str] = ..., unique_users: _Optional[int] = ..., rolling_unique_users: _Optional[int] = ...) -> None: ...

class BreakdownRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "dimension", "metric", "limit", "countries", "exclude_countries", "compare_previous")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    COMPARE_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    dimension: Dimension
    metric: Metric
    limit: int
    countries: _containers.RepeatedScalarFieldContainer[str]
    exclude_countries: _containers.RepeatedScalarFieldContainer[str]
    compare_previous: bool
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dimension: _Optional[_Union[Dimension, str]] = ..., metric: _Optional[_Union[Metric, str]] = ..., limit: _Optional[int] = ..., countries: _Optional[_Iterable[str]] = ..., exclude_countries: _Optional[_Iterable[str]] = ..., compare_previous: _Optional[bool] = ...) -> None: ...

class BreakdownResponse(_message.Message):
    __slots__ = ("rows", "previous_start_time", "previous_end_time", "previous_rows")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_END_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[BreakdownRow]
    previous_start_time: _timestamp_pb2.Timestamp
    previous_end_time: _timestamp_pb2.Timestamp
    previous_rows: _containers.RepeatedCompositeFieldContainer[BreakdownRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[BreakdownRow, _Mapping]]] = ..., previous_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_rows: _Optional[_Iterable[_Union[BreakdownRow, _Mapping]]] = ...) -> None: ...

class BreakdownRow(_message.Message):
    __slots__ = ("key", "events", "word_count", "study_seconds", "unique_users")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    STUDY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_USERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    events: int
    word_count: int
    study_seconds: int
    unique_users: int
    def __init__(self, key: _Optional[str] = ..., events: _Optional[int] = ..., word_count: _Optional[int] = ..., study_seconds: _Optional[int] = ..., unique_users: _Optional[int] = ...) -> None: ...

class RetentionRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "granularity", "periods", "time_zone", "countries", "exclude_countries")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    granularity: Granularity
    periods: int
    time_zone: str
    countries: _containers.RepeatedScalarFieldContainer[str]
    exclude_countries: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., periods: _Optional[int] = ..., time_zone: _Optional[str] = ..., countries: _Optional[_Iterable[str]] = ..., exclude_countries: _Optional[_Iterable[str]] = ...) -> None: ...

class RetentionResponse(_message.Message):
    __slots__ = ("time_zone", "cohorts")
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    COHORTS_FIELD_NUMBER: _ClassVar[int]
    time_zone: str
    cohorts: _containers.RepeatedCompositeFieldContainer[RetentionCohort]
    def __init__(self, time_zone: _Optional[str] = ..., cohorts: _Optional[_Iterable[_Union[RetentionCohort, _Mapping]]] = ...) -> None: ...

class RetentionCohort(_message.Message):
    __slots__ = ("start_time", "local_start", "users", "retained")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    LOCAL_START_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    RETAINED_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    local_start: str
    users: int
    retained: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., local_start: _Optional[str] = ..., users: _Optional[int] = ..., retained: _Optional[_Iterable[int]] = ...) -> None: ...

class LearnerStatsRequest(_message.Message):
    __slots__ = ("user_id", "time_zone", "as_of")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    time_zone: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., time_zone: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LearnerStatsResponse(_message.Message):
    __slots__ = ("user_id", "time_zone", "first_active", "last_active", "events", "word_count", "study_seconds", "active_days", "current_streak_days", "longest_streak_days", "longest_streak_start", "longest_streak_end")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    FIRST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    STUDY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DAYS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STREAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    LONGEST_STREAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    LONGEST_STREAK_START_FIELD_NUMBER: _ClassVar[int]
    LONGEST_STREAK_END_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    time_zone: str
    first_active: _timestamp_pb2.Timestamp
    last_active: _timestamp_pb2.Timestamp
    events: int
    word_count: int
    study_seconds: int
    active_days: int
    current_streak_days: int
    longest_streak_days: int
    longest_streak_start: str
    longest_streak_end: str
    def __init__(self, user_id: _Optional[str] = ..., time_zone: _Optional[str] = ..., first_active: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_active: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., events: _Optional[int] = ..., word_count: _Optional[int] = ..., study_seconds: _Optional[int] = ..., active_days: _Optional[int] = ..., current_streak_days: _Optional[int] = ..., longest_streak_days: _Optional[int] = ..., longest_streak_start: _Optional[str] = ..., longest_streak_end: _Optional[str] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ("deleted_events", "erased_at")
    DELETED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    ERASED_AT_FIELD_NUMBER: _ClassVar[int]
    deleted_events: int
    erased_at: _timestamp_pb2.Timestamp
    def __init__(self, deleted_events: _Optional[int] = ..., erased_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
