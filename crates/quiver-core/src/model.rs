//! The object model: entities, sources, feature views, request sources, on-demand
//! feature views and feature services (DESIGN §1).
//!
//! These structs are the definition format (parsed from the repository's YAML with
//! unknown fields rejected) and, with the resolved fields filled in by `apply`, the
//! registry's stored form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::time::Duration;
use crate::{Error, Result};

/// Free-form labels on an object.
pub type Tags = BTreeMap<String, String>;

/// A join key of an entity: a name and, once resolved, a type. In definitions either a
/// bare name (`driver_id`, the type is inferred from the sources) or
/// `{ name: driver_id, dtype: int64 }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JoinKeyDef {
    Name(String),
    Typed(JoinKey),
}

impl JoinKeyDef {
    /// The key's column name.
    pub fn name(&self) -> &str {
        match self {
            JoinKeyDef::Name(n) => n,
            JoinKeyDef::Typed(k) => &k.name,
        }
    }
    /// The declared type, if any.
    pub fn dtype(&self) -> Option<&DType> {
        match self {
            JoinKeyDef::Name(_) => None,
            JoinKeyDef::Typed(k) => Some(&k.dtype),
        }
    }
}

/// A typed join key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinKey {
    pub name: String,
    pub dtype: DType,
}

/// A thing features describe (a user, a driver, a (user, item) pair).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub name: String,
    pub join_keys: Vec<JoinKeyDef>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// Where rows come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// A Parquet or CSV file, a directory of them, or a glob.
    File(FileSource),
    /// Events appended to a Redis stream, read with a consumer group.
    RedisStream(RedisStreamSource),
    /// Events of a Kafka topic, read with a consumer group.
    Kafka(KafkaSource),
    /// Events sent to the feature server (`POST /push`, gRPC `Push`).
    Push(PushSource),
}

impl Source {
    /// The source's type as written in definitions (`file`, `kafka`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::RedisStream(_) => "redis_stream",
            Source::Kafka(_) => "kafka",
            Source::Push(_) => "push",
        }
    }
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            Source::File(f) => &f.name,
            Source::RedisStream(r) => &r.name,
            Source::Push(p) => &p.name,
            Source::Kafka(k) => &k.name,
        }
    }
    /// The column holding each row's event time.
    pub fn timestamp_field(&self) -> &str {
        match self {
            Source::File(f) => &f.timestamp_field,
            Source::RedisStream(r) => &r.timestamp_field,
            Source::Push(p) => &p.timestamp_field,
            Source::Kafka(k) => &k.timestamp_field,
        }
    }
    /// The column holding each row's creation time, used to break ties.
    pub fn created_timestamp_field(&self) -> Option<&str> {
        match self {
            Source::File(f) => f.created_timestamp_field.as_deref(),
            Source::RedisStream(r) => r.created_timestamp_field.as_deref(),
            Source::Push(p) => p.created_timestamp_field.as_deref(),
            Source::Kafka(k) => k.created_timestamp_field.as_deref(),
        }
    }
    /// The owner, if set.
    pub fn owner(&self) -> &str {
        match self {
            Source::File(f) => &f.owner,
            Source::RedisStream(r) => &r.owner,
            Source::Push(p) => &p.owner,
            Source::Kafka(k) => &k.owner,
        }
    }
    /// The description, if set.
    pub fn description(&self) -> &str {
        match self {
            Source::File(f) => &f.description,
            Source::RedisStream(r) => &r.description,
            Source::Push(p) => &p.description,
            Source::Kafka(k) => &k.description,
        }
    }
    /// For a stream source, the file source holding the same events' history (what
    /// ingest, backfills and training sets read); `None` for a file source.
    pub fn batch_source(&self) -> Option<&str> {
        match self {
            Source::File(_) => None,
            Source::RedisStream(r) => Some(&r.batch_source),
            Source::Push(p) => Some(&p.batch_source),
            Source::Kafka(k) => Some(&k.batch_source),
        }
    }
    /// For a stream source, the unit of event times written as numbers.
    pub fn timestamp_unit(&self) -> Option<EpochUnit> {
        match self {
            Source::File(_) => None,
            Source::RedisStream(r) => r.timestamp_unit,
            Source::Push(_) => None,
            Source::Kafka(k) => k.timestamp_unit,
        }
    }
}

