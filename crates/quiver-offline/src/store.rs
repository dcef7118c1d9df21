//! The offline store: one Delta Lake table per feature view (and version), partitioned
//! by day of event time (DESIGN §4).
//!
//! Files inside a partition are sorted by join key, then event and creation time, which
//! the historical join exploits (keys are looked up with a forward search).
//!
//! **Re-runnable ingests.** An ingest rewrites the day partitions it touches: the
//! partition's stored rows and the new rows are merged, and of rows equal in (join keys,
//! event_timestamp, created_timestamp) only the last one ingested is kept. The new files
//! and the removal of the replaced ones are committed in one Delta transaction, so a
//! reader (or a crash) sees the table before or after, never in between; the rewritten
//! files of an interrupted ingest are never referenced.
//!
//! **Rows that rounding made equal.** Source times finer than a microsecond are rounded
//! up ([`crate::normalize`]). Two rows of one ingest equal in (join keys, event time,
//! creation time) after rounding but not before are an error naming both rows, never
//! merged; rows equal before rounding too (a repeated row, a re-ingest) are not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, Date32Array, RecordBatch, RecordBatchOptions,
};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use quiver_core::contract::NO_CREATED;
use quiver_core::encoding::encode_key_part;
use quiver_core::model::ResolvedView;
use quiver_core::time::{day_of, format_timestamp_nanos, Duration, Timestamp, MICROS_PER_DAY};
use rayon::prelude::*;

use crate::normalize::{
    table_schema, NormalizedBatch, CREATED_TIMESTAMP, EVENT_DATE, EVENT_TIMESTAMP,
};
use crate::{io_err, Error, Result};

/// A data file of a view's table.
#[derive(Clone, Debug)]
pub struct DataFile {
    pub path: PathBuf,
    /// The day partition (days since the epoch).
    pub day: Option<i32>,
}

/// What an ingest did.
/// What a vacuum of one table did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VacuumStats {
    /// Data files deleted.
    pub files_deleted: u64,
}

/// What a compaction of a view's data files did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileCompactStats {
    /// Day partitions rewritten.
    pub partitions: u64,
    /// Files replaced.
    pub files_removed: u64,
    /// Files written in their place.
    pub files_written: u64,
    /// Rows rewritten (as many as the replaced files held).
    pub rows: u64,
    /// The Delta table version committed.
    pub table_version: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Rows read from the source.
    pub rows_in: u64,
    /// Rows in the rewritten partitions after the merge.
    pub rows_stored: u64,
    /// Stored rows replaced by a row of this ingest with the same key, event time and
    /// creation time.
    pub rows_replaced: u64,
    /// Rows of this ingest identical in key, event time and creation time to a later
    /// row of it (the later one is stored).
    pub rows_duplicate: u64,
    /// Day partitions written.
    pub partitions: u64,
    /// The newest event time ingested.
    pub max_event_ts: Option<Timestamp>,
    /// The Delta table version committed.
    pub table_version: Option<u64>,
}

/// The Delta Lake offline store under a local directory. Cheap to clone.
///
/// Its operations are `async`; CPU-bound and blocking work (Parquet decoding and
/// encoding, sorting, merging) runs on tokio's blocking pool and rayon, never on a
/// runtime worker.
#[derive(Clone, Debug)]
pub struct OfflineStore {
    root: PathBuf,
    /// Tables loaded before, by directory: a later load reads only the commits made
    /// since (a stream worker or a feature server commits every few seconds, and
    /// replaying a table's log from its last checkpoint each time costs more than the
    /// write).
    loaded: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, DeltaTable>>>,
}

