"""quiver: a feature store. Declare features once, train on them and serve them.

The API follows Feast's ``FeatureStore``::

    import quiver
    store = quiver.FeatureStore(repo_path=".")
    store.apply()
    training = store.get_historical_features(
        entity_df=df, features=["driver_hourly_stats:conv_rate"]).to_pandas()
    store.materialize_incremental(end_date=datetime.now(timezone.utc))
    store.get_online_features(features=[...], entity_rows=[{"driver_id": 1001}]).to_dict()

The work runs in Rust (the GIL is released; Ctrl-C interrupts a long call) and tables
cross the boundary as Arrow, through the Arrow PyCapsule interface, without copies.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os as _os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import pyarrow as pa

# The native module's allocator (mimalloc) is built not to ask for transparent huge
# pages; this also keeps the kernel from giving them unasked (kernels set to "always"),
# unless the user chooses otherwise: with them, a large call's first touch of fresh
# memory could wait on the kernel's page compaction (5M-row retrievals took 0.34-1.0 s
# instead of 0.42-0.46 s). Read once, when the module loads.
_os.environ.setdefault("MIMALLOC_ALLOW_THP", "0")

from . import _quiver  # noqa: E402
from .errors import (
    DefinitionError,
    NotFoundError,
    QuiverError,
    StoreUnavailableError,
    ValidationError,
)

__version__ = _quiver.__version__

__all__ = [
    "FeatureStore",
    "RetrievalJob",
    "OnlineResponse",
    "PushMode",
    "FeatureView",
    "FeatureService",
    "Entity",
    "DataSource",
    "OnDemandFeatureView",
    "Feature",
    "init_demo",
    "QuiverError",
    "DefinitionError",
    "NotFoundError",
    "ValidationError",
    "StoreUnavailableError",
]


class PushMode(enum.Enum):
    """Where pushed rows go (Feast's ``PushMode``)."""

    ONLINE = "online"
    OFFLINE = "offline"
    ONLINE_AND_OFFLINE = "online_and_offline"


# --- time ---------------------------------------------------------------------------

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _micros(t: Any, what: str) -> int:
    """A point in time as microseconds since the epoch, UTC.

    Naive datetimes (and pandas/numpy values without a zone) are UTC; zoned ones are
    converted. Strings are ISO 8601. Sub-microsecond parts are dropped.
    """
    if isinstance(t, str):
        try:
            t = _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError as e:
            raise ValidationError(f"{what}: {t!r} is not an ISO 8601 time") from e
    elif type(t).__name__ == "datetime64":  # numpy
        t = int(t.astype("datetime64[us]").astype("int64"))
        return t
    elif hasattr(t, "to_pydatetime"):  # pandas.Timestamp
        t = t.to_pydatetime()
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        d = t - _EPOCH
        return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    if isinstance(t, _dt.date):
        return _micros(_dt.datetime(t.year, t.month, t.day), what)
    raise ValidationError(
        f"{what}: expected a datetime, date or ISO 8601 string, got {type(t).__name__}"
    )


def _datetime(micros: int) -> Optional[_dt.datetime]:
    """µs since the epoch as an aware UTC datetime; None outside datetime's range (the
    store's "since the beginning")."""
    try:
        return _EPOCH + _dt.timedelta(microseconds=micros)
    except OverflowError:
        return None


def _runs(text: str) -> List[Dict[str, Any]]:
    """Materialization stats, their range as datetimes."""
    runs = json.loads(text)
    for r in runs:
        r["start"], r["end"] = _datetime(r["start"]), _datetime(r["end"])
    return runs


# --- Arrow in -------------------------------------------------------------------------


def _arrow(data: Any, what: str) -> Any:
    """An object exporting an Arrow stream (``__arrow_c_stream__``).

    pyarrow tables, polars data frames and other Arrow producers pass as they are (no
    copy); a pandas DataFrame is converted once (its index dropped); a dict of lists or
    a list of dicts becomes a pyarrow table.
    """
    mod = type(data).__module__.split(".")[0]
    if mod == "pandas":
        return _from_pandas(data, what)
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "__arrow_c_stream__"):
        return data
    if isinstance(data, dict):
        return pa.table(data)
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return pa.Table.from_pylist(data)
    raise ValidationError(
        f"{what}: expected a pandas or polars DataFrame, a pyarrow Table or another object "
        f"with __arrow_c_stream__, got {type(data).__name__}"
    )