/// `url` with any password replaced by `***`, for messages and listings.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            return format!("{scheme}://{user}{}", &rest[at..]);
        }
    }
    url.to_string()
}

/// How a stream's events are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// One JSON object per event, its fields named as the batch source's columns.
    #[default]
    Json,
}

/// Where a new consumer group starts reading a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStart {
    /// From the first event the stream holds.
    #[default]
    Earliest,
    /// From events appended after the group is created.
    Latest,
}

/// The unit of event times written as JSON numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochUnit {
    S,
    Ms,
    Us,
    Ns,
}

fn data_field() -> String {
    "data".into()
}
fn quiver_group() -> String {
    "quiver".into()
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A Redis stream of events (`XADD KEY * data '{"card": 7, "amount": 2.5, "ts":
/// "2026-01-01T00:00:00Z"}'`), read by `quiver stream` with a consumer group
/// (`XREADGROUP`, `XACK` once an event is written online and offline). The events carry
/// the columns of `batch_source`, the file source that holds their history offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamSource {
    pub name: String,
    /// The Redis server, e.g. `redis://127.0.0.1:6379`.
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// The entry field holding the encoded event (default `data`).
    #[serde(default = "data_field")]
    pub field: String,
    /// The consumer group (default `quiver`), created when missing.
    #[serde(default = "quiver_group")]
    pub group: String,
    /// Where a new consumer group starts (default `earliest`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub start: StreamStart,
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: StreamFormat,
    /// The event-time field: text as in files (RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]`), or
    /// a number since the epoch in `timestamp_unit`.
    pub timestamp_field: String,
    /// The unit of event times written as numbers; numbers are refused without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_unit: Option<EpochUnit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp_field: Option<String>,
    /// The file source holding the same events' history.
    pub batch_source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// The file formats a file source can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Parquet,
    Csv,
}

impl FileFormat {
    /// The format a path's extension names, if it names one.
    pub fn from_path(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".parquet") || lower.ends_with(".pq") {
            Some(FileFormat::Parquet)
        } else if lower.ends_with(".csv") {
            Some(FileFormat::Csv)
        } else {
            None
        }
    }
}

/// A batch source in files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    pub name: String,
    /// A file, a directory (every Parquet/CSV file below it) or a glob; relative paths
    /// are relative to the repository.
    pub path: String,
    /// Parquet or CSV; inferred from the extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FileFormat>,
    pub timestamp_field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp_field: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// One feature of a view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    pub dtype: DType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Whether a float feature may hold NaN and ±infinity; by default they are rejected
    /// where rows enter ([`crate::finite`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_non_finite: bool,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// A Kafka topic of events, read by `quiver stream` in a consumer group (workers of one
/// group split the topic's partitions; offsets are committed once the events are written
/// online and offline). Each message's value is one event carrying the columns of
/// `batch_source`, the file source that holds their history offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    pub name: String,
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// The consumer group (default `quiver`).
    #[serde(default = "quiver_group")]
    pub group: String,
    /// Where a group without committed offsets starts (default `earliest`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub start: StreamStart,
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: StreamFormat,
    /// The event-time field (see [`RedisStreamSource::timestamp_field`]).
    pub timestamp_field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_unit: Option<EpochUnit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp_field: Option<String>,
    /// The file source holding the same events' history.
    pub batch_source: String,
    /// Further consumer settings passed to the client (librdkafka's names, e.g.
    /// `security.protocol`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// Events sent to the feature server (`POST /push` or gRPC `Push` with `push_source`),
