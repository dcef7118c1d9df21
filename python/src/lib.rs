//! `quiver._quiver`: the native module under the `quiver` Python package
//! (`python/quiver`). It holds an opened [`quiver::FeatureStore`] and runs its async
//! operations on one shared runtime with the GIL released; tables cross the boundary
//! as Arrow through the C data interface (PyCapsules), without copies.

use std::future::IntoFuture;
use std::sync::OnceLock;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchReader};
use arrow::datatypes::{Field, Schema};
use arrow::ffi_stream::ArrowArrayStreamReader;
use arrow_pyarrow::PyArrowType;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyType};
use quiver::{ErrorKind, FeatureStatus, Value};
use quiver_core::value::values_to_array;
use quiver_core::DType;
use quiver_online::{Columns, ReadPlan, Vectors};

/// The runtime every call runs on (created on first use, shared by every store).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("quiver")
            .build()
            .expect("the runtime starts")
    })
}

/// How often a long call looks for Ctrl-C (SIGINT) while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Runs `fut` with the GIL released. A pending signal (Ctrl-C) stops the wait and is
/// raised (`KeyboardInterrupt`); the work itself is dropped at its next await.
fn run<T: Send, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: IntoFuture<Output = quiver::Result<T>>,
    F::IntoFuture: Send,
{
    let fut = fut.into_future();
    let out = py.detach(|| {
        runtime().block_on(async {
            let mut fut = std::pin::pin!(fut);
            // The first check after one period: an interval's immediate first tick
            // still waits for the timer wheel (about a millisecond).
            let start = tokio::time::Instant::now() + SIGNAL_CHECK;
            let mut tick = tokio::time::interval_at(start, SIGNAL_CHECK);
            loop {
                tokio::select! {
                    r = &mut fut => return Ok::<_, PyErr>(r),
                    _ = tick.tick() => {
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    });
    match out {
        Ok(r) => r.map_err(|e| Python::attach(|py| to_py_err(py, e))),
        Err(e) => Err(e),
    }
}

/// Runs a short call (an online read: bounded work, no signal checks) with the GIL
/// released.
fn run_short<T: Send, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: IntoFuture<Output = quiver::Result<T>>,
    F::IntoFuture: Send,
{
    let fut = fut.into_future();
    py.detach(|| runtime().block_on(fut))
        .map_err(|e| Python::attach(|py| to_py_err(py, e)))
}

/// A Python exception class of `quiver.errors`.
fn error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("quiver.errors")?.into_any().unbind())
    })?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// The typed exception of an error: `DefinitionError` (with `file`, `line`, `column`,
/// `field` and `object` of the first problem, and `errors`, every problem as a dict),
/// `NotFoundError`, `ValidationError`, else `QuiverError`.
fn to_py_err(py: Python<'_>, e: quiver::Error) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let message = e.to_string();
        if let quiver::Error::Registry(quiver_registry::Error::Definitions(all)) = &e {
            let exc = error_class(py, "DefinitionError")?.call1((message,))?;
            let first = all.first();
            exc.setattr("file", first.map(|d| d.file.clone()))?;
            exc.setattr("line", first.and_then(|d| d.line))?;
            exc.setattr("column", first.and_then(|d| d.column))?;
            exc.setattr("field", first.map(|d| d.field.clone()))?;
            exc.setattr("object", first.map(|d| d.object.clone()))?;
            let list = PyList::empty(py);
            for d in all {
                let item = PyDict::new(py);
                item.set_item("file", &d.file)?;
                item.set_item("line", d.line)?;
                item.set_item("column", d.column)?;
                item.set_item("object", &d.object)?;
                item.set_item("field", &d.field)?;
                item.set_item("message", &d.message)?;
                list.append(item)?;
            }
            exc.setattr("errors", list)?;
            return Ok(PyErr::from_value(exc));
        }
        let class = match e.kind() {
            ErrorKind::NotFound => "NotFoundError",
            ErrorKind::InvalidInput | ErrorKind::TooLarge => "ValidationError",
            ErrorKind::Unavailable => "StoreUnavailableError",
            ErrorKind::Internal => "QuiverError",
        };
        Ok(PyErr::from_value(
            error_class(py, class)?.call1((message,))?,
        ))
    };
    make().unwrap_or_else(|err| err)
}

fn invalid(message: impl Into<String>) -> quiver::Error {
    quiver::Error::Invalid(message.into())
}

/// Reads an Arrow stream (anything with `__arrow_c_stream__`) whole.
fn read_stream(reader: ArrowArrayStreamReader) -> quiver::Result<Vec<RecordBatch>> {
    let schema = reader.schema();
    let mut batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

/// The entity rows' time column when none is named: `event_timestamp`, else the only
/// timestamp column (as Feast infers it), else `event_timestamp` (missing: an error
/// names it).
fn time_column(schema: &Schema) -> String {
    const DEFAULT: &str = "event_timestamp";
    if schema.field_with_name(DEFAULT).is_ok() {
        return DEFAULT.into();
    }
    let mut times = schema
        .fields()
        .iter()
        .filter(|f| matches!(f.data_type(), arrow::datatypes::DataType::Timestamp(..)));
    match (times.next(), times.next()) {
        (Some(f), None) => f.name().clone(),
        _ => DEFAULT.into(),
    }
}

/// An opened feature repository.
#[pyclass(frozen, module = "quiver._quiver")]
struct Store {
    inner: quiver::FeatureStore,
}

#[pymethods]
impl Store {
    #[new]
    fn new(py: Python<'_>, repo_path: std::path::PathBuf) -> PyResult<Self> {
        let inner = quiver::FeatureStore::open(repo_path).map_err(|e| to_py_err(py, e))?;
        Ok(Store { inner })
    }

    /// The repository directory.
    fn repo_path(&self) -> String {
        self.inner.repo().display().to_string()
    }

    /// The project name.
    fn project(&self) -> String {
        self.inner.project().to_string()
    }

    /// Validates the definitions: (changes as text, whether anything would change).
    fn plan(&self, py: Python<'_>) -> PyResult<(String, bool)> {
        let (plan, _) = run(py, self.inner.plan())?;
        Ok((plan.to_string(), !plan.is_empty()))
    }

    /// Validates and registers the definitions: (changes as text, whether any).
    fn apply(&self, py: Python<'_>) -> PyResult<(String, bool)> {
        let plan = run(py, self.inner.apply())?;
        Ok((plan.to_string(), !plan.is_empty()))
    }

    /// Loads the batch sources into the offline store: per view, rows read and written.
    #[pyo3(signature = (views=None))]
    fn ingest(&self, py: Python<'_>, views: Option<Vec<String>>) -> PyResult<String> {
        let stats = run(py, self.inner.ingest().views(views.unwrap_or_default()))?;
        let out: Vec<serde_json::Value> = stats
            .iter()
            .map(|(view, s)| {
                serde_json::json!({
                    "view": view, "rows_in": s.rows_in, "rows_stored": s.rows_stored,
                    "rows_replaced": s.rows_replaced, "rows_duplicate": s.rows_duplicate,
                    "partitions": s.partitions, "table_version": s.table_version,
                })
            })
            .collect();
        Ok(serde_json::Value::from(out).to_string())
    }

    /// The registered state, as the registry's JSON.
    fn registry_json(&self, py: Python<'_>) -> PyResult<String> {
        let state = self.inner.state().map_err(|e| to_py_err(py, e))?;
        serde_json::to_string(&*state).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// A point-in-time-correct training set for the entity rows.
    #[pyo3(signature = (entities, features, feature_service, full_feature_names, timestamp_column))]
    fn historical(
        &self,
        py: Python<'_>,
        entities: PyArrowType<ArrowArrayStreamReader>,
        features: Vec<String>,
        feature_service: Option<String>,
        full_feature_names: bool,
        timestamp_column: Option<String>,
    ) -> PyResult<PyArrowType<RecordBatch>> {
        let mut b = self
            .inner
            .historical()
            .features(features)
            .full_names(full_feature_names);
        if let Some(s) = feature_service {
            b = b.service(s);
        }
        let batch = run(py, async move {
            let batches = read_stream(entities.0)?;
            let ts = timestamp_column.unwrap_or_else(|| time_column(&batches[0].schema()));
            b.timestamp_column(ts).entity_batches(batches).await
        })?;
        Ok(PyArrowType(batch))
    }

    /// Writes the newest rows of `[start, end)` (or since each view's last run) online.
    #[pyo3(signature = (start, end, views=None, backfill=false))]
    fn materialize(
        &self,
        py: Python<'_>,
        start: Option<i64>,
        end: i64,
        views: Option<Vec<String>>,
        backfill: bool,
    ) -> PyResult<String> {
        let views = views.unwrap_or_default();
        let b = match (start, backfill) {
            (Some(s), false) => self.inner.materialize(s, end),
            (Some(s), true) => self.inner.backfill(s, end),
            (None, _) => self.inner.materialize_incremental(end),
        };
        let stats = run(py, b.views(views))?;
        serde_json::to_string(&stats).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Pushes rows to a push source (every view reading it) or to one feature view.
    #[pyo3(signature = (rows, push_source, feature_view, to, producer, sequence))]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        py: Python<'_>,
        rows: PyArrowType<ArrowArrayStreamReader>,
        push_source: String,
        feature_view: String,
        to: String,
        producer: String,
        sequence: u64,
    ) -> PyResult<String> {
        let store = self.inner.clone();
        let stats = run(py, async move {
            let batches = read_stream(rows.0)?;
            let schema = batches[0].schema();
            let batch = arrow::compute::concat_batches(&schema, &batches)?;
            store
                .push(batch)
                .push_source(push_source)
                .feature_view(feature_view)
                .to(to)
                .producer(producer, sequence)
                .await
        })?;
        serde_json::to_string(&stats).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Reads feature vectors: `entity_rows` is a list of dicts (join keys, and request
    /// fields of on-demand features) or a dict of equal-length lists.
    #[pyo3(signature = (entity_rows, features, feature_service, full_feature_names, at=None))]
    fn online(
        &self,
        py: Python<'_>,
        entity_rows: &Bound<'_, PyAny>,
        features: Vec<String>,
        feature_service: Option<String>,
        full_feature_names: bool,
        at: Option<i64>,
    ) -> PyResult<OnlineResponse> {
        let err = |e| to_py_err(py, e);
        let plan = self
            .inner
            .snapshot()
            .and_then(|s| s.plan(feature_service.as_deref(), &features, full_feature_names))
            .map_err(err)?;
        let (entities, context) = request_columns(&plan, entity_rows)?;
        let at = at.unwrap_or_else(quiver_core::time::now);
        let store = self.inner.clone();
        let p = plan.clone();
        let (entities, vectors) = run_short(py, async move {
            let online = store.online().await?;
            let v = p
                .execute_with(online.as_ref(), &entities, &context, at)
                .await?;
            Ok((entities, v))
        })?;
        Ok(OnlineResponse {
            plan,
            entities,
            vectors,
        })
    }
}

/// Splits the entity rows into join-key columns and request-field columns, typed by
/// the plan. Errors name the row and key.
fn request_columns(plan: &ReadPlan, rows: &Bound<'_, PyAny>) -> PyResult<(Columns, Columns)> {
    let fields = plan.request_fields();
    let key_dtype = |name: &str| plan.join_keys().iter().find(|k| k.name == name);
    let py = rows.py();
    let bad = |m: String| to_py_err(py, invalid(m));
    let mut keys: Vec<(String, Vec<Value>)> = plan
        .join_keys()
        .iter()
        .map(|k| (k.name.clone(), Vec::new()))
        .collect();
    let mut request: Vec<(String, Vec<Value>)> = fields
        .iter()
        .map(|(n, _)| (n.to_string(), Vec::new()))
        .collect();
    let mut put = |name: &str, v: &Bound<'_, PyAny>, row: usize| -> PyResult<()> {
        if let Some(k) = key_dtype(name) {
            let value = to_value(v, &k.dtype)
                .map_err(|m| bad(format!("entity row {}: join key '{name}': {m}", row + 1)))?;
            let col = keys.iter_mut().find(|(n, _)| n == name).expect("listed");
            col.1.push(value);
        } else if let Some((_, t)) = fields.iter().find(|(n, _)| *n == name) {
            let value = to_value(v, t).map_err(|m| {
                bad(format!(
                    "entity row {}: request field '{name}': {m}",
                    row + 1
                ))
            })?;
            let col = request.iter_mut().find(|(n, _)| n == name).expect("listed");
            col.1.push(value);
        } else {
            let keys: Vec<&str> = plan.join_keys().iter().map(|k| k.name.as_str()).collect();
            return Err(bad(format!(
                "entity row {}: '{name}' is not a join key ({}) or request field of the \
                 requested features",
                row + 1,
                keys.join(", ")
            )));
        }
        Ok(())
    };
    let mut n = 0usize;
    if let Ok(d) = rows.cast::<PyDict>() {
        // Columns: {"driver_id": [1001, 1002], ...}.
        for (name, values) in d.iter() {
            let name: String = name.extract()?;
            let mut i = 0;
            for v in values.try_iter()? {
                put(&name, &v?, i)?;
                i += 1;
            }
            n = n.max(i);
        }
    } else {
        for (i, row) in rows.try_iter()?.enumerate() {
            let row = row?;
            let row = row
                .cast::<PyDict>()
                .map_err(|_| bad(format!("entity row {} is not a dict", i + 1)))?;
            for (name, v) in row.iter() {
                let name: String = name.extract()?;
                put(&name, &v, i)?;
            }
            n = i + 1;
        }
    }
    if n == 0 {
        return Err(bad("no entity rows given".into()));
    }
    for (name, col) in &keys {
        if col.len() != n {
            return Err(bad(format!(
                "join key '{name}' is missing from {} of {n} entity rows",
                n - col.len()
            )));
        }
    }
    for (name, col) in &mut request {
        if col.is_empty() {
            // Not given: null (an on-demand feature then computes from nulls).
            col.resize(n, Value::Null);
        } else if col.len() != n {
            return Err(bad(format!(
                "request field '{name}' is missing from {} of {n} entity rows",
                n - col.len()
            )));
        }
    }
    let context = if request.is_empty() {
        Columns::default()
    } else {
        Columns::new(request).map_err(|e| to_py_err(py, e.into()))?
    };
    let entities = Columns::new(keys).map_err(|e| to_py_err(py, e.into()))?;
    Ok((entities, context))
}

/// A Python value as a value of `dtype` (ints, floats, strings, bytes, bools; numpy
/// scalars through their Python protocols; timestamps as the package reads any time —
/// datetime, pandas, numpy, ISO text; lists of these). The message says what was wrong.
fn to_value(v: &Bound<'_, PyAny>, dtype: &DType) -> Result<Value, String> {
    if v.is_none() {
        return Ok(Value::Null);
    }
    let wrong = || {
        let t = v
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        format!(
            "expected {dtype}, got {t} {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        )
    };
    let is_bool = v.is_instance_of::<PyBool>();
    Ok(match dtype {
        DType::Bool if is_bool => Value::Bool(v.extract().map_err(|_| wrong())?),
        DType::Int32 | DType::Int64 if !is_bool && !v.is_instance_of::<PyFloat>() => {
            let i: i64 = v.extract().map_err(|_| wrong())?;
            match dtype {
                DType::Int32 => Value::Int32(i32::try_from(i).map_err(|_| wrong())?),
                _ => Value::Int64(i),
            }
        }
        DType::Float32 | DType::Float64 if !is_bool => {
            let f: f64 = v.extract().map_err(|_| wrong())?;
            match dtype {
                DType::Float32 => Value::Float32(f as f32),
                _ => Value::Float64(f),
            }
        }
        DType::String if v.is_instance_of::<PyString>() => {
            Value::String(v.extract().map_err(|_| wrong())?)
        }
        DType::Bytes if v.is_instance_of::<PyBytes>() => {
            Value::Bytes(v.extract().map_err(|_| wrong())?)
        }
        // pandas' and numpy's "not a time" is a missing value, as in their frames.
        DType::Timestamp if is_not_a_time(v) => Value::Null,
        // Numbers are not times (their unit would be a guess).
        DType::Timestamp if !v.is_instance_of::<PyInt>() && !v.is_instance_of::<PyFloat>() => {
            let micros = v
                .py()
                .import("quiver")
                .and_then(|m| m.getattr("_micros"))
                .and_then(|f| f.call1((v, "")))
                .and_then(|t| t.extract::<i64>())
                .map_err(|_| wrong())?;
            Value::Timestamp(micros)
        }
        DType::List(item) if !v.is_instance_of::<PyString>() && !v.is_instance_of::<PyBytes>() => {
            let items = v.try_iter().map_err(|_| wrong())?;
            let mut out = Vec::new();
            for (i, x) in items.enumerate() {
                let x = x.map_err(|_| wrong())?;
                out.push(to_value(&x, item).map_err(|e| format!("item {}: {e}", i + 1))?);
            }
            Value::List(out)
        }
        _ => return Err(wrong()),
    })
}

/// Whether `v` is pandas' `NaT` or a numpy `datetime64('NaT')`.
fn is_not_a_time(v: &Bound<'_, PyAny>) -> bool {
    let Ok(name) = v.get_type().name() else {
        return false;
    };
    let name = name.to_string();
    (name == "NaTType" || name == "datetime64") && v.str().is_ok_and(|s| s == "NaT")
}

/// A Python object of a value.
fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int32(i) => PyInt::new(py, *i).into_any(),
        Value::Int64(i) => PyInt::new(py, *i).into_any(),
        Value::Float32(f) => PyFloat::new(py, *f as f64).into_any(),
        Value::Float64(f) => PyFloat::new(py, *f).into_any(),
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Timestamp(t) => timestamp(py, *t)?,
        Value::List(items) => {
            let list = PyList::empty(py);
            for i in items {
                list.append(to_py(py, i)?)?;
            }
            list.into_any()
        }
    })
}

/// A timestamp (µs since the epoch) as an aware `datetime` in UTC, exact.
fn timestamp<'py>(py: Python<'py>, micros: i64) -> PyResult<Bound<'py, PyAny>> {
    static EPOCH: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    let (epoch, delta) = EPOCH.get_or_try_init(py, || {
        let dt = py.import("datetime")?;
        let utc = dt.getattr("timezone")?.getattr("utc")?;
        let epoch = dt
            .getattr("datetime")?
            .call1((1970, 1, 1, 0, 0, 0, 0, utc))?;
        Ok::<_, PyErr>((epoch.unbind(), dt.getattr("timedelta")?.unbind()))
    })?;
    let d = delta.bind(py).call1((0, 0, micros))?;
    epoch.bind(py).call_method1("__add__", (d,))
}