def _from_pandas(df: Any, what: str = "data frame") -> pa.Table:
    """A pandas DataFrame as an Arrow table, as ``pa.Table.from_pandas`` makes it (index
    dropped), but its datetime columns taken as the int64 values pandas holds (NaT as
    null) rather than element by element: pyarrow's own path checks each value and
    takes most of the conversion's time (2.2 of 2.5 ms with 400k rows)."""
    import numpy as np

    names = list(df.columns)
    if len(set(names)) != len(names):
        dupes = sorted({str(n) for n in df.columns[df.columns.duplicated()]})
        raise ValidationError(f"{what}: duplicate column names {dupes}")
    dtypes = list(df.dtypes)
    times = {
        n
        for n, dtype in zip(names, dtypes)
        if isinstance(n, str)
        and (isinstance(dtype, np.dtype) and dtype.kind == "M"
             or type(dtype).__name__ == "DatetimeTZDtype")
    }
    try:
        if not times:
            return pa.Table.from_pandas(df, preserve_index=False)
        others = [n for n in names if n not in times]
        rest = pa.Table.from_pandas(df, preserve_index=False, columns=others) if others else None
    except (ValueError, TypeError) as e:  # pyarrow's ArrowInvalid, ArrowTypeError
        raise ValidationError(f"{what}: {e}") from e
    columns = []
    for name, dtype in zip(names, dtypes):
        if name not in times:
            columns.append(rest.column(str(name)))
            continue
        arrow_type = _ARROW_TIME_TYPES.get(dtype)
        if arrow_type is None:
            # The type pyarrow gives the column (unit, zone), from no rows.
            arrow_type = pa.array(df[name].iloc[:0]).type
            _ARROW_TIME_TYPES[dtype] = arrow_type
        values = df[name].array
        if values.tz is not None:
            values = values.tz_convert(None)  # the UTC values pandas holds, not a copy
        ints = np.asarray(values).view(np.int64)
        nat = ints == np.iinfo(np.int64).min
        array = pa.array(ints, mask=nat if nat.any() else None).view(arrow_type)
        columns.append(pa.chunked_array([array]))
    return pa.Table.from_arrays(columns, names=[str(n) for n in names])


# The Arrow type of each pandas datetime dtype met (they are few).
_ARROW_TIME_TYPES: Dict[Any, Any] = {}


def _features(features: Any, feature_service: Any) -> tuple:
    """(feature references, feature service name): a list of ``view:feature`` strings,
    or a FeatureService (object or name), as Feast takes them."""
    if isinstance(features, FeatureService):
        features, feature_service = None, features
    if isinstance(feature_service, FeatureService):
        feature_service = feature_service.name
    if isinstance(features, str):
        features = [features]
    return list(features or []), feature_service


# --- registry objects -------------------------------------------------------------------


