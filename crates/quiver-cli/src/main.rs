//! The `quiver` command line: one tokio runtime for the whole process, over the async
//! library ([`quiver::FeatureStore`]) and the feature server ([`quiver_server`]).

mod progress;
mod views;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use arrow::util::pretty::pretty_format_batches;
use clap::{Parser, Subcommand};
use quiver::{FeatureStore, Result};
use quiver_core::time::{format_timestamp, now, parse_timestamp};

/// quiver: a feature store. Declare features once; train and serve from one engine.
#[derive(Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    /// The feature repository (the directory holding quiver.yaml).
    #[arg(
        long,
        short = 'r',
        global = true,
        default_value = ".",
        env = "QUIVER_REPO"
    )]
    repo: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a working demo repository with generated data into DIR.
    Init {
        dir: PathBuf,
        /// End of the generated history (default: now).
        #[arg(long)]
        anchor: Option<String>,
    },
    /// Show what `apply` would add, change and remove.
    Plan,
    /// Validate the definitions and write the registry.
    Apply,
    /// List registered objects.
    List {
        /// entities, sources, request-sources, feature-views, on-demand-feature-views,
        /// feature-services (default: all)
        kind: Option<String>,
    },
    /// Describe one object (a feature view over a stream: with what the stream workers
    /// report per partition).
    Describe { name: String },
    /// Per feature view: the newest event time online and offline against the view's
    /// freshness SLA (late beyond it, alert beyond twice it).
    Status {
        /// Judge freshness at this time instead of now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Load feature views' batch sources into the offline store.
    Ingest {
        /// Views to ingest (default: all).
        views: Vec<String>,
    },
    /// Build a point-in-time-correct training set.
    #[command(alias = "get-historical-features")]
    Historical {
        /// Entity rows (Parquet or CSV): join keys, event_timestamp, labels.
        #[arg(long)]
        entities: PathBuf,
        /// Features, comma-separated view:feature references.
        #[arg(long, value_delimiter = ',', conflicts_with = "service")]
        features: Vec<String>,
        /// A feature service.
        #[arg(long)]
        service: Option<String>,
        /// Output file (Parquet or CSV by extension).
        #[arg(long, short)]
        output: PathBuf,
        /// Name columns view__feature.
        #[arg(long)]
        full_names: bool,
        /// Rows of the result to print.
        #[arg(long, default_value_t = 5)]
        preview: usize,
        /// Parquet output codec: snappy (default), zstd, zstd(LEVEL) or none.
        #[arg(long, default_value = "snappy")]
        compression: String,
        /// Parquet output rows per row group (a group's columns are encoded in parallel
        /// while the previous group is written).
        #[arg(long, default_value_t = 1 << 20)]
        row_group_size: usize,
    },
    /// Write the latest values with event time in [START, END) to the online store
    /// (END is exclusive: a row stamped exactly END is left for the next run).
    Materialize {
        /// First event time included: RFC 3339 (`2025-03-01T12:00:00Z`,
        /// `2025-03-01T13:00:00+01:00`), `2025-03-01 12:00[:00[.ffffff]]` (UTC) or a
        /// date `2025-03-01` (midnight UTC).
        start: String,
        /// First event time excluded, in the same forms.
        end: String,
        /// Views (default: all online views).
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
    },
    /// Recompute aggregated views' tiles from their offline events for [START, END)
    /// (back to each view's tile retention before END) and write them online;
    /// re-runnable: a rerun leaves the same bytes.
    Backfill {
        /// First event time included, in the forms `materialize` takes.
        start: String,
        /// First event time excluded.
        end: String,
        /// Aggregated views (default: all).
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
    },
    /// Materialize from where the last run ended up to END (default: now).
    MaterializeIncremental {
        /// First event time excluded (default: now), in the forms `materialize` takes.
        end: Option<String>,
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
    },
    /// Compact the online store: drop the values of rows expired for good (their
    /// timestamps stay, so nothing served now changes) and delete rows of retired
    /// data versions; and the offline tables: merge the small files of day partitions
    /// (stream micro-batches add one each) into one per partition.
    Compact {
        /// Views (default: all).
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
        /// Merge a day partition's files when it holds at least this many.
        #[arg(long, default_value_t = 8)]
        min_files: usize,
    },
    /// Delete offline data files no table version within the retention reads: files
    /// replaced by re-ingests and files of ingests that never committed (a killed
    /// run), once older than the retention. Time travel reaches back the retention.
    Vacuum {
        /// How long replaced files are kept (e.g. 7d, 12h; 0 keeps only what the
        /// current tables read).
        #[arg(long, default_value = "7d")]
        retention: String,
        /// Views (default: all).
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
    },
    /// Read feature vectors from the online store.
    Online {
        #[arg(long, value_delimiter = ',', conflicts_with = "service")]
        features: Vec<String>,
        #[arg(long)]
        service: Option<String>,
        /// One entity row: key=value[,key=value…]; repeat for more rows.
        #[arg(long = "entity", required = true)]
        entities: Vec<String>,
        /// The request fields of one entity row (for on-demand features):
        /// field=value[,field=value…]; one per --entity, in the same order.
        #[arg(long = "request")]
        requests: Vec<String>,
        #[arg(long)]
        full_names: bool,
        /// Compute statuses at this time instead of now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Run the feature server: HTTP JSON and gRPC.
    Serve {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// HTTP port (0 picks a free one).
        #[arg(long, default_value_t = 6566)]
        port: u16,
        /// gRPC port (0 picks a free one).
        #[arg(long, default_value_t = 6567)]
        grpc_port: u16,
        /// Serve HTTP only.
        #[arg(long)]
        no_grpc: bool,
        /// Largest number of entity rows per request (default: serving.max_entity_rows
        /// in quiver.yaml, 1000; at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max_entity_rows: Option<u64>,
    },
    /// Consume the stream sources of feature views (kafka, redis_stream) into the online
    /// and offline stores until SIGTERM or Ctrl-C (then write what was read and exit 0).
    Stream {
        /// Views to feed (default: every view over a stream source).
        views: Vec<String>,
        /// This worker's name in the consumer groups (default: host and process id).
        #[arg(long)]
        consumer: Option<String>,
        /// Entries read per call (at most: a read returns what is there). Larger batches
        /// catch up faster: each online write commits once per batch.
        #[arg(long, default_value_t = 20000, value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
        /// Offline micro-batches: written after this many events ...
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        flush_rows: u64,
        /// ... or once the oldest waited this long (e.g. 5s, 1m).
        #[arg(long, default_value = "5s")]
        flush_interval: String,
        /// Merge a view's offline files after this many micro-batches, in every day
        /// partition holding at least as many files (0: never; `quiver compact` does it
        /// on demand).
        #[arg(long, default_value_t = 32)]
        compact_files: usize,
        /// A Redis stream is read by one worker at a time; another takes over (with the
        /// entries left pending) once the reader has not renewed its lease this long.
        #[arg(long, default_value = "30s")]
        lease: String,
        /// Exit once every stream is read to its end and written.
        #[arg(long)]
        stop_when_idle: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9102).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
}

/// mimalloc rather than the C allocator: a stream worker's batches allocate and free many
/// small tile buffers (a fifth of its time went to glibc's malloc and free), and a
/// training set's large buffers are reused between its phases instead of faulted in
/// again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics go to stderr, filtered by QUIVER_LOG (e.g. `QUIVER_LOG=quiver=debug`).
    quiver::init_diagnostics();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// `k=v[,k=v…]` as a map.
fn parse_pairs(s: &str, flag: &str) -> Result<BTreeMap<String, String>> {
    let mut row = BTreeMap::new();
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            quiver::Error::Invalid(format!("{flag} {s:?}: expected key=value[,key=value…]"))
        })?;
        row.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(row)
}