/// written to every feature view over this source: online at once (tile merges or the
/// newest row), offline when asked. They carry the columns of `batch_source`, the file
/// source that holds their history offline (as Feast's push sources).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSource {
    pub name: String,
    /// The event-time column of pushed rows (a column of `batch_source`).
    pub timestamp_field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp_field: Option<String>,
    /// The file source holding the same events' history.
    pub batch_source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// A named group of features of one entity set, read from one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureView {
    pub name: String,
    pub entities: Vec<String>,
    pub source: String,
    /// How long a row stays valid after its event time; `0` means no limit.
    #[serde(default)]
    pub ttl: Duration,
    /// How fresh the newest row should be; monitored, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_sla: Option<Duration>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Whether values are materialized to the online store.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub online: bool,
    /// Whether history is kept in the offline store.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub offline: bool,
    /// The features: columns of the source (a snapshot view) or, when `aggregations`
    /// is given, the aggregations' outputs, filled in by the registry at apply.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// Windowed aggregations over the source's events (an aggregated view). A view
    /// declares either `features` or `aggregations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregations: Vec<AggregationDef>,
    /// An aggregated view's tile retention: how far back from now its tiles are kept
    /// online (and materialized, and brought up to date by late events). At least its
    /// longest window plus that window's hop, which is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
}

/// One aggregation of an aggregated feature view: a function of a column over one or
/// more windows, one output feature per window (named by
/// [`crate::agg::output_name`], e.g. `amount_sum_1h`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationDef {
    /// The aggregated column of the source; none for `count_star`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub function: crate::agg::Function,
    pub windows: Vec<Duration>,
    /// The tile length; by default chosen per window
    /// ([`crate::agg::window::default_hop`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<Duration>,
    /// `first_n`, `last_n`: how many values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// `approx_percentile`: which, between 0 and 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<Percentile>,
    /// `count_distinct`: the most distinct values a window may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_distinct: Option<usize>,
}

impl AggregationDef {
    /// The function's parameters as the engine takes them.
    pub fn params(&self) -> crate::agg::Params {
        crate::agg::Params {
            n: self.n,
            percentile: self.percentile.map(|p| p.0),
            max_distinct: self.max_distinct,
        }
    }
}

/// A percentile between 0 and 1 (compared by its bits, so definitions are `Eq`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Percentile(pub f64);

impl PartialEq for Percentile {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Percentile {}

impl FeatureView {
    /// The feature with this name.
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }
}

/// The features one model consumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureService {
    pub name: String,
    /// `view:feature` references; `view:*` for every feature of a view.
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// One field of a request source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestField {
    pub name: String,
    pub dtype: DType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The fields that arrive with a request rather than from a store (DESIGN §1: a request
/// source). Online they come with the serving request; offline they are columns of the
/// entity rows, under the same names.
///
/// ```yaml
/// request_sources:
///   - name: trip_request
///     schema: [{ name: distance_km, dtype: float64 }]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSource {
    pub name: String,
    pub schema: Vec<RequestField>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

impl RequestSource {
    /// The field with this name.
    pub fn field(&self, name: &str) -> Option<&RequestField> {
        self.schema.iter().find(|f| f.name == name)
    }
}

/// An input of an on-demand feature view: in definitions either `{ request: NAME }` (a
/// request source) or the name of a feature view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OnDemandSource {
    /// A request source, by name.
    Request(String),
    /// A feature view, by name.
    View(String),
}

impl OnDemandSource {
    /// The name of the request source or feature view.
    pub fn name(&self) -> &str {
        match self {
            OnDemandSource::Request(n) | OnDemandSource::View(n) => n,
        }
    }
}

impl std::fmt::Display for OnDemandSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnDemandSource::Request(n) => write!(f, "request source '{n}'"),
            OnDemandSource::View(n) => write!(f, "feature view '{n}'"),
        }
    }
}

impl Serialize for OnDemandSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            OnDemandSource::View(n) => s.serialize_str(n),
            OnDemandSource::Request(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("request", n)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for OnDemandSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OnDemandSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a feature view name or { request: REQUEST_SOURCE }")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(OnDemandSource::View(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut request: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "request" {
                        return Err(serde::de::Error::unknown_field(&key, &["request"]));
                    }
                    if request.is_some() {
                        return Err(serde::de::Error::duplicate_field("request"));
                    }
                    request = Some(map.next_value()?);
                }
                request
                    .map(OnDemandSource::Request)
                    .ok_or_else(|| serde::de::Error::missing_field("request"))
            }
        }
        d.deserialize_any(V)
    }
}