impl OfflineStore {
    /// The store rooted at `root` (created when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_err(root.display()))?;
        let root = root.canonicalize().map_err(io_err(root.display()))?;
        Ok(OfflineStore {
            root,
            loaded: Default::default(),
        })
    }

    /// The directory of a view's table.
    pub fn table_path(&self, view: &ResolvedView) -> PathBuf {
        self.root.join(view.table_name())
    }

    fn table_url(&self, view: &ResolvedView) -> Result<url::Url> {
        url::Url::from_directory_path(self.table_path(view)).map_err(|_| {
            Error::Invalid(format!(
                "bad table path {}",
                self.table_path(view).display()
            ))
        })
    }

    /// The table of `view` at its newest version (`None` when it has none).
    async fn load(&self, view: &ResolvedView) -> Result<Option<DeltaTable>> {
        let path = self.table_path(view);
        if !path.join("_delta_log").exists() {
            self.forget(&path);
            return Ok(None);
        }
        let cached = self
            .loaded
            .lock()
            .expect("not poisoned")
            .get(&path)
            .cloned()
            // Still the same table: the commit it was loaded at is still there (a
            // table deleted and created again starts over).
            .filter(|t| {
                t.version()
                    .is_some_and(|v| path.join(format!("_delta_log/{v:020}.json")).exists())
            });
        let table = match cached {
            // The commits since it was loaded; a table that was replaced (a log
            // that no longer continues it) is loaded afresh.
            Some(mut t) => match t.update_state().await {
                Ok(()) => t,
                Err(_) => DeltaTable::try_from_url(self.table_url(view)?).await?,
            },
            None => DeltaTable::try_from_url(self.table_url(view)?).await?,
        };
        if table.version().is_none() {
            return Ok(None);
        }
        self.loaded
            .lock()
            .expect("not poisoned")
            .insert(path, table.clone());
        Ok(Some(table))
    }

    fn forget(&self, path: &Path) {
        self.loaded.lock().expect("not poisoned").remove(path);
    }

    async fn load_or_create(&self, view: &ResolvedView) -> Result<DeltaTable> {
        if let Some(t) = self.load(view).await? {
            return Ok(t);
        }
        let path = self.table_path(view);
        std::fs::create_dir_all(&path).map_err(io_err(path.display()))?;
        let schema = table_schema(view);
        let kernel: StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| Error::Invalid(format!("cannot map the view's schema to Delta: {e}")))?;
        let table = DeltaTable::try_from_url(self.table_url(view)?).await?;
        let table = table
            .create()
            .with_table_name(view.table_name())
            .with_comment(format!(
                "quiver feature view {} v{}",
                view.name, view.version
            ))
            .with_columns(kernel.fields().cloned())
            .with_partition_columns([EVENT_DATE])
            // Streams and pushes commit often: a checkpoint every 10 commits keeps what
            // a load replays short (see `commit_builder`).
            .with_configuration_property(
                deltalake::TableProperty::CheckpointInterval,
                Some(CHECKPOINT_INTERVAL.to_string()),
            )
            .await?;
        Ok(table)
    }

    /// Appends `batch` to the Delta table in directory `name` under the store's root
    /// (created with the batch's schema when missing): tables that are not a view's,
    /// such as a stream's dead letters. One commit per call; a crash leaves the table
    /// as it was before or after it.
    pub async fn append(&self, name: &str, batch: RecordBatch) -> Result<u64> {
        if name.is_empty() || name.split('/').any(|p| p.is_empty() || p == "..") {
            return Err(Error::Invalid(format!("bad table name {name:?}")));
        }
        let path = self.root.join(name);
        let url = url::Url::from_directory_path(&path)
            .map_err(|_| Error::Invalid(format!("bad table path {}", path.display())))?;
        let mut table = if path.join("_delta_log").exists() {
            DeltaTable::try_from_url(url).await?
        } else {
            std::fs::create_dir_all(&path).map_err(io_err(path.display()))?;
            let kernel: StructType = batch.schema().as_ref().try_into_kernel().map_err(|e| {
                Error::Invalid(format!("cannot map the schema of {name} to Delta: {e}"))
            })?;
            DeltaTable::try_from_url(url)
                .await?
                .create()
                .with_table_name(name.replace('/', "_"))
                .with_columns(kernel.fields().cloned())
                .await?
        };
        let mut writer = RecordBatchWriter::for_table(&table)?;
        writer.write(batch).await?;
        Ok(writer.flush_and_commit(&mut table).await? as u64)
    }

    /// Reads every row of the table in directory `name` (see [`OfflineStore::append`]);
    /// empty when it does not exist.
    pub async fn read_table(&self, name: &str) -> Result<Vec<RecordBatch>> {
        let path = self.root.join(name);
        if !path.join("_delta_log").exists() {
            return Ok(Vec::new());
        }
        let url = url::Url::from_directory_path(&path)
            .map_err(|_| Error::Invalid(format!("bad table path {}", path.display())))?;
        let table = DeltaTable::try_from_url(url).await?;
        let files: Vec<PathBuf> = files_of(&table)?.into_iter().map(|f| f.path).collect();
        let mut out = Vec::new();
        for f in files {
            out.extend(crate::files::read_file(
                &f,
                quiver_core::model::FileFormat::Parquet,
                None,
            )?);
        }
        Ok(out)
    }

    /// Whether the view's table exists.
    pub fn exists(&self, view: &ResolvedView) -> bool {
        self.table_path(view).join("_delta_log").exists()
    }

    /// The current data files of a view's table (empty when it does not exist).
    pub async fn data_files(&self, view: &ResolvedView) -> Result<Vec<DataFile>> {
        let Some(table) = self.load(view).await? else {
            return Ok(vec![]);
        };
        files_of(&table)
    }

    /// The table's current version (`None` when it does not exist).
    pub async fn version(&self, view: &ResolvedView) -> Result<Option<u64>> {
        Ok(self.load(view).await?.and_then(|t| t.version()))
    }

    /// The data files of the current table that version `since` did not have: every
    /// file committed after it (an ingest rewrites the day partitions it touches, so
    /// these hold every row ingested since, whatever its event time).
    pub async fn files_since(&self, view: &ResolvedView, since: u64) -> Result<Vec<DataFile>> {
        let Some(table) = self.load(view).await? else {
            return Ok(vec![]);
        };
        if table.version().is_some_and(|v| v <= since) {
            return Ok(vec![]);
        }
        let current = files_of(&table)?;
        let mut old = DeltaTable::try_from_url(self.table_url(view)?).await?;
        old.load_version(since as _).await?;
        let before: std::collections::HashSet<PathBuf> =
            files_of(&old)?.into_iter().map(|f| f.path).collect();
        Ok(current
            .into_iter()
            .filter(|f| !before.contains(&f.path))
            .collect())
    }

    /// Reads the rows of `files` (of a view's table) with `start <= event_timestamp <
    /// end`.
    pub async fn read_files(
        &self,
        view: &ResolvedView,
        files: Vec<DataFile>,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<RecordBatch>> {
        let schema = table_schema(view);
        let ts_idx = view.join_keys.len();
        crate::blocking(move || read_files_in_range(&files, &schema, ts_idx, start, end)).await
    }

    /// Ingests normalized batches (see [`crate::normalize::normalize_batch`]). The
    /// merge (reading the touched partitions, sorting, encoding) runs on a blocking
    /// thread, which drives the Delta calls from there.
    ///
    /// Batches are in the stored form: [`NormalizedBatch`]es of
    /// [`crate::normalize::normalize`], which carry what rounding to microseconds took
    /// from the source times so that two rows it made equal are an error naming both,
    /// or plain batches whose times were whole microseconds.
    pub async fn ingest<B: Into<NormalizedBatch>>(
        &self,
        view: &ResolvedView,
        batches: Vec<B>,
    ) -> Result<IngestStats> {
        let batches: Vec<NormalizedBatch> = batches.into_iter().map(Into::into).collect();
        let (this, view) = (self.clone(), view.clone());
        let handle = tokio::runtime::Handle::current();
        crate::blocking(move || handle.block_on(this.ingest_async(&view, batches, None))).await
    }

    /// Merges the files of every day partition that holds at least `min_files` of them
    /// (stream micro-batches each add one) into one file per partition, sorted as an
    /// ingest sorts (by key, then times), every row kept. Only files smaller than
    /// [`SMALL_FILE_BYTES`] are merged (a compacted day's large file stays). The rewrite
    /// is one Delta commit (an `OPTIMIZE`): readers see the old files or the new one, a
    /// crash before the commit leaves the old ones, and of two rewrites of the same
    /// files from one table version (two compactions, a compaction and an ingest of the
    /// day) the second commit fails (its removes are marked as changing data, which
    /// Delta's conflict check looks at); a concurrent append then retries. Old files
    /// stay for time travel until `vacuum`.
    pub async fn compact_files(
        &self,
        view: &ResolvedView,
        min_files: usize,
    ) -> Result<FileCompactStats> {
        let (this, view) = (self.clone(), view.clone());
        let handle = tokio::runtime::Handle::current();
        crate::blocking(move || handle.block_on(this.compact_async(&view, min_files.max(2)))).await
    }

    async fn compact_async(
        &self,
        view: &ResolvedView,
        min_files: usize,
    ) -> Result<FileCompactStats> {
        let mut stats = FileCompactStats::default();
        let Some(table) = self.load(view).await? else {
            return Ok(stats);
        };
        let snapshot = table.snapshot()?;
        let mut by_day: std::collections::BTreeMap<i32, Vec<_>> = Default::default();
        // Only small files are merged: a day compacted before keeps its large file, and
        // a compaction reads (and holds in memory) at most min_files small files of
        // each day.
        for f in snapshot.log_data().iter() {
            if f.size() >= SMALL_FILE_BYTES {
                continue;
            }
            if let Some(day) = partition_day(&f.partition_values_map()) {
                by_day.entry(day).or_default().push(f);
            }
        }
        by_day.retain(|_, files| files.len() >= min_files);
        if by_day.is_empty() {
            return Ok(stats);
        }
        let schema = table_schema(view);
        let root = self.table_path(view);
        let paths: Vec<(PathBuf, i32)> = by_day
            .iter()
            .flat_map(|(day, files)| {
                files
                    .iter()
                    .map(|f| (root.join(f.object_store_path().as_ref()), *day))
            })
            .collect();
        let all = read_whole_files(&paths, &schema)?;
        let order = merge_order(view, &all, &[])?;
        let rows_read: usize = all.iter().map(|b| b.num_rows()).sum();
        let rows_kept: usize = order.iter().map(|d| d.1.len()).sum();
        if rows_kept != rows_read {
            return Err(Error::Data(format!(
                "compacting the table of '{}' would keep {rows_kept} of {rows_read} rows; \
                 nothing was changed",
                view.name
            )));
        }
        let (mut adds, evolved) = self
            .write_ordered(&table, view, &schema, &all, &order)
            .await?;
        for a in &mut adds {
            a.data_change = false;
        }
        stats.partitions = by_day.len() as u64;
        stats.files_removed = paths.len() as u64;
        stats.files_written = adds.len() as u64;
        stats.rows = order.iter().map(|d| d.1.len() as u64).sum();
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        actions.extend(evolved.map(Action::Metadata));
        actions.extend(
            by_day
                .values()
                .flatten()
                // Marked as changing data, so that Delta's conflict check sees them: of two
                // rewrites of the same files (two compactions, a compaction and an
                // ingest of the day) from one table version, the second commit fails
                // instead of storing their rows twice.
                .map(|f| Action::Remove(f.remove_action(true))),
        );
        let days: Vec<String> = by_day.keys().map(|d| format_day(*d)).collect();
        let op = DeltaOperation::Optimize {
            predicate: Some(format!("{EVENT_DATE} IN ('{}')", days.join("', '"))),
            target_size: 512 * 1024 * 1024,
        };
        quiver_core::fault::crash_point("compact.before_commit");
        let committed = commit_builder()
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), op)
            .await?;
        stats.table_version = Some(committed.version());
        Ok(stats)
    }

    /// Appends events read from streams to an aggregated view's table, and records with
    /// them, in the same commit, the newest offset written of each partition (Delta
    /// application transactions, as stream writers into Delta do): no merge with the
    /// stored rows, so two events alike in every value stay two. A caller leaves out the
    /// events at or before [`OfflineStore::stream_offsets`] of their partition, so a
    /// replayed range is stored once.
    ///
    /// `read_at` is the table version [`OfflineStore::stream_offsets`] read (`None`:
    /// no table): if the table has moved on since, nothing is written and the error is a
    /// commit conflict, to be retried from a fresh read of the offsets; commits after
    /// the table is loaded here are caught by Delta's own check of the same
    /// application ids.
    pub async fn append_events(
        &self,
        view: &ResolvedView,
        batches: Vec<NormalizedBatch>,
        offsets: &[(&[u8], u128)],
        read_at: Option<u64>,
    ) -> Result<IngestStats> {
        let mut txns = Vec::new();
        for (partition, offset) in offsets {
            let (hi, lo) = stream_app_ids(partition);
            txns.push(Transaction::new(hi, (offset >> 64) as i64));
            txns.push(Transaction::new(lo, (*offset as u64) as i64));
        }
        let (this, view) = (self.clone(), view.clone());
        let handle = tokio::runtime::Handle::current();
        crate::blocking(move || {
            handle.block_on(this.ingest_async(&view, batches, Some((txns, read_at))))
        })
        .await
    }

    /// The newest offset of each partition appended by [`OfflineStore::append_events`]
    /// (`None` where none was).
    pub async fn stream_offsets(
        &self,
        view: &ResolvedView,
        partitions: &[&[u8]],
    ) -> Result<(Vec<Option<u128>>, Option<u64>)> {
        let Some(table) = self.load(view).await? else {
            return Ok((vec![None; partitions.len()], None));
        };
        let version = table.version();
        let state = table.snapshot()?;
        let log = table.log_store();
        let mut out = Vec::with_capacity(partitions.len());
        for p in partitions {
            let (hi, lo) = stream_app_ids(p);
            let hi = state.transaction_version(log.as_ref(), hi).await?;
            let lo = state.transaction_version(log.as_ref(), lo).await?;
            out.push(match (hi, lo) {
                (Some(h), Some(l)) => Some(((h as u64 as u128) << 64) | l as u64 as u128),
                _ => None,
            });
        }
        Ok((out, version))
    }

    async fn ingest_async(
        &self,
        view: &ResolvedView,
        new: Vec<NormalizedBatch>,
        append: Option<(Vec<Transaction>, Option<u64>)>,
    ) -> Result<IngestStats> {
        let schema = table_schema(view);
        let rows_in: u64 = new.iter().map(|b| b.batch.num_rows() as u64).sum();
        let mut stats = IngestStats {
            rows_in,
            ..Default::default()
        };
        if rows_in == 0 {
            return Ok(stats);
        }
        let mut table = self.load_or_create(view).await?;
        quiver_core::fault::crash_point("ingest.after_create");
        let append = match append {
            None => None,
            Some((txns, read_at)) => {
                // A table created here (none was read) is at version 0.
                let now = table.version();
                if now != read_at && !(read_at.is_none() && now == Some(0)) {
                    return Err(Error::Delta(deltalake::DeltaTableError::Generic(format!(
                        "the table moved from version {read_at:?} to {now:?} since its \
                         stream offsets were read"
                    ))));
                }
                Some(txns)
            }
        };
        let ts_idx = view.join_keys.len();
        let mut touched = BTreeSet::new();
        for b in &new {
            let ts = b
                .batch
                .column(ts_idx)
                .as_primitive::<TimestampMicrosecondType>();
            for &t in ts.values() {
                touched.insert(day_of(t));
                stats.max_event_ts = Some(stats.max_event_ts.map_or(t, |m: i64| m.max(t)));
            }
        }
        // Stored rows of the touched partitions are merged with the new rows (an
        // append leaves them).
        let replaced: Vec<_> = table
            .snapshot()?
            .log_data()
            .iter()
            .filter(|f| {
                append.is_none()
                    && partition_day(&f.partition_values_map())
                        .is_some_and(|d| touched.contains(&d))
            })
            .collect();
        let root = self.table_path(view);
        let old_paths: Vec<(PathBuf, i32)> = replaced
            .iter()
            .map(|f| {
                let day = partition_day(&f.partition_values_map()).unwrap_or_default();
                (root.join(f.object_store_path().as_ref()), day)
            })
            .collect();
        let old = read_whole_files(&old_paths, &schema)?;
        let old_rows: u64 = old.iter().map(|b| b.num_rows() as u64).sum();
        let mut all = old;
        all.extend(new.iter().map(|b| b.batch.clone()));

        let order = merge_order(view, &all, &new)?;
        stats.rows_stored = order.iter().map(|d| d.1.len() as u64).sum();
        let n_old = all.len() - new.len();
        let old_kept = order
            .iter()
            .flat_map(|d| &d.1)
            .filter(|(b, _)| *b < n_old)
            .count() as u64;
        stats.rows_replaced = old_rows.saturating_sub(old_kept);
        stats.rows_duplicate = rows_in.saturating_sub(stats.rows_stored - old_kept);
        stats.partitions = order.len() as u64;

        let (adds, evolved) = self
            .write_ordered(&table, view, &schema, &all, &order)
            .await?;

        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        actions.extend(append.unwrap_or_default().into_iter().map(Action::Txn));
        actions.extend(evolved.map(Action::Metadata));
        actions.extend(
            replaced
                .iter()
                .map(|f| Action::Remove(f.remove_action(true))),
        );
        let days: Vec<String> = touched.iter().map(|d| format_day(*d)).collect();
        let op = DeltaOperation::Write {
            mode: if replaced.is_empty() {
                SaveMode::Append
            } else {
                SaveMode::Overwrite
            },
            partition_by: Some(vec![EVENT_DATE.to_string()]),
            predicate: (!replaced.is_empty())
                .then(|| format!("{EVENT_DATE} IN ('{}')", days.join("', '"))),
        };
        quiver_core::fault::crash_point("ingest.before_commit");
        let committed = commit_builder()
            .with_actions(actions)
            .build(Some(table.snapshot()?), table.log_store(), op)
            .await?;
        stats.table_version = Some(committed.version());
        table.update_state().await?;
        Ok(stats)
    }

    /// Writes the rows `order` picks from `all` (per day, in order) as one data file per
    /// day partition, under the view's schema (returned as the new metadata when it
    /// widens the table's); the caller commits the files.
    async fn write_ordered(
        &self,
        table: &DeltaTable,
        view: &ResolvedView,
        schema: &arrow::datatypes::SchemaRef,
        all: &[RecordBatch],
        order: &[DayRows],
    ) -> Result<(
        Vec<deltalake::kernel::Add>,
        Option<deltalake::kernel::Metadata>,
    )> {
        // Keys and numbers are mostly distinct per row: dictionary pages cost time at
        // write and read and save little, so only text columns use them — and the two
        // time columns, which batch pipelines stamp with a few times per run (a
        // dictionary turns their pages into small indexes; distinct times fall back to
        // plain pages once the dictionary page is full).
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(256 * 1024));
        for f in schema.fields() {
            let times = [
                crate::normalize::EVENT_TIMESTAMP,
                crate::normalize::CREATED_TIMESTAMP,
            ];
            if !matches!(f.data_type(), DataType::Utf8 | DataType::Binary)
                && !times.contains(&f.name().as_str())
            {
                props =
                    props.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), false);
            }
        }
        let props = props.build();
        // Features appended to the view since the table was created widen its schema:
        // the commit below carries the new schema with the files written under it.
        let evolved = evolved_metadata(table, schema)?;
        let writer = match &evolved {
            None => RecordBatchWriter::for_table(table)?,
            Some(_) => RecordBatchWriter::try_new(
                self.table_url(view)?.as_str(),
                schema.clone(),
                Some(vec![EVENT_DATE.to_string()]),
                None,
            )?,
        };
        let mut writer = writer
            .with_writer_properties(props)
            .with_target_file_size(512 * 1024 * 1024);
        let mut adds = Vec::new();
        for (_, idx) in order {
            for chunk in idx.chunks(256 * 1024) {
                let cols = (0..schema.fields().len())
                    .map(|c| {
                        let arrays: Vec<&dyn Array> =
                            all.iter().map(|b| b.column(c).as_ref()).collect();
                        interleave(&arrays, chunk)
                    })
                    .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
                writer
                    .write(RecordBatch::try_new(schema.clone(), cols)?)
                    .await?;
            }
            // Finish each day's file as soon as it is written, so encoded data does not
            // pile up in memory across partitions; one commit adds them all below.
            adds.extend(writer.flush().await?);
        }

        Ok((adds, evolved))
    }

    /// Reads the rows with `start <= event_timestamp < end`, pruning by day partition,
    /// projected to `columns` (all when `None`).
    pub async fn read_range(
        &self,
        view: &ResolvedView,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<RecordBatch>> {
        let (d0, d1) = (day_of(start), day_of(end.saturating_sub(1)));
        let files: Vec<DataFile> = self
            .data_files(view)
            .await?
            .into_iter()
            .filter(|f| f.day.is_none_or(|d| d >= d0 && d <= d1))
            .collect();
        self.read_files(view, files, start, end).await
    }

    /// Deletes the files of a view's table that no version within `retention` reads:
    /// files replaced by later ingests (removed from the table more than `retention`
    /// ago) and files no commit ever added (an ingest killed before its commit), once
    /// older than `retention`. Reads of the current table, and time travel to versions
    /// newer than `retention`, are unchanged. Returns the files deleted.
    pub async fn vacuum(&self, view: &ResolvedView, retention: Duration) -> Result<VacuumStats> {
        let Some(table) = self.load(view).await? else {
            return Ok(VacuumStats::default());
        };
        let retention = chrono::Duration::microseconds(retention.micros().max(0));
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            // A shorter retention than the table's default (7 days) is the caller's
            // explicit choice.
            .with_enforce_retention_duration(false)
            .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
            .await?;
        Ok(VacuumStats {
            files_deleted: metrics.files_deleted.len() as u64,
        })
    }

    /// The number of rows stored for a view (from file metadata).
    pub async fn row_count(&self, view: &ResolvedView) -> Result<u64> {
        let files = self.data_files(view).await?;
        crate::blocking(move || {
            let mut n = 0;
            for f in files {
                let file = std::fs::File::open(&f.path).map_err(io_err(f.path.display()))?;
                n += ParquetRecordBatchReaderBuilder::try_new(file)?
                    .metadata()
                    .file_metadata()
                    .num_rows() as u64;
            }
            Ok(n)
        })
        .await
    }
}

