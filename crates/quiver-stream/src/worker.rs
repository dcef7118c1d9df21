//! `quiver stream`: the long-running worker. Per stream source read by the selected
//! feature views it consumes entries, decodes and validates them per view, applies them
//! online at once (tile merges or newest rows, exactly once per event, see
//! [`quiver::stream`]), collects them for the offline table, and — after the offline
//! merge of a micro-batch (at most `flush_rows` events or `flush_interval` old, or when
//! the stream goes quiet) and the dead letters are written — acknowledges them. A crash
//! anywhere before the acknowledgement makes the entries come back; applying them again
//! changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver::freshness::{self, Freshness, PartitionFreshness};
use quiver::stream::{apply_events, write_offline, OfflineEvents, StreamEvents};
use quiver::write::{Input, Targets};
use quiver::FeatureStore;
use quiver_core::model::{ResolvedView, Source};
use tokio::sync::watch;

use crate::decode::EventDecoder;
use crate::kafka::KafkaReader;
use crate::metrics::{Metrics, PartitionLabels, SourceLabels};
use crate::redis_stream::RedisStreamReader;
use crate::{Entry, Error, Result};

/// A stream source's reader.
enum Reader {
    Redis(RedisStreamReader),
    Kafka(KafkaReader),
}

impl Reader {
    async fn connect(source: &Source, consumer: &str, lease: Duration) -> Result<Self> {
        Ok(match source {
            Source::RedisStream(r) => {
                Reader::Redis(RedisStreamReader::connect(r, consumer, lease).await?)
            }
            Source::Kafka(k) => Reader::Kafka(KafkaReader::connect(k, consumer)?),
            Source::File(_) | Source::Push(_) => {
                return Err(Error::Invalid(format!(
                    "source '{}' is not a stream a worker reads",
                    source.name()
                )))
            }
        })
    }

    async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Entry>> {
        match self {
            Reader::Redis(r) => r.read(count, block).await,
            Reader::Kafka(k) => k.read(count, block).await,
        }
    }

    async fn ack(&mut self, entries: &[Entry]) -> Result<()> {
        match self {
            Reader::Redis(r) => r.ack(entries).await,
            Reader::Kafka(k) => k.ack(entries).await,
        }
    }

    async fn caught_up(&mut self) -> Result<bool> {
        match self {
            Reader::Redis(r) => Ok(r.caught_up()),
            Reader::Kafka(k) => k.caught_up().await,
        }
    }

    /// Per partition read here: the events not yet read by the group.
    async fn lags(&mut self) -> Result<Vec<(Arc<[u8]>, u64)>> {
        match self {
            Reader::Redis(r) => Ok(r
                .lag()
                .await?
                .map(|lag| (Arc::from(r.partition()), lag))
                .into_iter()
                .collect()),
            Reader::Kafka(k) => k.lags().await,
        }
    }
}

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Feature views to feed (all views over stream sources when empty).
    pub views: Vec<String>,
    /// This worker's name in the consumer groups (unique per worker).
    pub consumer: String,
    /// Entries read per call.
    pub batch_size: usize,
    /// The longest wait for new entries in one read.
    pub block: Duration,
    /// Offline micro-batches: written (and the entries acknowledged) when this many
    /// events wait, or when the oldest waited this long, or when the stream is quiet.
    pub flush_rows: usize,
    pub flush_interval: Duration,
    /// After this many micro-batches of a view (0: never), its offline day partitions
    /// holding at least as many files are merged into one file each.
    pub compact_files: usize,
    /// A Redis stream is read by one worker at a time: the lease its reader renews on
    /// every read lasts this long; another worker takes over (with the entries left
    /// pending) once it lapses.
    pub lease: Duration,
    /// Stop once every stream is read to its end and written (for scripts and tests).
    pub stop_when_idle: bool,
    /// Where to serve the Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            views: Vec::new(),
            consumer: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "quiver".into()),
                std::process::id()
            ),
            batch_size: 20_000,
            block: Duration::from_millis(200),
            flush_rows: 100_000,
            flush_interval: Duration::from_secs(5),
            compact_files: 32,
            lease: Duration::from_secs(30),
            stop_when_idle: false,
            metrics_addr: None,
        }
    }
}