/// The result of an online read: entity rows × features, with statuses and event
/// times.
#[pyclass(frozen, module = "quiver._quiver")]
struct OnlineResponse {
    plan: std::sync::Arc<ReadPlan>,
    entities: Columns,
    vectors: Vectors,
}

#[pymethods]
impl OnlineResponse {
    /// The feature names, in request order.
    fn feature_names(&self) -> Vec<String> {
        self.plan.feature_names().to_vec()
    }

    /// The join keys' names.
    fn join_keys(&self) -> Vec<String> {
        self.entities.names().map(str::to_string).collect()
    }

    /// The number of entity rows.
    fn __len__(&self) -> usize {
        self.vectors.rows()
    }

    /// `{join key or feature: [value per row]}`; a value that is not PRESENT is None.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for name in self.entities.names() {
            let values = self.entities.get(name).expect("named");
            let list = PyList::empty(py);
            for v in values {
                list.append(to_py(py, v)?)?;
            }
            out.set_item(name, list)?;
        }
        self.per_feature(py, &out, |py, i| to_py(py, &self.vectors.values[i]))?;
        Ok(out)
    }

    /// `{feature: [status per row]}`: PRESENT, MISSING, OUTSIDE_TTL or INVALID.
    fn statuses<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        self.per_feature(py, &out, |py, i| {
            Ok(PyString::new(py, self.vectors.statuses[i].as_str()).into_any())
        })?;
        Ok(out)
    }

    /// `{feature: [event time per row (aware UTC datetime) or None]}`.
    fn event_timestamps<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        self.per_feature(py, &out, |py, i| match self.vectors.event_timestamps[i] {
            Some(t) => timestamp(py, t),
            None => Ok(py.None().into_bound(py)),
        })?;
        Ok(out)
    }

    /// The rows as an Arrow record batch: join keys, then each feature typed as
    /// declared (null when not PRESENT).
    fn to_arrow(&self, py: Python<'_>) -> PyResult<PyArrowType<RecordBatch>> {
        self.batch().map(PyArrowType).map_err(|e| to_py_err(py, e))
    }

    /// Whether every value is PRESENT.
    fn all_present(&self) -> bool {
        self.vectors
            .statuses
            .iter()
            .all(|s| *s == FeatureStatus::Present)
    }
}