fn time_arg(s: &str) -> Result<i64> {
    Ok(parse_timestamp(s)?)
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM (what orchestrators send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(
    store: FeatureStore,
    host: &str,
    port: u16,
    grpc_port: Option<u16>,
    max_entity_rows: Option<usize>,
) -> Result<()> {
    let max_entity_rows = max_entity_rows.unwrap_or(store.config().serving.max_entity_rows);
    let addr = |p: u16| -> Result<std::net::SocketAddr> {
        format!("{host}:{p}")
            .parse()
            .or_else(|_| {
                use std::net::ToSocketAddrs;
                (host, p)
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or(())
            })
            .map_err(|_| quiver::Error::Invalid(format!("--host {host:?} is not an address")))
    };
    let serving = &store.config().serving;
    let options = quiver_server::ServeOptions {
        http: addr(port)?,
        grpc: grpc_port.map(addr).transpose()?,
        max_entity_rows,
        limits: serving.into(),
        ..Default::default()
    };
    {
        let server = quiver_server::Server::start(store, options, None).await?;
        eprintln!(
            "serving project '{}' (registry serial {}, online store {}) on http://{}{}",
            server.state.health().project,
            server.state.registry_serial(),
            server.state.health().online_store,
            server.http_addr,
            server
                .grpc_addr
                .map(|a| format!(" and grpc://{a}"))
                .unwrap_or_default()
        );
        shutdown_signal().await;
        eprintln!("shutting down: finishing requests in flight");
        server.stop().await;
        Ok(())
    }
}

/// A flag that turns true on SIGTERM or Ctrl-C. The SIGTERM handler is installed
/// before this returns, so a worker stopped while it starts still exits cleanly.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::spawn(async move {
        #[cfg(unix)]
        match term {
            Some(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    stopped
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    // The stream worker listens for SIGTERM from the start (opening the store included).
    let stream_stop = matches!(cli.command, Command::Stream { .. }).then(stop_on_signal);
    if let Command::Init { dir, anchor } = &cli.command {
        let anchor = anchor
            .as_deref()
            .map(time_arg)
            .transpose()?
            .unwrap_or_else(now);
        let dir2 = dir.clone();
        quiver::blocking(move || quiver::demo::init(&dir2, anchor)).await?;
        println!(
            "Created a feature repository in {} (history up to {}).\nNext: cd {} && quiver apply && quiver ingest",
            dir.display(),
            format_timestamp(anchor),
            dir.display()
        );
        return Ok(());
    }
    let store = FeatureStore::open(&cli.repo)?;
    match cli.command {
        Command::Init { .. } => unreachable!("handled above"),
        Command::Plan => {
            let (plan, _) = store.plan().await?;
            if json {
                print_json(&plan)
            } else {
                print!("{plan}")
            }
        }
        Command::Apply => {
            let plan = store.apply().await?;
            if json {
                print_json(&plan)
            } else {
                print!("{plan}");
                if !plan.is_empty() {
                    println!("Applied to {}.", store.registry().path().display());
                }
            }
        }
        Command::Vacuum { retention, views } => {
            let retention = quiver::Duration::parse(&retention)?;
            let stats = store.vacuum(&views, retention).await?;
            if json {
                print_json(&stats)
            } else {
                for s in &stats {
                    println!("{}: {} offline data files deleted", s.view, s.files_deleted);
                }
            }
        }
        Command::Compact { views, min_files } => {
            let state = store.state()?;
            let online: Vec<String> = views
                .iter()
                .filter(|v| state.view(v).is_ok_and(|r| r.def.online))
                .cloned()
                .collect();
            // Offline first: it checks the names before anything is done.
            let files = store.compact_files(&views, min_files).await?;
            let stats = if views.is_empty() || !online.is_empty() {
                store.compact_online(&online).await?
            } else {
                Vec::new()
            };
            if json {
                print_json(&serde_json::json!({"online": stats, "offline": files}))
            } else {
                for f in files.iter().filter(|f| f.files_removed > 0) {
                    println!(
                        "{}: {} offline files merged into {} ({} day partitions)",
                        f.view, f.files_removed, f.files_written, f.partitions
                    );
                }
                for s in &stats {
                    println!(
                        "{}: {} expired rows compacted, {} rows of retired versions deleted, \
                         {} old tiles deleted",
                        s.view, s.compacted, s.deleted, s.tiles_deleted
                    );
                }
            }
        }
        Command::List { kind } => views::list(&store, kind.as_deref(), json)?,
        Command::Describe { name } => views::describe(&store, &name, json).await?,
        Command::Status { at } => {
            let at = at.as_deref().map(parse_timestamp).transpose()?;
            views::status(&store, at, json).await?
        }
        Command::Ingest { views } => {
            let stats = store.ingest().views(views).await?;
            if json {
                print_json(
                    &stats
                        .iter()
                        .map(|(v, s)| {
                            serde_json::json!({
                    "view": v, "rows_in": s.rows_in, "rows_stored": s.rows_stored,
                    "rows_replaced": s.rows_replaced, "rows_duplicate": s.rows_duplicate,
                    "partitions": s.partitions,
                    "table_version": s.table_version })
                        })
                        .collect::<Vec<_>>(),
                );
            } else {
                for (v, s) in stats {
                    println!(
                        "{v}: {} rows read, {} rows stored in {} day partitions ({} replaced a stored row, {} duplicated another row of the source), table version {}",
                        s.rows_in, s.rows_stored, s.partitions, s.rows_replaced, s.rows_duplicate,
                        s.table_version.map_or("-".into(), |v| v.to_string())
                    );
                }
            }
        }
        Command::Historical {
            entities,
            features,
            service,
            output,
            full_names,
            preview,
            compression,
            row_group_size,
        } => {
            let started = std::time::Instant::now();
            let options = quiver::io::ParquetOptions {
                compression: quiver::io::ParquetOptions::parse_compression(&compression)?,
                row_group_rows: row_group_size,
            };
            // The output's format is known from its name: check it before the work.
            quiver_offline::files::format_of(&output, None)?;
            let state = store.state()?;
            let input = quiver::blocking(move || {
                quiver::io::read_entities(&entities, &state, "event_timestamp")
            })
            .await?;
            let mut b = store
                .historical()
                .entity_batches(input)
                .features(features)
                .full_names(full_names);
            if let Some(s) = service {
                b = b.service(s);
            }
            let result = b.await?;
            let (out, res) = (output.clone(), result.clone());
            quiver::blocking(move || quiver::io::write_table_with(&out, &res, &options)).await?;
            let invalid = quiver::historical::invalid_rows(&result);
            if json {
                let invalid: serde_json::Map<String, serde_json::Value> = invalid
                    .iter()
                    .map(|(c, n, why)| (c.clone(), serde_json::json!({"rows": n, "first": why})))
                    .collect();
                print_json(
                    &serde_json::json!({"rows": result.num_rows(), "columns": result.num_columns(),
                    "output": output, "seconds": started.elapsed().as_secs_f64(),
                    "invalid": invalid}),
                );
            } else {
                for (column, n, why) in &invalid {
                    eprintln!(
                        "note: {n} value(s) of {column} could not be computed and are null \
                         (INVALID online); first: {why}"
                    );
                }
                let n = preview.min(result.num_rows());
                println!("{}", pretty_format_batches(&[result.slice(0, n)])?);
                println!(
                    "{} rows × {} columns written to {} in {:.2}s",
                    result.num_rows(),
                    result.num_columns(),
                    output.display(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Command::Materialize { start, end, views } => {
            let stats = store
                .materialize(time_arg(&start)?, time_arg(&end)?)
                .views(views)
                .with_progress(progress::bar(!json))
                .await?;
            views::print_materialize(&stats, json);
        }
        Command::Backfill { start, end, views } => {
            let stats = store
                .backfill(time_arg(&start)?, time_arg(&end)?)
                .views(views)
                .with_progress(progress::bar(!json))
                .await?;
            views::print_materialize(&stats, json);
        }
        Command::MaterializeIncremental { end, views } => {
            let end = end
                .as_deref()
                .map(time_arg)
                .transpose()?
                .unwrap_or_else(now);
            let stats = store
                .materialize_incremental(end)
                .views(views)
                .with_progress(progress::bar(!json))
                .await?;
            views::print_materialize(&stats, json);
        }
        Command::Online {
            features,
            service,
            entities,
            requests,
            full_names,
            at,
        } => {
            let mut b = store
                .online_features()
                .features(features)
                .full_names(full_names);
            if let Some(s) = service {
                b = b.service(s);
            }
            if let Some(at) = at {
                b = b.at(time_arg(&at)?);
            }
            for e in &entities {
                let mut row = BTreeMap::new();
                for part in e.split(',') {
                    let (k, v) = part.split_once('=').ok_or_else(|| {
                        quiver::Error::Invalid(format!(
                            "--entity {e:?}: expected key=value[,key=value…]"
                        ))
                    })?;
                    row.insert(k.trim().to_string(), v.trim().to_string());
                }
                b = b.entity_row_text(row);
            }
            for r in &requests {
                b = b.request_row_text(parse_pairs(r, "--request")?);
            }
            let result = b.await?;
            views::print_online(&result, json);
        }
        Command::Stream {
            views,
            consumer,
            batch_size,
            flush_rows,
            flush_interval,
            compact_files,
            lease,
            stop_when_idle,
            metrics_addr,
        } => {
            let duration = |flag: &str, text: &str| {
                quiver_core::Duration::parse(text)
                    .map(quiver_core::Duration::to_std)
                    .map_err(|e| quiver::Error::Invalid(format!("{flag} {text:?}: {e}")))
            };
            let defaults = quiver_stream::WorkerOptions::default();
            let options = quiver_stream::WorkerOptions {
                views,
                consumer: consumer.unwrap_or(defaults.consumer.clone()),
                batch_size: batch_size as usize,
                flush_rows: flush_rows as usize,
                flush_interval: duration("--flush-interval", &flush_interval)?,
                compact_files,
                lease: duration("--lease", &lease)?,
                stop_when_idle,
                metrics_addr,
                ..defaults
            };
            let stopped = stream_stop.unwrap_or_else(stop_on_signal);
            let stats = quiver_stream::run(&store, &options, stopped)
                .await
                .map_err(|e| match e {
                    quiver_stream::Error::Quiver(e) => e,
                    quiver_stream::Error::Offline(e) => e.into(),
                    quiver_stream::Error::Invalid(m) => quiver::Error::Invalid(m),
                    // The broker failed or is unreachable: unavailable, not bad input.
                    other => quiver::Error::Io {
                        context: "stream source".into(),
                        source: std::io::Error::other(other.to_string()),
                    },
                })?;
            if json {
                print_json(
                    &stats
                        .iter()
                        .map(|(source, s)| {
                            serde_json::json!({
                                "source": source, "entries": s.entries, "applied": s.applied,
                                "replayed": s.replayed, "late": s.late,
                                "dead_letters": s.dead_letters, "flushes": s.flushes,
                                "files_compacted": s.files_compacted })
                        })
                        .collect::<Vec<_>>(),
                );
            } else {
                for (source, s) in &stats {
                    println!(
                        "{source}: {} entries read, {} events applied online, {} replayed, \
                         {} late, {} dead letters, {} offline writes",
                        s.entries, s.applied, s.replayed, s.late, s.dead_letters, s.flushes
                    );
                }
            }
        }
        Command::Serve {
            host,
            port,
            grpc_port,
            no_grpc,
            max_entity_rows,
        } => {
            serve(
                store,
                &host,
                port,
                (!no_grpc).then_some(grpc_port),
                max_entity_rows.map(|n| n as usize),
            )
            .await?
        }
    }
    Ok(())
}