/// One feature of an on-demand feature view: its type and the SQL expression that
/// computes it from the view's inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandFeature {
    pub name: String,
    /// The declared type; the expression's result is cast to it.
    pub dtype: DType,
    /// A SQL scalar expression over the inputs, e.g. `conv_rate * distance_km`.
    pub expr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Whether a float result may be NaN or ±infinity; by default such a row is null
    /// with status `INVALID` ([`crate::finite`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_non_finite: bool,
}

/// Features computed when they are asked for, from request fields and other views'
/// features (DESIGN §1, §5 "on-demand"). One evaluator computes them, offline over a
/// whole training set and online over the rows of one request.
///
/// In an expression a request field is named by its name, a source view's feature by
/// its bare name or, to tell apart features of the same name, `view__feature`.
///
/// ```yaml
/// on_demand_feature_views:
///   - name: trip_context
///     sources: [request: trip_request, driver_hourly_stats]
///     features:
///       - { name: conv_rate_x_distance, dtype: float64, expr: "conv_rate * distance_km" }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandFeatureView {
    pub name: String,
    pub sources: Vec<OnDemandSource>,
    pub features: Vec<OnDemandFeature>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

impl OnDemandFeatureView {
    /// The feature with this name.
    pub fn feature(&self, name: &str) -> Option<&OnDemandFeature> {
        self.features.iter().find(|f| f.name == name)
    }
    /// The request sources it reads, in definition order.
    pub fn request_sources(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| match s {
            OnDemandSource::Request(n) => Some(n.as_str()),
            OnDemandSource::View(_) => None,
        })
    }
    /// The feature views it reads, in definition order.
    pub fn source_views(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| match s {
            OnDemandSource::View(n) => Some(n.as_str()),
            OnDemandSource::Request(_) => None,
        })
    }
}

/// A reference to one feature: `view:feature`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeatureRef {
    pub view: String,
    pub feature: String,
}

impl FeatureRef {
    /// Parses `view:feature`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some((v, f)) if !v.is_empty() && !f.is_empty() && !f.contains(':') => Ok(FeatureRef {
                view: v.trim().to_string(),
                feature: f.trim().to_string(),
            }),
            _ => Err(Error::Invalid(format!(
                "invalid feature reference {s:?}: expected view:feature"
            ))),
        }
    }
    /// The output column name: `view__feature` with full names, else `feature`.
    pub fn output_name(&self, full_names: bool) -> String {
        if full_names {
            format!("{}__{}", self.view, self.feature)
        } else {
            self.feature.clone()
        }
    }
}

impl std::fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.view, self.feature)
    }
}

/// A feature view with everything the data paths need resolved: its typed join keys in
/// storage order, its version, and the source columns that carry time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedView {
    pub name: String,
    /// Bumped whenever the stored data's shape changes (keys, source, features).
    pub version: u32,
    pub project: String,
    /// The entities, in definition order.
    pub entities: Vec<String>,
    /// The join keys of all entities, in entity order then key order.
    pub join_keys: Vec<JoinKey>,
    /// The stored columns: a snapshot view's features, or the columns an aggregated
    /// view's aggregations read (its raw events' values).
    pub features: Vec<Feature>,
    pub ttl: Duration,
    /// An aggregated view's output features, in definition order (empty for a snapshot
    /// view).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregations: Vec<ResolvedAggregation>,
    /// An aggregated view's declared tile retention ([`Self::tile_retention`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
}

/// One output feature of an aggregated view: a function of a stored column over one
/// window, evaluated from tiles of `hop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedAggregation {
    /// The output feature's name, e.g. `amount_sum_1h`.
    pub name: String,
    /// The stored column it reads; none for `count_star`.
    pub column: Option<String>,
    pub function: crate::agg::Function,
    pub window: Duration,
    pub hop: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<Percentile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_distinct: Option<usize>,
}

impl ResolvedAggregation {
    /// The compiled aggregation over a column of type `column` (as the registry checked
    /// it, so this does not fail for a resolved view).
    pub fn aggregation(
        &self,
        column: Option<&DType>,
    ) -> std::result::Result<crate::agg::Aggregation, crate::agg::DefinitionProblem> {
        crate::agg::Aggregation::new(
            self.function,
            column,
            crate::agg::Params {
                n: self.n,
                percentile: self.percentile.map(|p| p.0),
                max_distinct: self.max_distinct,
            },
        )
    }
}