/// The table's metadata with its schema widened to `schema`, when `schema` has columns
/// the table does not (features appended to the view); `None` when it has them all.
/// Only nullable columns may be added: the keys and times never change within a
/// version.
fn evolved_metadata(
    table: &DeltaTable,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<Option<deltalake::kernel::Metadata>> {
    let snapshot = table.snapshot()?;
    let current = snapshot.schema();
    let added: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| current.field(n).is_none())
        .collect();
    if added.is_empty() {
        return Ok(None);
    }
    if let Some(f) = schema
        .fields()
        .iter()
        .find(|f| added.contains(&f.name().as_str()) && !f.is_nullable())
    {
        return Err(Error::Invalid(format!(
            "the stored table has no column '{}', which a view version cannot add",
            f.name()
        )));
    }
    let kernel: StructType = schema
        .as_ref()
        .try_into_kernel()
        .map_err(|e| Error::Invalid(format!("cannot map the view's schema to Delta: {e}")))?;
    use deltalake::kernel::MetadataExt;
    let metadata = snapshot.metadata().clone().with_schema(&kernel);
    Ok(Some(metadata.map_err(|e| {
        Error::Invalid(format!("cannot widen the table's schema: {e}"))
    })?))
}

/// Decodes `files` and keeps the rows with `start <= event_timestamp < end`.
fn read_files_in_range(
    files: &[DataFile],
    schema: &arrow::datatypes::SchemaRef,
    ts_idx: usize,
    start: Timestamp,
    end: Timestamp,
) -> Result<Vec<RecordBatch>> {
    let batches = files
        .par_iter()
        .map(|f| read_data_file(&f.path, schema, f.day.unwrap_or_default()))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for b in batches.into_iter().flatten() {
        let ts = b.column(ts_idx).as_primitive::<TimestampMicrosecondType>();
        let mask: arrow::array::BooleanArray = ts
            .values()
            .iter()
            .map(|&t| Some(t >= start && t < end))
            .collect();
        let f = arrow::compute::filter_record_batch(&b, &mask)?;
        if f.num_rows() > 0 {
            out.push(f);
        }
    }
    Ok(out)
}

