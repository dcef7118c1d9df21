//! Human and JSON renderings of registry objects and results for the command line.

use quiver_core::model::OnDemandSource;
use quiver_core::model::Source;
use quiver_core::time::{format_timestamp, now};
use quiver_core::{Duration, Timestamp};
use quiver_registry::RegistryState;
use serde_json::json;

use quiver::{Error, FeatureStore, MaterializeStats, OnlineResult, Result};

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(|s| s.as_str()).collect()));
        out.push('\n');
    }
    out
}

/// `quiver list [KIND]`.
pub fn list(store: &FeatureStore, kind: Option<&str>, as_json: bool) -> Result<()> {
    let s = store.state()?;
    let kinds = [
        "entities",
        "sources",
        "request-sources",
        "feature-views",
        "on-demand-feature-views",
        "feature-services",
    ];
    let selected: Vec<&str> = match kind {
        None => kinds.to_vec(),
        Some(k) => {
            let k = k.replace('_', "-");
            let found = kinds
                .iter()
                .find(|x| **x == k || x.trim_end_matches('s') == k);
            vec![*found.ok_or_else(|| {
                Error::Invalid(format!("unknown kind '{k}': one of {}", kinds.join(", ")))
            })?]
        }
    };
    if as_json {
        let mut out = serde_json::Map::new();
        for k in selected {
            let v = match k {
                "entities" => serde_json::to_value(&s.entities),
                "sources" => serde_json::to_value(&s.sources),
                "request-sources" => serde_json::to_value(&s.request_sources),
                "feature-views" => serde_json::to_value(&s.feature_views),
                "on-demand-feature-views" => serde_json::to_value(&s.on_demand_feature_views),
                _ => serde_json::to_value(&s.feature_services),
            };
            out.insert(k.to_string(), v.expect("serializable"));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializable")
        );
        return Ok(());
    }
    for k in selected {
        println!("{}:", k.to_uppercase());
        let rows: Vec<Vec<String>> = match k {
            "entities" => s
                .entities
                .values()
                .map(|e| {
                    vec![
                        e.def.name.clone(),
                        e.join_keys
                            .iter()
                            .map(|k| format!("{}:{}", k.name, k.dtype))
                            .collect::<Vec<_>>()
                            .join(","),
                        or_dash(&e.def.owner).into(),
                        or_dash(&e.def.description).into(),
                    ]
                })
                .collect(),
            "sources" => s
                .sources
                .values()
                .map(|r| {
                    use quiver_core::model::Source;
                    let kind = r.def.kind();
                    let place = match &r.def {
                        Source::File(f) => f.path.clone(),
                        Source::RedisStream(x) => {
                            let url = quiver_core::model::redact_url(&x.url);
                            format!("{url} {}", x.stream)
                        }
                        Source::Kafka(k) => format!("{} {}", k.brokers, k.topic),
                        Source::Push(p) => format!("history: {}", p.batch_source),
                    };
                    vec![
                        r.def.name().to_string(),
                        kind.into(),
                        place,
                        r.def.timestamp_field().to_string(),
                        or_dash(r.def.owner()).into(),
                    ]
                })
                .collect(),
            "request-sources" => s
                .request_sources
                .values()
                .map(|r| {
                    vec![
                        r.def.name.clone(),
                        r.def
                            .schema
                            .iter()
                            .map(|f| format!("{}:{}", f.name, f.dtype))
                            .collect::<Vec<_>>()
                            .join(","),
                        or_dash(&r.def.owner).into(),
                        or_dash(&r.def.description).into(),
                    ]
                })
                .collect(),
            "on-demand-feature-views" => s
                .on_demand_feature_views
                .values()
                .map(|v| {
                    vec![
                        v.def.name.clone(),
                        v.version.to_string(),
                        v.def
                            .sources
                            .iter()
                            .map(|x| match x {
                                OnDemandSource::Request(r) => format!("request:{r}"),
                                OnDemandSource::View(v) => v.clone(),
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        v.def.features.len().to_string(),
                        or_dash(&v.def.owner).into(),
                        v.def
                            .tags
                            .iter()
                            .map(|(k, t)| format!("{k}={t}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect(),
            "feature-views" => s
                .feature_views
                .values()
                .map(|v| {
                    vec![
                        v.def.name.clone(),
                        v.version.to_string(),
                        v.def.entities.join(","),
                        v.def.features.len().to_string(),
                        v.def.ttl.to_string(),
                        v.def.freshness_sla.map_or("-".into(), |d| d.to_string()),
                        or_dash(&v.def.owner).into(),
                        v.def
                            .tags
                            .iter()
                            .map(|(k, t)| format!("{k}={t}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect(),
            _ => s
                .feature_services
                .values()
                .map(|v| {
                    vec![
                        v.def.name.clone(),
                        v.version.to_string(),
                        v.features.len().to_string(),
                        or_dash(&v.def.owner).into(),
                    ]
                })
                .collect(),
        };
        let headers: &[&str] = match k {
            "entities" => &["NAME", "JOIN KEYS", "OWNER", "DESCRIPTION"],
            "sources" => &["NAME", "TYPE", "PATH", "TIMESTAMP", "OWNER"],
            "request-sources" => &["NAME", "SCHEMA", "OWNER", "DESCRIPTION"],
            "on-demand-feature-views" => {
                &["NAME", "VERSION", "SOURCES", "FEATURES", "OWNER", "TAGS"]
            }
            "feature-views" => &[
                "NAME", "VERSION", "ENTITIES", "FEATURES", "TTL", "SLA", "OWNER", "TAGS",
            ],
            _ => &["NAME", "VERSION", "FEATURES", "OWNER"],
        };
        println!("{}", table(headers, &rows));
    }
    Ok(())
}

/// `quiver describe NAME`: an entity, source, request source, feature view, on-demand
/// feature view or feature service.
pub async fn describe(store: &FeatureStore, name: &str, as_json: bool) -> Result<()> {
    let s = store.state()?;
    let mut v = describe_json(&s, name)?;
    if let Some(stream) = stream_freshness(store, &s, name, now()).await? {
        v["stream"] = stream;
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serializable")
        );
    } else {
        print!("{}", serde_saphyr::to_string(&v).expect("serializable"));
    }
    Ok(())
}

/// The description of an object as JSON.
pub fn describe_json(s: &RegistryState, name: &str) -> Result<serde_json::Value> {
    if let Some(v) = s.feature_views.get(name) {
        let features: Vec<_> = v
            .def
            .features
            .iter()
            .map(|f| {
                json!({
                    "name": f.name, "dtype": f.dtype.to_string(), "description": f.description,
                    "used_by": s.services_using(name, &f.name),
                })
            })
            .collect();
        let on_demand: Vec<&str> = s
            .on_demand_feature_views
            .values()
            .filter(|o| o.def.source_views().any(|x| x == name))
            .map(|o| o.def.name.as_str())
            .collect();
        return Ok(json!({
            "kind": "feature_view", "name": name, "version": v.version,
            "on_demand_feature_views": on_demand,
            "entities": v.def.entities, "join_keys": v.join_keys.iter().map(|k| json!({"name": k.name, "dtype": k.dtype.to_string()})).collect::<Vec<_>>(),
            "source": v.def.source, "ttl": v.def.ttl.to_string(),
            "freshness_sla": v.def.freshness_sla.map(|d| d.to_string()),
            "owner": v.def.owner, "tags": v.def.tags, "description": v.def.description,
            "online": v.def.online, "offline": v.def.offline, "features": features,
            "defined_in": v.file,
            "ingested_until": v.ingested_until.map(format_timestamp),
            "materialized": v.materialized.as_ref().map(|m| json!({
                "start": format_timestamp(m.start), "end": format_timestamp(m.end),
                "at": format_timestamp(m.at), "rows_written": m.rows_written })),
            // The versions reads use while the declared one has no data of its own.
            "training_version": s.training_view(name).ok().map(|t| t.version),
            "serving_version": s.serving_view(name)?.version,
            "fill_command": (!v.has_offline_data() || (v.def.online && !v.has_online_data()))
                .then(|| v.fill_command()),
        }));
    }
    if let Some(v) = s.on_demand_feature_views.get(name) {
        let features: Vec<_> = v
            .def
            .features
            .iter()
            .map(|f| {
                json!({
                    "name": f.name, "dtype": f.dtype.to_string(), "expr": f.expr,
                    "description": f.description,
                    "used_by": s.services_using(name, &f.name),
                })
            })
            .collect();
        return Ok(json!({
            "kind": "on_demand_feature_view", "name": name, "version": v.version,
            "sources": v.def.sources,
            "request_fields": v.request_fields,
            "dependencies": v.dependencies.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "owner": v.def.owner, "tags": v.def.tags, "description": v.def.description,
            "features": features, "defined_in": v.file,
        }));
    }
    if let Some(r) = s.request_sources.get(name) {
        let users: Vec<&str> = s
            .on_demand_feature_views
            .values()
            .filter(|o| o.def.request_sources().any(|x| x == name))
            .map(|o| o.def.name.as_str())
            .collect();
        return Ok(json!({
            "kind": "request_source", "name": name,
            "schema": r.def.schema.iter().map(|f| json!({
                "name": f.name, "dtype": f.dtype.to_string(), "description": f.description,
            })).collect::<Vec<_>>(),
            "owner": r.def.owner, "description": r.def.description, "tags": r.def.tags,
            "on_demand_feature_views": users, "defined_in": r.file,
        }));
    }
    if let Some(v) = s.feature_services.get(name) {
        return Ok(json!({
            "kind": "feature_service", "name": name, "version": v.version,
            "features": v.features.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "owner": v.def.owner, "description": v.def.description, "tags": v.def.tags,
            "defined_in": v.file,
        }));
    }
    if let Some(e) = s.entities.get(name) {
        let views: Vec<&str> = s
            .feature_views
            .values()
            .filter(|v| v.def.entities.iter().any(|x| x == name))
            .map(|v| v.def.name.as_str())
            .collect();
        return Ok(json!({
            "kind": "entity", "name": name,
            "join_keys": e.join_keys.iter().map(|k| json!({"name": k.name, "dtype": k.dtype.to_string()})).collect::<Vec<_>>(),
            "owner": e.def.owner, "description": e.def.description, "tags": e.def.tags,
            "feature_views": views, "defined_in": e.file,
        }));
    }
    if let Some(r) = s.sources.get(name) {
        let views: Vec<&str> = s
            .feature_views
            .values()
            .filter(|v| v.def.source == name)
            .map(|v| v.def.name.as_str())
            .collect();
        let mut v = serde_json::to_value(&r.def).expect("serializable");
        v["kind"] = json!("source");
        v["feature_views"] = json!(views);
        v["defined_in"] = json!(r.file);
        return Ok(v);
    }
    let all = s
        .entities
        .keys()
        .chain(s.sources.keys())
        .chain(s.request_sources.keys())
        .chain(s.feature_views.keys())
        .chain(s.on_demand_feature_views.keys())
        .chain(s.feature_services.keys());
    Err(Error::Invalid(format!(
        "no object named '{name}'{}",
        quiver_registry::state::suggest(name, all)
    )))
}

/// Prints materialization results.
pub fn print_materialize(stats: &[MaterializeStats], as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(stats).expect("serializable")
        );
        return;
    }
    if stats.is_empty() {
        println!("Nothing to materialize: every view is up to date.");
    }
    for s in stats {
        let start = if s.start <= i64::MIN / 2 {
            "the beginning".to_string()
        } else {
            format_timestamp(s.start)
        };
        print!(
            "{}: {} rows from {} to {}, {} keys, {} rows written online",
            s.view,
            s.rows_read,
            start,
            format_timestamp(s.end),
            s.keys,
            s.written
        );
        println!();
    }
}

/// Prints an online result.
pub fn print_online(r: &OnlineResult, as_json: bool) {
    if as_json {
        let results: Vec<_> = r
            .rows
            .iter()
            .map(|row| {
                let features: serde_json::Map<String, serde_json::Value> = r
                    .feature_names
                    .iter()
                    .zip(&row.values)
                    .map(|(n, v)| (n.clone(), serde_json::to_value(v).expect("serializable")))
                    .collect();
                let statuses: serde_json::Map<String, serde_json::Value> = r
                    .feature_names
                    .iter()
                    .zip(&row.statuses)
                    .map(|(n, s)| (n.clone(), json!(s.as_str())))
                    .collect();
                let event_timestamps: serde_json::Map<String, serde_json::Value> = r
                    .feature_names
                    .iter()
                    .zip(&row.event_timestamps)
                    .map(|(n, t)| (n.clone(), json!(t.map(format_timestamp))))
                    .collect();
                json!({"entities": row.entities, "features": features, "statuses": statuses,
                       "event_timestamps": event_timestamps})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "results": results,
                "metadata": {
                    "feature_service": r.feature_service.as_ref().map(|s| &s.0),
                    "feature_service_version": r.feature_service.as_ref().map(|s| s.1),
                    "at": format_timestamp(r.at),
                }
            }))
            .expect("serializable")
        );
        return;
    }
    for row in &r.rows {
        let ent: Vec<String> = row
            .entities
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("entity {}", ent.join(", "));
        let rows: Vec<Vec<String>> = r
            .feature_names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                vec![
                    n.clone(),
                    row.values[i].to_string(),
                    row.statuses[i].to_string(),
                    row.event_timestamps[i].map_or("-".into(), format_timestamp),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["FEATURE", "VALUE", "STATUS", "EVENT TIME"], &rows)
        );
    }
}

/// Seconds from `t` to `now` (µs since the epoch), as a number for JSON.
fn age_seconds(t: Timestamp, now: Timestamp) -> f64 {
    (now - t) as f64 / 1e6
}

/// A feature view's stream freshness (see [`quiver::freshness`]) for `describe`:
/// its stream source and, per partition, what the workers last reported; `None` for
/// anything but a feature view over a stream source.
async fn stream_freshness(
    store: &FeatureStore,
    s: &RegistryState,
    name: &str,
    now: Timestamp,
) -> Result<Option<serde_json::Value>> {
    let Some(v) = s.feature_views.get(name) else {
        return Ok(None);
    };
    let source = &s.source(&v.def.source)?.def;
    let what = match source {
        Source::Kafka(k) => format!("kafka topic {}", k.topic),
        Source::RedisStream(r) => format!("redis stream {}", r.stream),
        Source::Push(_) => "pushes to the feature server".to_string(),
        Source::File(_) => return Ok(None),
    };
    // Monitoring: an online store that does not answer leaves the rest of the
    // description standing.
    let record = match store.online().await {
        Ok(online) => quiver::freshness::read(online.as_ref(), &s.project, name).await,
        Err(e) => Err(e),
    };
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            return Ok(Some(json!({
                "source": source.name(), "reads": what,
                "partitions": null, "error": e.to_string(),
            })))
        }
    };
    let partitions: Vec<_> = record
        .iter()
        .map(|(p, r)| {
            json!({
                "partition": p,
                "newest_event": r.newest_event.map(format_timestamp),
                "behind_seconds": r.newest_event.map(|t| age_seconds(t, now)),
                "lag_events": r.lag_events,
                "events_per_s": (r.events_per_s * 10.0).round() / 10.0,
                "applied": r.applied, "replayed": r.replayed, "late": r.late,
                "dead_letters": r.dead_letters,
                "reported_at": format_timestamp(r.reported_at), "consumer": r.consumer,
            })
        })
        .collect();
    Ok(Some(json!({
        "source": source.name(), "reads": what,
        "partitions": partitions,
    })))
}

/// One feature view's freshness against its SLA.
#[derive(serde::Serialize)]
struct ViewStatus {
    view: String,
    source: String,
    /// The newest event time online: a stream's newest applied event, else the end of
    /// the last materialization.
    online_until: Option<String>,
    /// The newest event time ingested offline.
    offline_until: Option<String>,
    /// Seconds from the newest time that counts (online for online views) to now.
    age_seconds: Option<f64>,
    freshness_sla: Option<String>,
    /// ok (within the SLA), late (beyond it), alert (beyond twice it), no_data, or
    /// no_sla.
    state: &'static str,
}

/// `quiver status`: per feature view, how fresh its data is against its freshness SLA
/// (DESIGN §8: late beyond the SLA, alert beyond twice it) — online for online views
/// (stream workers' newest applied event, else the last materialization's end),
/// offline otherwise.
pub async fn status(store: &FeatureStore, at: Option<Timestamp>, as_json: bool) -> Result<()> {
    let s = store.state()?;
    let now = at.unwrap_or_else(now);
    // An online store that does not answer: views are judged by what the registry
    // records (materializations), and the failure is said.
    let online = if s.feature_views.values().any(|v| v.def.online) {
        match store.online().await {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("warning: the online store does not answer ({e}); stream freshness is not shown");
                None
            }
        }
    } else {
        None
    };
    let mut out = Vec::new();
    for (name, v) in &s.feature_views {
        let mut online_until = v.materialized.as_ref().map(|m| m.end);
        if let Some(o) = &online {
            if v.def.online {
                let streamed = match quiver::freshness::read(o.as_ref(), &s.project, name).await {
                    Ok(record) => record.values().filter_map(|r| r.newest_event).max(),
                    Err(e) => {
                        eprintln!("warning: view '{name}': {e}");
                        None
                    }
                };
                online_until = online_until.max(streamed);
            }
        }
        let counts = if v.def.online {
            online_until
        } else {
            v.ingested_until
        };
        let age = counts.map(|t| now - t);
        let state = match (age, v.def.freshness_sla) {
            (None, _) => "no_data",
            (Some(_), None) => "no_sla",
            (Some(a), Some(sla)) if a > 2 * sla.micros() => "alert",
            (Some(a), Some(sla)) if a > sla.micros() => "late",
            _ => "ok",
        };
        out.push(ViewStatus {
            view: name.clone(),
            source: v.def.source.clone(),
            online_until: online_until.map(format_timestamp),
            offline_until: v.ingested_until.map(format_timestamp),
            age_seconds: counts.map(|t| age_seconds(t, now)),
            freshness_sla: v.def.freshness_sla.map(|d| d.to_string()),
            state,
        });
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializable")
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|v| {
            vec![
                v.view.clone(),
                v.source.clone(),
                v.online_until.clone().unwrap_or_else(|| "-".into()),
                v.offline_until.clone().unwrap_or_else(|| "-".into()),
                v.age_seconds.map_or("-".into(), |a| {
                    // Whole seconds; a time in the future shows as 0.
                    Duration::from_micros(a.max(0.0).round() as i64 * 1_000_000).to_string()
                }),
                v.freshness_sla.clone().unwrap_or_else(|| "-".into()),
                v.state.to_uppercase(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "VIEW",
                "SOURCE",
                "ONLINE UNTIL",
                "OFFLINE UNTIL",
                "AGE",
                "SLA",
                "STATE"
            ],
            &rows
        )
    );
    Ok(())
}