/// What a worker did, per source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Entries read (a replayed entry counts again).
    pub entries: u64,
    /// Events applied online, summed over the source's views.
    pub applied: u64,
    /// Events found already applied.
    pub replayed: u64,
    /// Events older than every tile their view keeps.
    pub late: u64,
    /// Events written to the dead-letter table (per view that refused them).
    pub dead_letters: u64,
    /// Offline micro-batches written.
    pub flushes: u64,
    /// Offline files merged into fewer (see [`WorkerOptions::compact_files`]).
    pub files_compacted: u64,
}

/// The dead-letter table of stream source `source` in the offline store.
pub fn dead_letter_table(source: &str) -> String {
    format!("_dead_letters/{source}")
}

/// The stream sources read by `views` (all views over streams when empty), each with
/// the views that read it.
fn stream_sources(
    store: &FeatureStore,
    views: &[String],
) -> Result<BTreeMap<String, (Source, Vec<ResolvedView>)>> {
    let state = store.state()?;
    let mut out: BTreeMap<String, (Source, Vec<ResolvedView>)> = BTreeMap::new();
    for v in views {
        state.view(v)?; // unknown views are an error
    }
    for (name, record) in &state.feature_views {
        if !(views.is_empty() || views.contains(name)) {
            continue;
        }
        let source = state.source(&record.def.source)?;
        match &source.def {
            s @ (Source::RedisStream(_) | Source::Kafka(_)) => {
                let view = state.serving_view(name)?;
                out.entry(s.name().to_string())
                    .or_insert_with(|| (s.clone(), Vec::new()))
                    .1
                    .push(view);
            }
            Source::File(_) | Source::Push(_) if views.contains(name) => {
                return Err(Error::Invalid(format!(
                    "feature view '{name}' reads source '{}', a {} source: only views \
                     over stream sources (kafka, redis_stream) are fed by `quiver stream`",
                    source.def.name(),
                    source.def.kind()
                )))
            }
            Source::File(_) | Source::Push(_) => {}
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid(
            "no feature view reads a stream source (type: kafka or redis_stream)".into(),
        ));
    }
    Ok(out)
}