fn files_of(table: &DeltaTable) -> Result<Vec<DataFile>> {
    let root = table.table_url().to_file_path().map_err(|_| {
        Error::Invalid(format!(
            "offline tables must be local, not {}",
            table.table_url()
        ))
    })?;
    Ok(table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| DataFile {
            path: root.join(f.object_store_path().as_ref()),
            day: partition_day(&f.partition_values_map()),
        })
        .collect())
}

/// The Delta application ids holding the high and low 64 bits of a stream
/// partition's newest offset appended (offsets are 128 bits; a version is an i64).
fn stream_app_ids(partition: &[u8]) -> (String, String) {
    let hex: String = partition.iter().map(|b| format!("{b:02x}")).collect();
    (
        format!("quiver-stream-{hex}-hi"),
        format!("quiver-stream-{hex}-lo"),
    )
}

fn partition_day(values: &std::collections::HashMap<String, Option<String>>) -> Option<i32> {
    values
        .get(EVENT_DATE)
        .and_then(|v| v.as_deref())
        .and_then(crate::normalize::parse_day)
}

fn format_day(day: i32) -> String {
    quiver_core::time::format_timestamp(day as i64 * MICROS_PER_DAY)[..10].to_string()
}

/// Rows per batch read from a data file.
pub(crate) const READ_BATCH_ROWS: usize = 64 * 1024;

fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data(format!("{}: corrupt data file: {e}", path.display()))
}

/// Reads a data file of a view's table as stored batches (the day column restored).
/// [`read_data_file_columns`] reads some columns of some row groups.
pub fn read_data_file(
    path: &Path,
    schema: &arrow::datatypes::SchemaRef,
    day: i32,
) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(io_err(path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| corrupt(path, e))?
        .with_batch_size(READ_BATCH_ROWS)
        .build()?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            if f.name() == EVENT_DATE {
                cols.push(Arc::new(Date32Array::from(vec![day; b.num_rows()])));
                continue;
            }
            match b.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => cols.push(c.clone()),
                Some(c) => cols.push(arrow::compute::cast(c, f.data_type())?),
                None if missing_ok(schema, f.name()) => {
                    cols.push(new_null_array(f.data_type(), b.num_rows()))
                }
                None => {
                    return Err(Error::Data(format!(
                        "{}: no column '{}'",
                        path.display(),
                        f.name()
                    )))
                }
            }
        }
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    Ok(out)
}

/// Whether column `name` may be absent from a data file: a feature appended to the view
/// after the file was written is not in it and reads as null (only nullable columns,
/// i.e. features and the creation time, may be missing).
fn missing_ok(schema: &arrow::datatypes::SchemaRef, name: &str) -> bool {
    schema.field_with_name(name).is_ok_and(|f| f.is_nullable())
}