impl OnlineResponse {
    /// Adds `{feature: [cell(row * n_features + feature) per row]}` to `out`.
    fn per_feature<'py>(
        &self,
        py: Python<'py>,
        out: &Bound<'py, PyDict>,
        cell: impl Fn(Python<'py>, usize) -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let (n, rows) = (self.vectors.n_features, self.vectors.rows());
        for (j, name) in self.plan.feature_names().iter().enumerate() {
            let list = PyList::empty(py);
            for i in 0..rows {
                list.append(cell(py, i * n + j)?)?;
            }
            out.set_item(name, list)?;
        }
        Ok(())
    }

    fn batch(&self) -> quiver::Result<RecordBatch> {
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for k in self.plan.join_keys() {
            let values = self.entities.get(&k.name).expect("every key is given");
            let a = values_to_array(values, &k.dtype)?;
            fields.push(Field::new(&k.name, a.data_type().clone(), true));
            arrays.push(a);
        }
        let (n, rows) = (self.vectors.n_features, self.vectors.rows());
        let dtypes = self.plan.feature_dtypes();
        let mut column = Vec::with_capacity(rows);
        for (j, name) in self.plan.feature_names().iter().enumerate() {
            column.clear();
            column.extend((0..rows).map(|i| self.vectors.values[i * n + j].clone()));
            let a = match &dtypes[j] {
                Some(t) => values_to_array(&column, t)?,
                None => arrow::array::new_null_array(&arrow::datatypes::DataType::Null, rows),
            };
            fields.push(Field::new(name, a.data_type().clone(), true));
            arrays.push(a);
        }
        Ok(RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(fields)),
            arrays,
        )?)
    }
}