/// Runs the worker until `shutdown` turns true (or, with `stop_when_idle`, until every
/// stream is read and written); what was read is written and acknowledged before it
/// returns.
pub async fn run(
    store: &FeatureStore,
    options: &WorkerOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<BTreeMap<String, SourceStats>> {
    let sources = stream_sources(store, &options.views)?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = options.metrics_addr {
        let bound = crate::metrics::serve(addr, metrics.clone())
            .await
            .map_err(|e| Error::Invalid(format!("--metrics-addr {addr}: {e}")))?;
        tracing::info!(%bound, "metrics served at /metrics");
    }
    // Every source stops when asked to, or as soon as one of them fails (a worker must
    // not go on with a source silently no longer consumed: its supervisor restarts it).
    let (stop, stopping) = watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    {
        let (stop, mut outer) = (stop.clone(), shutdown);
        tokio::spawn(async move {
            while !*outer.borrow() {
                if outer.changed().await.is_err() {
                    return;
                }
            }
            let _ = stop.send(true);
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (name, (source, views)) in sources {
        let (store, options, stopping, stop, metrics) = (
            store.clone(),
            options.clone(),
            stopping.clone(),
            stop.clone(),
            metrics.clone(),
        );
        tasks.spawn(async move {
            let stats = run_source(&store, &source, views, &options, stopping, &metrics).await;
            if stats.is_err() {
                let _ = stop.send(true);
            }
            (name, stats)
        });
    }
    let mut out = BTreeMap::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, stats) =
            joined.map_err(|e| Error::Invalid(format!("a stream task failed: {e}")))?;
        match stats {
            Ok(s) => {
                out.insert(name, s);
            }
            Err(e) => {
                tracing::error!(source = %name, error = %e, "stream source failed; stopping");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// One view's decoder, targets, waiting offline rows and freshness report.
struct ViewState {
    decoder: EventDecoder,
    targets: Targets,
    offline: Vec<OfflineEvents>,
    /// Micro-batches written since the view's files were last compacted.
    flushes: usize,
    /// What was applied since the last freshness report, by partition.
    report: Freshness,
}

impl ViewState {
    fn report_of(&mut self, partition: &[u8]) -> &mut PartitionFreshness {
        // Partition names are ASCII (`kafka:TOPIC:N`, `redis:KEY`).
        self.report
            .entry(String::from_utf8_lossy(partition).into_owned())
            .or_default()
    }
}

/// When the last freshness report of a source's views was made.
struct Reporting {
    last: Instant,
    every: Duration,
    consumer: String,
    source: String,
}

async fn run_source(
    store: &FeatureStore,
    source: &Source,
    views: Vec<ResolvedView>,
    options: &WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
    metrics: &Metrics,
) -> Result<SourceStats> {
    let source_labels = SourceLabels {
        source: source.name().to_string(),
    };
    let state = store.state()?;
    let mut per_view = Vec::new();
    for view in views {
        let def = &state.view(&view.name)?.def;
        per_view.push(ViewState {
            targets: Targets {
                online: def.online,
                offline: def.offline,
            },
            decoder: EventDecoder::new(
                view,
                source.timestamp_field(),
                source.created_timestamp_field(),
                source.timestamp_unit(),
            ),
            offline: Vec::new(),
            flushes: 0,
            report: Freshness::new(),
        });
    }
    let mut reporting = Reporting {
        last: Instant::now(),
        every: options.flush_interval,
        consumer: options.consumer.clone(),
        source: source.name().to_string(),
    };
    let mut reader = Reader::connect(source, &options.consumer, options.lease).await?;
    let mut stats = SourceStats::default();
    let mut unacked: Vec<Entry> = Vec::new();
    let mut oldest_unacked: Option<Instant> = None;
    loop {
        let entries = if *shutdown.borrow() {
            None
        } else {
            tokio::select! {
                r = reader.read(options.batch_size, options.block) => Some(r?),
                _ = shutdown.changed() => None,
            }
        };
        let stopping = entries.is_none();
        let entries = entries.unwrap_or_default();
        // A quiet stream (nothing read) writes what waits.
        let quiet = entries.is_empty();
        if !quiet {
            stats.entries += entries.len() as u64;
            metrics
                .entries
                .get_or_create(&source_labels)
                .inc_by(entries.len() as u64);
            apply(store, &entries, source, &mut per_view, &mut stats, metrics).await?;
            // Kept until acknowledged, without their events.
            unacked.extend(entries.into_iter().map(|e| Entry { data: None, ..e }));
            oldest_unacked.get_or_insert_with(Instant::now);
        }
        let last = stopping || (quiet && options.stop_when_idle && reader.caught_up().await?);
        let due = last
            || quiet
            || unacked.len() >= options.flush_rows
            || oldest_unacked.is_some_and(|t| t.elapsed() >= options.flush_interval);
        if due {
            flush(
                store,
                &mut reader,
                &mut per_view,
                &mut unacked,
                &mut stats,
                options.compact_files,
            )
            .await?;
            if last {
                // The last report is made whatever its interval.
                reporting.every = Duration::ZERO;
            }
            report(store, &mut reader, &mut per_view, &mut reporting, metrics).await?;
            oldest_unacked = None;
        }
        if last {
            break;
        }
    }
    if let Reader::Redis(r) = &mut reader {
        r.release().await?;
    }
    Ok(stats)
}

/// Decodes entries for every view, partition by partition, writes dead letters,
/// applies the rest online and keeps them for the offline merge.
async fn apply(
    store: &FeatureStore,
    entries: &[Entry],
    source: &Source,
    per_view: &mut [ViewState],
    stats: &mut SourceStats,
    metrics: &Metrics,
) -> Result<()> {
    // The entries of each partition, in order (one partition for a Redis stream).
    let mut partitions: Vec<(Arc<[u8]>, Vec<usize>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match partitions
            .iter_mut()
            .find(|(p, _)| Arc::ptr_eq(p, &e.partition))
        {
            Some((_, idx)) => idx.push(i),
            None => partitions.push((e.partition.clone(), vec![i])),
        }
    }
    let now = quiver_core::time::now();
    let not_after = Input::not_after(store.config(), now);
    let origin = format!("stream source '{}'", source.name());
    let mut dead: Vec<(String, usize, String)> = Vec::new();
    for (partition, idx) in &partitions {
        let payloads: Vec<&[u8]> = idx
            .iter()
            .map(|&i| entries[i].data.as_deref().unwrap_or_default())
            .collect();
        for v in per_view.iter_mut() {
            let view = v.decoder.view().clone();
            let decoded = v.decoder.decode(&payloads, &origin, not_after);
            for d in decoded.dead {
                let i = idx[d.index];
                let reason = match (&entries[i].data, source) {
                    (None, Source::RedisStream(r)) => {
                        format!("the entry has no field '{}'", r.field)
                    }
                    (None, _) => "the message has no value".to_string(),
                    (Some(_), _) => d.reason,
                };
                dead.push((view.name.clone(), i, reason));
            }
            let Some(rows) = decoded.rows else { continue };
            let offsets: Vec<u128> = decoded
                .events
                .iter()
                .map(|&d| entries[idx[d]].offset)
                .collect();
            if v.targets.online {
                let s = apply_events(
                    store,
                    &view,
                    rows.clone(),
                    StreamEvents {
                        partition,
                        offsets: &offsets,
                    },
                    Targets::ONLINE,
                    now,
                )
                .await?;
                stats.applied += s.applied;
                stats.replayed += s.replayed;
                stats.late += s.late;
                let r = v.report_of(partition);
                r.applied += s.applied;
                r.replayed += s.replayed;
                r.late += s.late;
                r.newest_event = r.newest_event.max(s.newest_event);
                let labels = Metrics::view(&view.name, partition);
                metrics.applied.get_or_create(&labels).inc_by(s.applied);
                metrics.replayed.get_or_create(&labels).inc_by(s.replayed);
                metrics.late.get_or_create(&labels).inc_by(s.late);
                if let Some(t) = s.newest_event {
                    let g = metrics.newest_event.get_or_create(&labels);
                    let secs = t as f64 / 1e6;
                    if secs > g.get() {
                        g.set(secs);
                    }
                }
            }
            if v.targets.offline {
                v.offline.push(OfflineEvents {
                    rows,
                    partition: partition.clone(),
                    offsets,
                });
            }
        }
    }
    if !dead.is_empty() {
        stats.dead_letters += dead.len() as u64;
        for (view, i, _) in &dead {
            let partition = &entries[*i].partition;
            metrics
                .dead_letters
                .get_or_create(&Metrics::view(view, partition))
                .inc();
            if let Some(v) = per_view.iter_mut().find(|v| &v.decoder.view().name == view) {
                v.report_of(partition).dead_letters += 1;
            }
        }
        for (view, i, reason) in dead.iter().take(3) {
            tracing::warn!(source = %source.name(), view = %view, id = %entries[*i].id,
                           reason = %reason, "event written to the dead-letter table");
        }
        let batch = dead_letters(entries, &dead, now)?;
        store
            .offline()
            .append(&dead_letter_table(source.name()), batch)
            .await?;
    }
    Ok(())
}

/// The dead-letter rows: view, partition, entry id, reason, the raw event, when.
fn dead_letters(
    entries: &[Entry],
    dead: &[(String, usize, String)],
    now: quiver_core::Timestamp,
) -> Result<RecordBatch> {
    let schema = Schema::new(vec![
        Field::new("feature_view", DataType::Utf8, false),
        Field::new("partition", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, true),
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from_iter_values(dead.iter().map(|d| &d.0))),
            Arc::new(StringArray::from_iter_values(dead.iter().map(|d| {
                String::from_utf8_lossy(&entries[d.1].partition).into_owned()
            }))),
            Arc::new(StringArray::from_iter_values(
                dead.iter().map(|d| entries[d.1].id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(dead.iter().map(|d| &d.2))),
            Arc::new(BinaryArray::from_iter(
                dead.iter().map(|d| entries[d.1].data.as_deref()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(dead.iter().map(|_| now))
                    .with_timezone("UTC"),
            ),
        ],
    )?)
}

/// Adds what each view applied since the last report to its freshness record (see
/// [`quiver::freshness`]), with the lag of every partition read here: when something
/// was applied, and at least every `reporting.every` (so that an idle stream's lag and
/// a worker's rate are seen to fall to zero).
async fn report(
    store: &FeatureStore,
    reader: &mut Reader,
    per_view: &mut [ViewState],
    reporting: &mut Reporting,
    metrics: &Metrics,
) -> Result<()> {
    let elapsed = reporting.last.elapsed();
    if per_view.iter().all(|v| v.report.is_empty()) && elapsed < reporting.every {
        return Ok(());
    }
    let lags = match reader.lags().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "the lag of the stream is not known");
            Vec::new()
        }
    };
    for (partition, lag) in &lags {
        let labels = PartitionLabels {
            source: reporting.source.clone(),
            partition: String::from_utf8_lossy(partition).into_owned(),
        };
        metrics
            .lag_entries
            .get_or_create(&labels)
            .set(i64::try_from(*lag).unwrap_or(i64::MAX));
    }
    let now = quiver_core::time::now();
    let seconds = elapsed.as_secs_f64().max(1e-3);
    for v in per_view.iter_mut() {
        for (partition, lag) in &lags {
            v.report_of(partition).lag_events = Some(*lag);
        }
        for r in v.report.values_mut() {
            r.events_per_s = r.applied as f64 / seconds;
            r.consumer.clone_from(&reporting.consumer);
            r.reported_at = now;
        }
        let by_partition = std::mem::take(&mut v.report);
        if let Err(e) = freshness::report(store, v.decoder.view(), by_partition).await {
            // Monitoring only: the events are written and acknowledged already.
            tracing::warn!(view = %v.decoder.view().name, error = %e,
                           "the freshness report was not stored");
        }
    }
    reporting.last = Instant::now();
    Ok(())
}

/// Writes the waiting offline rows of every view, then acknowledges their entries.
async fn flush(
    store: &FeatureStore,
    reader: &mut Reader,
    per_view: &mut [ViewState],
    unacked: &mut Vec<Entry>,
    stats: &mut SourceStats,
    compact_files: usize,
) -> Result<()> {
    for v in per_view.iter_mut() {
        if v.offline.is_empty() {
            continue;
        }
        let batches = std::mem::take(&mut v.offline);
        write_offline(store, v.decoder.view(), batches).await?;
        stats.flushes += 1;
        v.flushes += 1;
        if compact_files > 0 && v.flushes >= compact_files {
            v.flushes = 0;
            // Not needed for correctness: a failure (another worker merging the same
            // files at once) is logged, and the next round tries again.
            match store
                .offline()
                .compact_files(v.decoder.view(), compact_files)
                .await
            {
                Ok(s) => stats.files_compacted += s.files_removed,
                Err(e) => tracing::warn!(view = %v.decoder.view().name, error = %e,
                                         "offline files not compacted"),
            }
        }
    }
    if !unacked.is_empty() {
        reader.ack(unacked).await?;
        unacked.clear();
    }
    Ok(())
}