/// A data file's footer, parsed once for several reads of its row groups and columns
/// ([`read_data_file_columns`]).
pub fn data_file_footer(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = std::fs::File::open(path).map_err(io_err(path.display()))?;
    ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| corrupt(path, e))
}

/// Reads columns `cols` of row groups `row_groups` of the data file at `path`, whose
/// footer is `footer`; the batches hold `cols` in order (a column the file lacks, see
/// [`missing_ok`], as nulls).
pub fn read_data_file_columns(
    path: &Path,
    footer: &ArrowReaderMetadata,
    schema: &arrow::datatypes::SchemaRef,
    cols: &[&str],
    row_groups: &[usize],
) -> Result<Vec<RecordBatch>> {
    let pschema = footer.metadata().file_metadata().schema_descr();
    let roots = pschema.root_schema().get_fields();
    let mut idx = Vec::with_capacity(cols.len());
    let mut all_present = true;
    for c in cols {
        match roots.iter().position(|f| f.name() == *c) {
            Some(i) => idx.push(i),
            None if missing_ok(schema, c) => all_present = false,
            None => return Err(Error::Data(format!("{}: no column '{c}'", path.display()))),
        }
    }
    let mask = ProjectionMask::roots(pschema, idx);
    let file = std::fs::File::open(path).map_err(io_err(path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, footer.clone())
        .with_batch_size(READ_BATCH_ROWS)
        .with_row_groups(row_groups.to_vec())
        .with_projection(mask)
        .build()?;
    reader
        .map(|b| {
            let b = b.map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
            if all_present {
                return Ok(b);
            }
            let (fields, cols): (Vec<Field>, Vec<ArrayRef>) = cols
                .iter()
                .map(|c| match b.column_by_name(c) {
                    Some(a) => (Field::new(*c, a.data_type().clone(), true), a.clone()),
                    None => {
                        let t = schema.field_with_name(c).expect("checked").data_type();
                        (
                            Field::new(*c, t.clone(), true),
                            new_null_array(t, b.num_rows()),
                        )
                    }
                })
                .unzip();
            let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
            Ok(RecordBatch::try_new_with_options(
                Arc::new(Schema::new(fields)),
                cols,
                &options,
            )?)
        })
        .collect()
}

/// Sort entry of the merge: day, key, times, then position (later batches win).
#[derive(Clone, Copy)]
struct Entry {
    day: i32,
    /// For new rows: the nanoseconds past the microsecond of the source's event time
    /// (high 16 bits) and creation time (low 16 bits) that rounding took; else 0.
    sub: u32,
    key: u64,
    ts: i64,
    created: i64,
    /// For an aggregated view's events: a hash of the row's values (0 otherwise).
    content: u64,
    batch: u32,
    row: u32,
}

/// Errors when two rows of `batches` equal in join keys and (event, creation) time differ
/// below a microsecond: rounding would make them one.
pub(crate) fn check_rounding(view: &ResolvedView, batches: &[NormalizedBatch]) -> Result<()> {
    let all: Vec<RecordBatch> = batches.iter().map(|b| b.batch.clone()).collect();
    merge_order(view, &all, batches).map(|_| ())
}

/// The error for rows `a` and `b` of `new` (entries of a merge whose batches end with
/// `new`), equal in microseconds and not in nanoseconds.
fn rounding_collision(
    view: &ResolvedView,
    batches: &[RecordBatch],
    new: &[NormalizedBatch],
    a: &Entry,
    b: &Entry,
) -> Error {
    let n_old = batches.len() - new.len();
    let name = |e: &Entry| {
        let i = e.batch as usize - n_old;
        new[i].row_name(i, e.row as usize)
    };
    let keys = view
        .join_keys
        .iter()
        .enumerate()
        .map(|(k, jk)| {
            let v = arrow::util::display::array_value_to_string(
                batches[a.batch as usize].column(k),
                a.row as usize,
            )
            .unwrap_or_default();
            format!("{}={v}", jk.name)
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The source time: the rounded-up microsecond less what rounding added.
    let source = |micros: i64, sub: u32| match sub as u16 {
        0 => format_timestamp_nanos(micros, 0),
        r => format_timestamp_nanos(micros - 1, r),
    };
    let mut times = format!(
        "event times {} and {}",
        source(a.ts, a.sub >> 16),
        source(b.ts, b.sub >> 16)
    );
    if a.created != NO_CREATED {
        times.push_str(&format!(
            ", creation times {} and {}",
            source(a.created, a.sub & 0xffff),
            source(b.created, b.sub & 0xffff)
        ));
    }
    Error::Data(format!(
        "{} and {}: two rows of {keys} differ only below a microsecond ({times}); quiver \
         stores microseconds, rounding source times up, so they would become one row: make \
         their times differ by a microsecond or more, or drop one",
        name(a),
        name(b)
    ))
}

/// One day partition's rows, as (batch, row) positions in merge order.
type DayRows = (i32, Vec<(usize, usize)>);

/// The rows to keep, per day in ascending order, as (batch, row) pairs sorted by
/// (key, event time, creation time); of rows equal in key and times the last wins.
/// `batches` end with the batches of `new` (the rows being ingested): two of their rows
/// equal in key and times but not in the nanoseconds rounding took are an error.
fn merge_order(
    view: &ResolvedView,
    batches: &[RecordBatch],
    new: &[NormalizedBatch],
) -> Result<Vec<DayRows>> {
    let n_old = batches.len() - new.len();
    let nkeys = view.join_keys.len();
    // An aggregated view stores events: rows equal in key and times are distinct events
    // unless their values are equal too, and a source's duplicates are all kept.
    let events = !view.aggregations.is_empty();
    let mut cell = Vec::new();
    let int_key = nkeys == 1
        && batches
            .first()
            .is_some_and(|b| b.column(0).data_type() == &arrow::datatypes::DataType::Int64);
    // For other keys: the encoded key bytes, to hash and to compare.
    let mut key_bytes: Vec<Vec<u8>> = Vec::new();
    let mut key_offsets: Vec<Vec<u32>> = Vec::new();
    let mut entries: Vec<Entry> = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for (bi, b) in batches.iter().enumerate() {
        let ts = b.column(nkeys).as_primitive::<TimestampMicrosecondType>();
        let created = b
            .column(nkeys + 1)
            .as_primitive::<TimestampMicrosecondType>();
        let mut buf = Vec::new();
        let mut offs = vec![0u32];
        let sub = bi
            .checked_sub(n_old)
            .and_then(|i| new[i].sub_micros.as_deref());
        for r in 0..b.num_rows() {
            let key = if int_key {
                (b.column(0).as_primitive::<Int64Type>().value(r) as u64) ^ (1 << 63)
            } else {
                let start = buf.len();
                for k in 0..nkeys {
                    encode_key_part(b.column(k).as_ref(), r, &mut buf)?;
                }
                offs.push(buf.len() as u32);
                xxhash_rust::xxh3::xxh3_64(&buf[start..])
            };
            let t = ts.value(r);
            let content = if events {
                cell.clear();
                for c in nkeys + 2..nkeys + 2 + view.features.len() {
                    quiver_core::encoding::encode_value_cell(b.column(c).as_ref(), r, &mut cell)?;
                }
                xxhash_rust::xxh3::xxh3_64(&cell)
            } else {
                0
            };
            entries.push(Entry {
                content,
                day: day_of(t),
                sub: sub.map_or(0, |s| (s[r][0] as u32) << 16 | s[r][1] as u32),
                key,
                ts: t,
                created: crate::normalize::created_at(created, r),
                batch: bi as u32,
                row: r as u32,
            });
        }
        key_bytes.push(buf);
        key_offsets.push(offs);
    }
    entries
        .par_sort_unstable_by_key(|e| (e.day, e.key, e.ts, e.created, e.content, e.batch, e.row));
    let bytes_of = |e: &Entry| -> &[u8] {
        let o = &key_offsets[e.batch as usize];
        &key_bytes[e.batch as usize][o[e.row as usize] as usize..o[e.row as usize + 1] as usize]
    };
    let mut out: Vec<DayRows> = Vec::new();
    // The first new row of the current run of equal rows.
    let mut first_new: Option<&Entry> = None;
    // Events: the start of the current run of equal rows (old rows sort first).
    let mut run_start = 0usize;
    for (i, e) in entries.iter().enumerate() {
        if e.batch as usize >= n_old {
            match first_new {
                Some(f) if f.sub != e.sub => {
                    return Err(rounding_collision(view, batches, new, f, e))
                }
                Some(_) => {}
                None => first_new = Some(e),
            }
        }
        if let Some(next) = entries.get(i + 1) {
            let same = next.day == e.day
                && next.key == e.key
                && next.ts == e.ts
                && next.created == e.created
                && next.content == e.content
                && (int_key || bytes_of(next) == bytes_of(e));
            if same {
                continue;
            }
        }
        first_new = None;
        // A snapshot view keeps the run's last row (the newest ingest's); an event
        // table keeps the newest ingest's copies of the run (all of them: a source may
        // hold the same event twice), else the stored ones.
        let run = &entries[if events { run_start } else { i }..=i];
        run_start = i + 1;
        let newest = run.last().map_or(0, |l| (l.batch as usize >= n_old) as u8);
        for r in run
            .iter()
            .filter(|r| (r.batch as usize >= n_old) as u8 == newest)
        {
            match out.last_mut() {
                Some((d, v)) if *d == r.day => v.push((r.batch as usize, r.row as usize)),
                _ => out.push((r.day, vec![(r.batch as usize, r.row as usize)])),
            }
        }
    }
    Ok(out)
}

/// Data files smaller than this are merged by compaction; larger ones are left alone.
pub const SMALL_FILE_BYTES: i64 = 32 << 20;

/// Commits between two checkpoints of a view's table (Delta's default is 100).
pub const CHECKPOINT_INTERVAL: u64 = 10;

/// Every row of the data files `paths` (each with its day partition), read in
/// parallel, in the order of `paths`.
fn read_whole_files(
    paths: &[(PathBuf, i32)],
    schema: &arrow::datatypes::SchemaRef,
) -> Result<Vec<RecordBatch>> {
    Ok(paths
        .par_iter()
        .map(|(p, day)| read_data_file(p, schema, *day))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// A commit with Delta's post-commit hook: a checkpoint every `checkpointInterval`
/// commits ([`CHECKPOINT_INTERVAL`] for views' tables, 100 for others), so that loading a table written by many small commits
/// (stream micro-batches, pushes) reads the last checkpoint and the commits after it,
/// not every commit since the table was created; and expired log files cleaned up as
/// the table's settings say.
fn commit_builder() -> CommitBuilder {
    CommitBuilder::from(
        deltalake::kernel::transaction::CommitProperties::default()
            // Log files stay: `files_since` reads the table at the version an
            // incremental materialization last read, however old.
            .with_cleanup_expired_logs(Some(false)),
    )
}

/// Names of the stored time columns, for readers.
pub const TIME_COLUMNS: [&str; 2] = [EVENT_TIMESTAMP, CREATED_TIMESTAMP];