/// Writes the demo repository (`quiver init`) into `path`, its data ending at `anchor`
/// (µs since the epoch; default: now).
#[pyfunction]
#[pyo3(signature = (path, anchor=None))]
fn init_demo(py: Python<'_>, path: std::path::PathBuf, anchor: Option<i64>) -> PyResult<()> {
    let anchor = anchor.unwrap_or_else(quiver_core::time::now);
    run(
        py,
        quiver::blocking(move || quiver::demo::init(&path, anchor)),
    )
}

#[pymodule]
fn _quiver(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Warnings to stderr; QUIVER_LOG chooses more (as for the CLI).
    quiver::init_diagnostics();
    keep_freed_memory();
    m.add_class::<Store>()?;
    m.add_class::<OnlineResponse>()?;
    m.add_function(wrap_pyfunction!(init_demo, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// The module's allocations keep their memory between calls: a retrieval's large
/// buffers would otherwise go back to the system after each call and fault in again
/// on the next (a fifth of a 400k-row retrieval's time with the system allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of the mimalloc built here (`mimalloc.h`, v3: the 16th
/// option), which the Rust bindings do not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at mimalloc's purges 10 s apart, not 1 s:
/// notebook calls come seconds apart, and a retrieval after a pause otherwise faults
/// its buffers in again (`python/tests/test_memory.py`: 400k labels 1.5 s after the
/// previous call fault a tenth of the first call's pages, nearly all of them with the
/// 1 s delay; BENCHMARKS.md, "Fourth pass" and "Fifth pass"). 10 s is jemalloc's
/// default decay; `MIMALLOC_PURGE_DELAY` in the environment still decides when set.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: reads and sets an integer option, which mimalloc allows at any time. The
    // option is set only if it holds purge_delay's default, so that a mimalloc whose
    // options are numbered otherwise is left as it is.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 1_000 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000);
        }
    }
}