class _Record:
    """A registered object: its definition's fields as attributes (``name``, ``owner``,
    ``tags``, ``description``, ...), plus ``version`` where the registry keeps one."""

    _kind = "object"

    def __init__(self, record: Dict[str, Any]):
        definition = record.get("def", record)
        self._record = record
        self._def = definition
        self.name = definition.get("name")
        self.version = record.get("version")

    def __getattr__(self, item: str) -> Any:
        d = self.__dict__.get("_def", {})
        if item in d:
            return d[item]
        raise AttributeError(f"{type(self).__name__} has no attribute {item!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The registry's record of this object."""
        return dict(self._record)

    def __repr__(self) -> str:
        v = f", version={self.version}" if self.version is not None else ""
        return f"{type(self).__name__}(name={self.name!r}{v})"


class Feature:
    """A feature of a view: name and dtype."""

    def __init__(self, name: str, dtype: str, description: str = ""):
        self.name, self.dtype, self.description = name, dtype, description

    def __repr__(self) -> str:
        return f"Feature(name={self.name!r}, dtype={self.dtype!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Feature) and (self.name, self.dtype) == (other.name, other.dtype)


class FeatureView(_Record):
    """A registered feature view (snapshot or aggregated)."""

    @property
    def features(self) -> List[Feature]:
        out = [
            Feature(f["name"], _dtype_name(f.get("dtype")), f.get("description", ""))
            for f in self._def.get("features") or []
        ]
        for a in self._def.get("aggregations") or []:
            out.extend(Feature(n, "aggregation") for n in _aggregation_names(a))
        return out

    @property
    def aggregations(self) -> List[Dict[str, Any]]:
        return list(self._def.get("aggregations") or [])


class OnDemandFeatureView(_Record):
    """A registered on-demand feature view."""

    @property
    def features(self) -> List[Feature]:
        return [
            Feature(f["name"], _dtype_name(f.get("dtype")), f.get("description", ""))
            for f in self._def.get("features") or []
        ]


class FeatureService(_Record):
    """A registered feature service."""


class Entity(_Record):
    """A registered entity."""


class DataSource(_Record):
    """A registered source (file, Kafka, Redis stream, push, request)."""


def _dtype_name(d: Any) -> str:
    if isinstance(d, str):
        return d
    if isinstance(d, dict) and len(d) == 1:
        (k, v), = d.items()
        return f"{k}<{_dtype_name(v)}>"
    return str(d)


def _aggregation_names(a: Dict[str, Any]) -> List[str]:
    names = a.get("names")
    if names:
        return list(names)
    return [a["name"]] if "name" in a else []


# --- results ------------------------------------------------------------------------


class RetrievalJob:
    """A training set: the entity rows, in input order, then one column per feature.

    ``to_arrow()`` hands over the Arrow table built in Rust; ``to_pandas()`` /
    ``to_df()`` and ``to_polars()`` convert it without copying the feature columns
    wherever the target layout allows it (numeric columns without nulls for numpy-backed
    pandas; every column for polars and for ``to_pandas(types_mapper=pd.ArrowDtype)``).
    """

    def __init__(self, table: pa.Table):
        self._table = table

    def to_arrow(self) -> pa.Table:
        return self._table

    def to_pandas(self, **kwargs: Any):
        kwargs.setdefault("split_blocks", True)
        return self._table.to_pandas(**kwargs)

    def to_df(self, **kwargs: Any):
        """Feast's name for :meth:`to_pandas`."""
        return self.to_pandas(**kwargs)

    def to_polars(self):
        import polars as pl

        return pl.from_arrow(self._table, rechunk=False)

    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"RetrievalJob({self._table.num_rows} rows, columns={self._table.column_names})"


class OnlineResponse:
    """Feature vectors for entity rows, with each value's status (PRESENT, MISSING,
    OUTSIDE_TTL, INVALID) and event time; a value that is not PRESENT is None."""

    def __init__(self, native: Any):
        self._native = native

    def to_dict(self, include_event_timestamps: bool = False) -> Dict[str, List[Any]]:
        out = self._native.to_dict()
        if include_event_timestamps:
            for name, ts in self._native.event_timestamps().items():
                out[f"{name}__ts"] = ts
        return out

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_batches([self._native.to_arrow()])

    def to_df(self, **kwargs: Any):
        return self.to_arrow().to_pandas(**kwargs)

    def to_polars(self):
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    def statuses(self) -> Dict[str, List[str]]:
        return self._native.statuses()

    def event_timestamps(self) -> Dict[str, List[Optional[_dt.datetime]]]:
        return self._native.event_timestamps()

    @property
    def feature_names(self) -> List[str]:
        return self._native.feature_names()

    @property
    def join_keys(self) -> List[str]:
        return self._native.join_keys()

    def all_present(self) -> bool:
        return self._native.all_present()

    def __len__(self) -> int:
        return len(self._native)

    def __repr__(self) -> str:
        return f"OnlineResponse({len(self)} rows, features={self.feature_names})"


class Plan:
    """What ``apply`` changed (or ``plan`` would change)."""

    def __init__(self, text: str, changed: bool):
        self.text, self.changed = text, changed

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Plan(changed={self.changed})"


# --- the store ------------------------------------------------------------------------


class FeatureStore:
    """A feature repository (a directory with ``quiver.yaml``), opened once: the
    registry snapshot, compiled read plans and store connections are kept and reused
    by every call."""

    def __init__(self, repo_path: Union[str, "os.PathLike[str]"] = "."):
        self._store = _quiver.Store(str(repo_path))

    @property
    def repo_path(self) -> str:
        return self._store.repo_path()

    @property
    def project(self) -> str:
        return self._store.project()

    # registry --------------------------------------------------------------------

    def plan(self) -> Plan:
        """Validates the definitions and tells what ``apply`` would change."""
        return Plan(*self._store.plan())

    def apply(self) -> Plan:
        """Validates every definition of the repository, then registers them (nothing
        is written when one is invalid: ``DefinitionError``)."""
        return Plan(*self._store.apply())

    def _registry(self) -> Dict[str, Any]:
        return json.loads(self._store.registry_json())

    def _records(self, key: str, cls: type, tags: Optional[Dict[str, str]]) -> list:
        out = [cls(r) for _, r in sorted(self._registry().get(key, {}).items())]
        if tags:
            out = [
                o for o in out
                if all((o._def.get("tags") or {}).get(k) == v for k, v in tags.items())
            ]
        return out

    def _get(self, key: str, cls: type, name: str, kind: str):
        record = self._registry().get(key, {}).get(name)
        if record is None:
            raise NotFoundError(f"{kind} '{name}' is not registered")
        return cls(record)

    def list_feature_views(self, tags: Optional[Dict[str, str]] = None) -> List[FeatureView]:
        return self._records("feature_views", FeatureView, tags)

    def get_feature_view(self, name: str) -> FeatureView:
        return self._get("feature_views", FeatureView, name, "feature view")

    def list_on_demand_feature_views(
        self, tags: Optional[Dict[str, str]] = None
    ) -> List[OnDemandFeatureView]:
        return self._records("on_demand_feature_views", OnDemandFeatureView, tags)

    def get_on_demand_feature_view(self, name: str) -> OnDemandFeatureView:
        return self._get(
            "on_demand_feature_views", OnDemandFeatureView, name, "on-demand feature view"
        )

    def list_feature_services(
        self, tags: Optional[Dict[str, str]] = None
    ) -> List[FeatureService]:
        return self._records("feature_services", FeatureService, tags)

    def get_feature_service(self, name: str) -> FeatureService:
        return self._get("feature_services", FeatureService, name, "feature service")

    def list_entities(self, tags: Optional[Dict[str, str]] = None) -> List[Entity]:
        return self._records("entities", Entity, tags)

    def get_entity(self, name: str) -> Entity:
        return self._get("entities", Entity, name, "entity")

    def list_data_sources(self, tags: Optional[Dict[str, str]] = None) -> List[DataSource]:
        return self._records("sources", DataSource, tags)

    def get_data_source(self, name: str) -> DataSource:
        return self._get("sources", DataSource, name, "source")

    # offline -----------------------------------------------------------------------

    def ingest(self, feature_views: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
        """Loads the views' batch sources into the offline store (Delta tables); re-runs
        leave one copy of each row. quiver-specific: Feast reads sources in place."""
        return json.loads(self._store.ingest(list(feature_views) if feature_views else None))

    def get_historical_features(
        self,
        entity_df: Any,
        features: Union[Sequence[str], FeatureService, None] = None,
        full_feature_names: bool = False,
        *,
        feature_service: Union[str, FeatureService, None] = None,
        timestamp_column: Optional[str] = None,
    ) -> RetrievalJob:
        """A point-in-time-correct training set: for each entity row at time T, each
        feature's value as of T (never later), within the view's TTL.

        ``entity_df``: a pandas or polars DataFrame, a pyarrow Table or any Arrow
        stream, with the join keys, an ``event_timestamp`` column (or the one timestamp
        column, or ``timestamp_column``) and the request fields of on-demand features.
        Naive times are UTC; zoned ones are converted. Runs at once: errors surface here.
        """
        refs, service = _features(features, feature_service)
        data = _arrow(entity_df, "entity_df")
        batch = self._store.historical(data, refs, service, full_feature_names, timestamp_column)
        return RetrievalJob(pa.Table.from_batches([batch]))

    # online ------------------------------------------------------------------------

    def materialize(
        self,
        start_date: Any,
        end_date: Any,
        feature_views: Optional[Sequence[str]] = None,
    ) -> List[Dict[str, Any]]:
        """Writes each view's newest row per key with ``start_date <= time < end_date``
        to the online store (aggregated views: their tiles). Returns what each view
        wrote."""
        return _runs(
            self._store.materialize(
                _micros(start_date, "start_date"),
                _micros(end_date, "end_date"),
                list(feature_views) if feature_views else None,
            )
        )

    def materialize_incremental(
        self, end_date: Any, feature_views: Optional[Sequence[str]] = None
    ) -> List[Dict[str, Any]]:
        """Materializes each view from where its last run ended up to ``end_date``."""
        return _runs(
            self._store.materialize(
                None,
                _micros(end_date, "end_date"),
                list(feature_views) if feature_views else None,
            )
        )

    def get_online_features(
        self,
        features: Union[Sequence[str], FeatureService, None] = None,
        entity_rows: Union[Iterable[Dict[str, Any]], Dict[str, List[Any]], None] = None,
        full_feature_names: bool = False,
        *,
        feature_service: Union[str, FeatureService, None] = None,
        at: Any = None,
    ) -> OnlineResponse:
        """Reads feature vectors from the online store.

        ``entity_rows``: a list of dicts, each with the join keys and, for on-demand
        features, their request fields (Feast's request data); or a dict of lists.
        ``at`` (quiver-specific): the time statuses and windows are computed at instead
        of now.
        """
        refs, service = _features(features, feature_service)
        if entity_rows is None:
            raise ValidationError("give entity_rows: a list of dicts with the join keys")
        when = None if at is None else _micros(at, "at")
        return OnlineResponse(
            self._store.online(entity_rows, refs, service, full_feature_names, when)
        )

    # writes ------------------------------------------------------------------------

    def push(
        self,
        push_source_name: str,
        df: Any,
        to: Union[PushMode, str, None] = None,
        *,
        producer: Optional[str] = None,
        sequence: Optional[int] = None,
    ) -> Dict[str, int]:
        """Pushes rows to every feature view reading push source ``push_source_name``.

        Default ``to``: online and offline (a push source is a stream). With
        ``producer`` and a growing ``sequence``, a repeated push changes nothing (needed
        by aggregated views). Returns rows pushed and written.
        """
        return self._push(df, push_source=push_source_name, to=to, producer=producer,
                          sequence=sequence)

    def write_to_online_store(self, feature_view_name: str, df: Any) -> Dict[str, int]:
        """Writes rows to one feature view's online store (newer rows win)."""
        return self._push(df, feature_view=feature_view_name, to=PushMode.ONLINE)

    def write_to_offline_store(self, feature_view_name: str, df: Any) -> Dict[str, int]:
        """Merges rows into one feature view's offline table."""
        return self._push(df, feature_view=feature_view_name, to=PushMode.OFFLINE)

    def _push(self, df: Any, *, push_source: str = "", feature_view: str = "", to=None,
              producer: Optional[str] = None, sequence: Optional[int] = None):
        if isinstance(to, PushMode):
            to = to.value
        if (producer is None) != (sequence is None):
            raise ValidationError("give producer and sequence together")
        data = _arrow(df, "df")
        return json.loads(
            self._store.push(
                data, push_source, feature_view, to or "", producer or "", sequence or 0
            )
        )


def init_demo(path: Union[str, "os.PathLike[str]"], anchor: Any = None) -> None:
    """Writes the demo repository (``quiver init``): drivers, customers, trips, with
    generated data ending at ``anchor`` (default: now)."""
    _quiver.init_demo(str(path), None if anchor is None else _micros(anchor, "anchor"))