impl ResolvedView {
    /// The entity set name used in online keys: the entity names joined by `,`.
    pub fn entity_set(&self) -> String {
        self.entities.join(",")
    }
    /// The index of a feature by name.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }
    /// The name of this view's offline table: `name` for version 1, `name.vN` after
    /// (a `.` cannot appear in a view name, so tables of different views never collide).
    pub fn table_name(&self) -> String {
        if self.version <= 1 {
            self.name.clone()
        } else {
            format!("{}.v{}", self.name, self.version)
        }
    }
    /// The short, stable field id under which this view's rows are stored online:
    /// a hash of project, view name and version (DESIGN §4: short hashed field names).
    pub fn online_field(&self) -> [u8; 8] {
        let s = format!("{}\0{}\0{}", self.project, self.name, self.version);
        xxhash_rust::xxh3::xxh3_64(s.as_bytes()).to_le_bytes()
    }

    /// How far back from now an aggregated view keeps its tiles: the declared
    /// `retention`, else its longest window plus that window's hop.
    pub fn tile_retention(&self) -> Duration {
        self.retention.unwrap_or_else(|| {
            Duration::from_micros(
                self.aggregations
                    .iter()
                    .map(|a| a.window.micros() + a.hop.micros())
                    .max()
                    .unwrap_or(0),
            )
        })
    }

    /// An aggregated view's tile groups: the aggregations sharing each hop, by hop,
    /// each with its compiled layout, windows and online field. The field depends on
    /// the group's aggregations, so a changed definition writes fresh tiles instead of
    /// misreading old ones.
    pub fn tile_groups(&self) -> Result<Vec<TileGroup>> {
        let mut hops: Vec<Duration> = self.aggregations.iter().map(|a| a.hop).collect();
        hops.sort();
        hops.dedup();
        let mut out = Vec::with_capacity(hops.len());
        for hop in hops {
            let members: Vec<usize> = (0..self.aggregations.len())
                .filter(|&i| self.aggregations[i].hop == hop)
                .collect();
            // One slot (stored IR) per distinct IR of a column: outputs that share an
            // IR read the same slot.
            let mut aggregations: Vec<crate::agg::Aggregation> = Vec::new();
            let mut columns: Vec<Option<String>> = Vec::new();
            let mut outputs = Vec::with_capacity(members.len());
            let mut signature = format!(
                "{}\0{}\0{}\0tiles\0{}\0slots",
                self.project,
                self.name,
                self.version,
                hop.micros()
            );
            for &i in &members {
                let a = &self.aggregations[i];
                let dtype = a
                    .column
                    .as_ref()
                    .and_then(|c| self.features.iter().find(|f| &f.name == c))
                    .map(|f| f.dtype.clone());
                let agg = a.aggregation(dtype.as_ref()).map_err(|p| {
                    Error::Invalid(format!("aggregation '{}': {}", a.name, p.message))
                })?;
                let slot = match (0..aggregations.len())
                    .find(|&s| columns[s] == a.column && aggregations[s].shares_ir(&agg))
                {
                    Some(s) => s,
                    None => {
                        signature.push_str(&format!(
                            "\0{}:{}",
                            a.name,
                            a.column.as_deref().unwrap_or("")
                        ));
                        aggregations.push(agg.clone());
                        columns.push(a.column.clone());
                        aggregations.len() - 1
                    }
                };
                outputs.push(crate::agg::tile::TileOutput {
                    slot,
                    aggregation: agg,
                    window: a.window,
                });
            }
            let longest = members
                .iter()
                .map(|&i| self.aggregations[i].window)
                .max()
                .unwrap_or(hop);
            // Day tiles beside the hop tiles: the hop tiles' field changes with them, so
            // that hop tiles written without their day tiles are never read with them.
            let days = crate::agg::tile::keeps_day_tiles(hop, longest);
            if days {
                signature.push_str("\0days");
            }
            let hash = |s: &str| xxhash_rust::xxh3::xxh3_64(s.as_bytes()).to_le_bytes();
            out.push(TileGroup {
                hop,
                field: hash(&signature),
                day_field: days.then(|| hash(&format!("{signature}\0day tiles"))),
                windows: members
                    .iter()
                    .map(|&i| self.aggregations[i].window)
                    .collect(),
                columns,
                outputs,
                members,
                layout: crate::agg::tile::TileLayout { aggregations },
            });
        }
        Ok(out)
    }
}

/// The aggregations of an aggregated view that share a hop, and so a tile.
#[derive(Clone, Debug)]
pub struct TileGroup {
    pub hop: Duration,
    /// The online field of the group's tiles.
    pub field: [u8; 8],
    /// The online field of its day tiles, when it keeps them
    /// ([`crate::agg::tile::keeps_day_tiles`]): each the merge of that day's hop tiles.
    pub day_field: Option<[u8; 8]>,
    /// Indices into the view's `aggregations`, in order.
    pub members: Vec<usize>,
    /// The stored slots: one IR per distinct (function's IR, column).
    pub layout: crate::agg::tile::TileLayout,
    /// Each member's output: its slot, finalizer and window.
    pub outputs: Vec<crate::agg::tile::TileOutput>,
    /// Each member's window.
    pub windows: Vec<Duration>,
    /// Each slot's column (none for count_star).
    pub columns: Vec<Option<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs with the same IR share one stored slot: sum and mean of a column, and one
    /// function over several windows of a hop; other functions and columns get their own.
    #[test]
    fn tile_groups_store_each_distinct_ir_once() {
        let agg = |name: &str, column: Option<&str>, function, window: &str| ResolvedAggregation {
            name: name.into(),
            column: column.map(String::from),
            function,
            window: Duration::parse(window).unwrap(),
            hop: Duration::parse("5m").unwrap(),
            n: None,
            percentile: None,
            max_distinct: None,
        };
        use crate::agg::Function::*;
        let view = ResolvedView {
            name: "v".into(),
            version: 1,
            project: "p".into(),
            entities: vec!["e".into()],
            join_keys: vec![JoinKey {
                name: "k".into(),
                dtype: DType::Int64,
            }],
            features: ["a", "b"]
                .iter()
                .map(|n| Feature {
                    name: (*n).into(),
                    dtype: DType::Float64,
                    description: String::new(),
                    allow_non_finite: false,
                })
                .collect(),
            ttl: Duration::default(),
            aggregations: vec![
                agg("a_sum_1h", Some("a"), Sum, "1h"),
                agg("a_mean_1h", Some("a"), Mean, "1h"),
                agg("count_star_1h", None, CountStar, "1h"),
                agg("a_sum_2h", Some("a"), Sum, "2h"),
                agg("b_sum_1h", Some("b"), Sum, "1h"),
                agg("a_max_1h", Some("a"), Max, "1h"),
            ],
            retention: None,
        };
        let groups = view.tile_groups().unwrap();
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        let slots: Vec<usize> = g.outputs.iter().map(|o| o.slot).collect();
        assert_eq!(slots, vec![0, 0, 1, 0, 2, 3]);
        assert_eq!(g.layout.aggregations.len(), 4);
        assert_eq!(
            g.columns,
            vec![Some("a".into()), None, Some("b".into()), Some("a".into())]
        );
        assert_eq!(g.outputs[1].aggregation.function(), Mean);
    }

    #[test]
    fn feature_refs() {
        let r = FeatureRef::parse("driver_stats:conv_rate").unwrap();
        assert_eq!(r.view, "driver_stats");
        assert_eq!(r.output_name(true), "driver_stats__conv_rate");
        assert_eq!(r.output_name(false), "conv_rate");
        for bad in ["conv_rate", ":x", "v:", "a:b:c"] {
            assert!(FeatureRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn on_demand_sources_round_trip() {
        let json = r#"["v", {"request": "r"}]"#;
        let s: Vec<OnDemandSource> = serde_json::from_str(json).unwrap();
        assert_eq!(
            s,
            vec![
                OnDemandSource::View("v".into()),
                OnDemandSource::Request("r".into())
            ]
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"["v",{"request":"r"}]"#
        );
        let e = serde_json::from_str::<OnDemandSource>(r#"{"requst": "r"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `requst`"), "{e}");
        assert!(serde_json::from_str::<OnDemandSource>("{}").is_err());
        assert!(serde_json::from_str::<OnDemandSource>("3").is_err());
    }
}
