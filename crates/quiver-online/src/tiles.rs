//! Aggregation tiles in the online store: the merge request types, the [`TileMerger`] a
//! caller supplies, the field layout every backend uses, and [`KeyMergePlan`], the
//! in-memory merge of one entity key's requests that backends share.
//!
//! The store never interprets an IR: it hands the stored bytes and the delta to the
//! caller's [`TileMerger`] and stores what comes back.
//!
//! # Layout (DESIGN §4), identical in every backend
//!
//! Next to the row fields (the 8-byte field id of a view), an entity key holds:
//!
//! * **Tile fields**, 16 bytes ([`tile_field`]): the aggregated view's 8-byte field id,
//!   then the tile start (µs since the epoch) as 8 big-endian bytes with the sign bit
//!   flipped, so that byte order is time order (negative starts included). The value is
//!   the tile's IR, as the merger produced it.
//! * **Stream position fields**, 17 bytes ([`position_field`]): the byte `b'p'`, the
//!   view's 8-byte field id, then xxh3-64 of the partition name (8 bytes, big-endian).
//!   The value ([`encode_position`]) is the offset as 16 big-endian bytes followed by
//!   the partition name itself, so that two partitions whose names hash alike are told
//!   apart (a merge against such a collision fails instead of skipping wrongly).
//!
//! A field's length says what it is: 8 bytes a row, 16 a tile, 17 a stream position.
//! Backends may add fields of other lengths for their own bookkeeping (the Redis backend
//! keeps a 1-byte version field per entity key).

use quiver_core::Timestamp;

use crate::{Error, FieldId, Result};

/// Length of a tile field.
pub const TILE_FIELD_LEN: usize = 16;

/// Length of a stream position field.
pub const POSITION_FIELD_LEN: usize = 17;

/// First byte of a stream position field.
pub const POSITION_TAG: u8 = b'p';

/// The longest partition name a [`StreamPosition`] may carry.
pub const MAX_PARTITION_LEN: usize = 1024;

/// A position in a stream source: a partition and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPosition<'a> {
    /// The partition's name, opaque bytes (e.g. a Kafka topic and partition number, or a
    /// Redis stream's key); at most [`MAX_PARTITION_LEN`] bytes.
    pub partition: &'a [u8],
    /// The offset, growing along the partition. 128 bits, so that a Kafka offset and a
    /// Redis stream entry id (`milliseconds << 64 | sequence`) both fit exactly.
    pub offset: u128,
    /// When given, the position the writer read before choosing its events
    /// (`Some(None)`: none stored): the merge applies only if the stored position is
    /// still that one — a compare-and-set, so two writers of one partition at once
    /// cannot both apply events of one range. Otherwise it is skipped, as a replay when
    /// the stored position is at or past `offset`, else as a conflict
    /// ([`MergeStats::conflicts`]), for the writer to read again and retry.
    pub follows: Option<Option<u128>>,
}

/// One tile's delta: the IR of the events of `[start, start + hop)` that a merge adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileDelta<'a> {
    /// The tile's start, µs since the epoch.
    pub start: Timestamp,
    /// The IR to merge into the stored one.
    pub ir: &'a [u8],
    /// The tile layer (an aggregated view's field) of the tile when it is not the
    /// merge's [`KeyMerge::view`]: one merge covers every tile layer of an aggregated
    /// view (its tile groups, their day tiles), whose stream position is kept once.
    pub layer: Option<FieldId>,
}

impl TileDelta<'_> {
    /// The tile layer of this delta in `merge`.
    pub fn layer_in(&self, merge: &KeyMerge<'_>) -> FieldId {
        self.layer.unwrap_or(merge.view)
    }
}

/// Merges into the tiles of one (entity key, aggregated view).
#[derive(Clone, Copy, Debug)]
pub struct KeyMerge<'a> {
    /// The full entity key ([`crate::entity_key`]).
    pub key: &'a [u8],
    /// The aggregated view: the online field id of its stream position, and of its
    /// tiles unless they name their layer ([`TileDelta::layer`]).
    pub view: FieldId,
    /// The last stream position these deltas include. When given and the position
    /// stored for (key, view, partition) is at or past it, the merge is a replay and
    /// changes nothing; otherwise it is applied and the position stored with the tiles.
    pub position: Option<StreamPosition<'a>>,
    /// The deltas, merged in order (a start may appear more than once).
    pub tiles: &'a [TileDelta<'a>],
}

/// What a `merge_tiles` call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// [`KeyMerge`]s applied.
    pub applied: u64,
    /// [`KeyMerge`]s skipped as replays (their position was at or below the stored one).
    pub skipped: u64,
    /// Tile deltas merged (over the applied `KeyMerge`s).
    pub tiles: u64,
    /// Attempts repeated because another writer changed a key in between (backends that
    /// merge optimistically; always 0 on the embedded store).
    pub retries: u64,
    /// [`KeyMerge`]s not applied because the stored position was no longer the one they
    /// follow ([`StreamPosition::follows`]) and not at or past theirs.
    pub conflicts: u64,
    /// The indices (into the call's merges, in no particular order) of the merges
    /// skipped or not applied as conflicts: a writer that counts what it applied
    /// builds those again from the positions stored now.
    pub left_out: Vec<usize>,
}

impl MergeStats {
    /// Adds `other` to these counts (and its merges left out to these).
    pub fn add(&mut self, other: MergeStats) {
        self.applied += other.applied;
        self.skipped += other.skipped;
        self.tiles += other.tiles;
        self.retries += other.retries;
        self.conflicts += other.conflicts;
        self.left_out.extend(other.left_out);
    }

    /// Adds a key's [`KeyMergeOutcome`] whose merges were the call's merges
    /// `indices` (in the order given to [`KeyMergePlan::apply`]).
    pub fn add_key(&mut self, outcome: &KeyMergeOutcome, indices: &[usize]) {
        self.add(MergeStats {
            left_out: outcome.left_out.iter().map(|&j| indices[j]).collect(),
            ..outcome.stats.clone()
        });
    }
}

/// The merge of two IRs, supplied by the caller of `merge_tiles` (the aggregation
/// engine): the store knows nothing of IR semantics.
///
/// It must be a pure function of its inputs: a backend may call it more than once for
/// the same tile (after a conflict with another writer) and discards the results of
/// attempts that did not commit.
pub trait TileMerger: Send + Sync {
    /// Appends `merge(stored, delta)` to `out`; `stored` is `None` when the tile holds
    /// nothing yet. `out` may already hold other data, which must be left as it is.
    fn merge(&self, stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> Result<()>;

    /// The merge of a tile of the aggregated view (field) `view`: [`Self::merge`] unless
    /// the merger tells views apart (one call merging tiles of several layouts).
    fn merge_for(
        &self,
        view: &FieldId,
        stored: Option<&[u8]>,
        delta: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let _ = view;
        self.merge(stored, delta, out)
    }
}

impl<F> TileMerger for F
where
    F: Fn(Option<&[u8]>, &[u8], &mut Vec<u8>) -> Result<()> + Send + Sync,
{
    fn merge(&self, stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self(stored, delta, out)
    }
}

/// The tile field of (`view`, `start`).
pub fn tile_field(view: &FieldId, start: Timestamp) -> [u8; TILE_FIELD_LEN] {
    let mut f = [0u8; TILE_FIELD_LEN];
    f[..8].copy_from_slice(view);
    f[8..].copy_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    f
}

/// The view and start of a tile field; `None` if `field` is not one.
pub fn parse_tile_field(field: &[u8]) -> Option<(FieldId, Timestamp)> {
    if field.len() != TILE_FIELD_LEN {
        return None;
    }
    let view: FieldId = field[..8].try_into().ok()?;
    let raw = u64::from_be_bytes(field[8..].try_into().ok()?);
    Some((view, (raw ^ (1 << 63)) as Timestamp))
}

/// The stream position field of (`view`, `partition`).
pub fn position_field(view: &FieldId, partition: &[u8]) -> [u8; POSITION_FIELD_LEN] {
    let mut f = [0u8; POSITION_FIELD_LEN];
    f[0] = POSITION_TAG;
    f[1..9].copy_from_slice(view);
    f[9..].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(partition).to_be_bytes());
    f
}

/// Appends the stored value of a stream position to `out`.
pub fn encode_position(position: &StreamPosition<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&position.offset.to_be_bytes());
    out.extend_from_slice(position.partition);
}

/// The offset in a stored position value of `partition`.
pub fn decode_position(value: &[u8], partition: &[u8]) -> Result<u128> {
    if value.len() < 16 {
        return Err(Error::store(format!(
            "a stream position of partition {} holds {} bytes, fewer than 16",
            describe_partition(partition),
            value.len()
        )));
    }
    if &value[16..] != partition {
        return Err(Error::store(format!(
            "the stream positions of partitions {} and {} hash alike; rename one",
            describe_partition(partition),
            describe_partition(&value[16..])
        )));
    }
    let offset = u128::from_be_bytes(value[..16].try_into().expect("16 bytes"));
    Ok(offset)
}

/// A partition name for messages.
pub fn describe_partition(partition: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(partition))
}

/// Checks the requests of a `merge_tiles` call before anything is stored.
pub fn validate_merges(merges: &[KeyMerge<'_>]) -> Result<()> {
    for (i, m) in merges.iter().enumerate() {
        if let Some(p) = &m.position {
            if p.partition.len() > MAX_PARTITION_LEN {
                return Err(Error::Invalid(format!(
                    "merge {i}: the partition name is {} bytes, more than {MAX_PARTITION_LEN}",
                    p.partition.len()
                )));
            }
        }
    }
    Ok(())
}

/// The order in which to apply `merges`: grouped by entity key (sorted), each key's
/// requests in their order in the call. Returns the indices and the group boundaries.
pub fn group_by_key(merges: &[KeyMerge<'_>]) -> (Vec<usize>, Vec<std::ops::Range<usize>>) {
    let mut order: Vec<usize> = (0..merges.len()).collect();
    order.sort_by(|&a, &b| merges[a].key.cmp(merges[b].key)); // stable
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=order.len() {
        if i == order.len() || merges[order[i]].key != merges[order[start]].key {
            if i > start {
                groups.push(start..i);
            }
            start = i;
        }
    }
    (order, groups)
}

/// A field a merge touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MergeField {
    /// A tile field ([`tile_field`]).
    Tile([u8; TILE_FIELD_LEN]),
    /// A stream position field ([`position_field`]).
    Position([u8; POSITION_FIELD_LEN]),
}

impl MergeField {
    /// The field's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            MergeField::Tile(f) => f,
            MergeField::Position(f) => f,
        }
    }
}

/// The merge of one entity key's requests, computed in memory: the fields to read, then,
/// given their stored values, the new values. Backends that read a key's fields, merge
/// and write them back (with whatever makes that atomic for them) share it, so that the
/// semantics — order, replays, positions — are the same everywhere.
#[derive(Debug)]
pub struct KeyMergePlan {
    /// The distinct fields the requests touch, sorted.
    fields: Vec<MergeField>,
}

/// The result of [`KeyMergePlan::apply`]: the fields that change and their new values.
#[derive(Debug, Default)]
pub struct KeyMergeOutcome {
    /// (index into [`KeyMergePlan::fields`], range of the new value in `values`).
    pub changed: Vec<(usize, std::ops::Range<usize>)>,
    /// The new values, back to back.
    pub values: Vec<u8>,
    /// What the requests did (its `left_out` empty: see below).
    pub stats: MergeStats,
    /// The positions, among the requests given to [`KeyMergePlan::apply`], of those
    /// skipped or not applied as conflicts.
    pub left_out: Vec<usize>,
}

impl KeyMergeOutcome {
    /// The new value of change `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[self.changed[i].1.clone()]
    }
}

/// Where a field's current value is during [`KeyMergePlan::apply`].
#[derive(Clone)]
enum Current {
    Stored,
    New(std::ops::Range<usize>),
}

impl KeyMergePlan {
    /// The plan of `merges` (all of one entity key).
    pub fn new<'m, 'a: 'm>(merges: impl IntoIterator<Item = &'m KeyMerge<'a>>) -> Self {
        let mut fields = Vec::new();
        for m in merges {
            for t in m.tiles {
                fields.push(MergeField::Tile(tile_field(&t.layer_in(m), t.start)));
            }
            if let Some(p) = &m.position {
                fields.push(MergeField::Position(position_field(&m.view, p.partition)));
            }
        }
        fields.sort_unstable();
        fields.dedup();
        Self { fields }
    }

    /// The fields to read, sorted and distinct.
    pub fn fields(&self) -> &[MergeField] {
        &self.fields
    }

    fn index(&self, f: &MergeField) -> usize {
        self.fields.binary_search(f).expect("a field of the plan")
    }

    /// Applies `merges` (the ones the plan was made of, in the call's order) to the
    /// `stored` values of [`Self::fields`] (same order), with `merger`.
    pub fn apply<'m, 'a: 'm>(
        &self,
        merges: impl IntoIterator<Item = &'m KeyMerge<'a>>,
        stored: &[Option<&[u8]>],
        merger: &dyn TileMerger,
    ) -> Result<KeyMergeOutcome> {
        assert_eq!(
            stored.len(),
            self.fields.len(),
            "one stored value per field"
        );
        let mut current = vec![Current::Stored; self.fields.len()];
        let mut out = KeyMergeOutcome::default();
        let mut scratch = Vec::new();
        for (j, m) in merges.into_iter().enumerate() {
            if let Some(p) = &m.position {
                let i = self.index(&MergeField::Position(position_field(&m.view, p.partition)));
                let value = match &current[i] {
                    Current::Stored => stored[i],
                    Current::New(r) => Some(&out.values[r.clone()]),
                };
                let stored_offset = value.map(|v| decode_position(v, p.partition)).transpose()?;
                if stored_offset.is_some_and(|o| o >= p.offset) {
                    out.stats.skipped += 1;
                    out.left_out.push(j);
                    continue;
                }
                if p.follows.is_some_and(|f| f != stored_offset) {
                    out.stats.conflicts += 1;
                    out.left_out.push(j);
                    continue;
                }
            }
            for t in m.tiles {
                let layer = t.layer_in(m);
                let i = self.index(&MergeField::Tile(tile_field(&layer, t.start)));
                let begin = match &current[i] {
                    Current::Stored => {
                        let begin = out.values.len();
                        merger
                            .merge_for(&layer, stored[i], t.ir, &mut out.values)
                            .map_err(|e| merge_failed(m, &layer, t.start, e))?;
                        begin
                    }
                    Current::New(r) => {
                        // The input lives in `values`, which the merge appends to.
                        scratch.clear();
                        scratch.extend_from_slice(&out.values[r.clone()]);
                        let begin = out.values.len();
                        merger
                            .merge_for(&layer, Some(&scratch), t.ir, &mut out.values)
                            .map_err(|e| merge_failed(m, &layer, t.start, e))?;
                        begin
                    }
                };
                current[i] = Current::New(begin..out.values.len());
                out.stats.tiles += 1;
            }
            if let Some(p) = &m.position {
                let i = self.index(&MergeField::Position(position_field(&m.view, p.partition)));
                let begin = out.values.len();
                encode_position(p, &mut out.values);
                current[i] = Current::New(begin..out.values.len());
            }
            out.stats.applied += 1;
        }
        for (i, c) in current.into_iter().enumerate() {
            if let Current::New(r) = c {
                out.changed.push((i, r));
            }
        }
        Ok(out)
    }
}

/// A merger's error, with the tile it failed on.
fn merge_failed(m: &KeyMerge<'_>, layer: &FieldId, start: Timestamp, e: Error) -> Error {
    let at = format!(
        "cannot merge the tile at {start} of view {} under key {:?}",
        hex(layer),
        String::from_utf8_lossy(m.key)
    );
    match e {
        Error::Store { context, source } => Error::Store {
            context: format!("{at}: {context}"),
            source,
        },
        Error::Invalid(msg) => Error::Invalid(format!("{at}: {msg}")),
        other => Error::Invalid(format!("{at}: {other}")),
    }
}

/// A field id as 16 hex digits, for messages.
pub fn hex(id: &FieldId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_fields_order_by_start_and_round_trip() {
        let view = *b"view-id!";
        let starts = [i64::MIN, -300_000_000, -1, 0, 1, 300_000_000, i64::MAX];
        let fields: Vec<_> = starts.iter().map(|&s| tile_field(&view, s)).collect();
        for w in fields.windows(2) {
            assert!(w[0] < w[1], "byte order is time order");
        }
        for (f, &s) in fields.iter().zip(&starts) {
            assert_eq!(parse_tile_field(f), Some((view, s)));
        }
        assert_eq!(parse_tile_field(&[0; 8]), None);
        assert_eq!(parse_tile_field(&[0; 17]), None);
    }

    #[test]
    fn position_fields_are_17_bytes_and_values_detect_collisions() {
        let view = *b"view-id!";
        let f = position_field(&view, b"topic/3");
        assert_eq!(f.len(), POSITION_FIELD_LEN);
        assert_eq!(f[0], POSITION_TAG);
        assert_ne!(f, position_field(&view, b"topic/4"));
        assert_ne!(f, position_field(b"other-v!", b"topic/3"));
        let mut v = Vec::new();
        let p = StreamPosition {
            partition: b"topic/3",
            offset: (1_700_000_000_000u128 << 64) | 7,
            follows: None,
        };
        encode_position(&p, &mut v);
        assert_eq!(decode_position(&v, b"topic/3").unwrap(), p.offset);
        let e = decode_position(&v, b"topic/4").unwrap_err().to_string();
        assert!(e.contains("hash alike"), "{e}");
        assert!(decode_position(&v[..10], b"topic/3").is_err());
    }

    #[test]
    fn groups_keep_the_call_order_within_a_key() {
        let t: [TileDelta<'_>; 0] = [];
        let m = |key: &'static [u8]| KeyMerge {
            key,
            view: [0; 8],
            position: None,
            tiles: &t,
        };
        let merges = [m(b"b"), m(b"a"), m(b"b"), m(b"c"), m(b"a")];
        let (order, groups) = group_by_key(&merges);
        assert_eq!(order, vec![1, 4, 0, 2, 3]);
        assert_eq!(groups, vec![0..2, 2..4, 4..5]);
        assert_eq!(group_by_key(&[]), (vec![], vec![]));
    }

    fn append(stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(stored.unwrap_or_default());
        out.extend_from_slice(delta);
        Ok(())
    }

    #[test]
    fn a_plan_applies_in_order_and_skips_replays() {
        let view = *b"view-id!";
        let t1 = [
            TileDelta {
                layer: None,
                start: 0,
                ir: b"a",
            },
            TileDelta {
                layer: None,
                start: 10,
                ir: b"b",
            },
            TileDelta {
                layer: None,
                start: 0,
                ir: b"c",
            },
        ];
        let t2 = [TileDelta {
            layer: None,
            start: 0,
            ir: b"d",
        }];
        let pos = |offset| {
            Some(StreamPosition {
                partition: b"p0",
                offset,
                follows: None,
            })
        };
        let merges = [
            KeyMerge {
                key: b"k",
                view,
                position: pos(5),
                tiles: &t1,
            },
            KeyMerge {
                key: b"k",
                view,
                position: pos(5), // a replay of the first, within the call
                tiles: &t2,
            },
            KeyMerge {
                key: b"k",
                view,
                position: None,
                tiles: &t2,
            },
        ];
        let plan = KeyMergePlan::new(&merges);
        assert_eq!(plan.fields().len(), 3);
        let stored: Vec<Option<&[u8]>> = plan
            .fields()
            .iter()
            .map(|f| match f {
                MergeField::Tile(t) if parse_tile_field(t) == Some((view, 0)) => Some(&b"S"[..]),
                _ => None,
            })
            .collect();
        let out = plan.apply(&merges, &stored, &append).unwrap();
        assert_eq!(
            out.stats,
            MergeStats {
                applied: 2,
                skipped: 1,
                tiles: 4,
                retries: 0,
                conflicts: 0,
                left_out: vec![],
            }
        );
        assert_eq!(
            out.left_out,
            vec![1],
            "the replay within the call is left out"
        );
        let value_of = |f: MergeField| {
            let i = plan.fields().iter().position(|x| *x == f).unwrap();
            let c = out.changed.iter().position(|(j, _)| *j == i).unwrap();
            out.value(c).to_vec()
        };
        assert_eq!(value_of(MergeField::Tile(tile_field(&view, 0))), b"Sacd");
        assert_eq!(value_of(MergeField::Tile(tile_field(&view, 10))), b"b");
        let p = value_of(MergeField::Position(position_field(&view, b"p0")));
        assert_eq!(decode_position(&p, b"p0").unwrap(), 5);

        // A stored position at or past the request's: nothing changes.
        let mut stored_pos = Vec::new();
        encode_position(
            &StreamPosition {
                partition: b"p0",
                offset: 5,
                follows: None,
            },
            &mut stored_pos,
        );
        let plan = KeyMergePlan::new(&merges[..1]);
        let stored: Vec<Option<&[u8]>> = plan
            .fields()
            .iter()
            .map(|f| matches!(f, MergeField::Position(_)).then_some(&stored_pos[..]))
            .collect();
        let out = plan.apply(&merges[..1], &stored, &append).unwrap();
        assert!(out.changed.is_empty());
        assert_eq!(out.stats.skipped, 1);
    }

    /// A merge that follows a position applies only while that position is stored:
    /// another writer's newer position makes it a conflict (or a replay when at or
    /// past its own), and nothing changes.
    #[test]
    fn a_merge_following_a_position_is_a_compare_and_set() {
        let view = [1u8; 8];
        let ir = [TileDelta {
            layer: None,
            start: 0,
            ir: b"x",
        }];
        let merge = |offset: u128, follows: Option<Option<u128>>| KeyMerge {
            key: b"k",
            view,
            position: Some(StreamPosition {
                partition: b"p0",
                offset,
                follows,
            }),
            tiles: &ir,
        };
        let append = |stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(stored.unwrap_or_default());
            out.extend_from_slice(delta);
            Ok(())
        };
        let mut at7 = Vec::new();
        encode_position(
            &StreamPosition {
                partition: b"p0",
                offset: 7,
                follows: None,
            },
            &mut at7,
        );
        let run = |m: KeyMerge<'_>, stored_position: Option<&[u8]>| {
            let merges = [m];
            let plan = KeyMergePlan::new(&merges);
            let stored: Vec<Option<&[u8]>> = plan
                .fields()
                .iter()
                .map(|f| match f {
                    MergeField::Position(_) => stored_position,
                    _ => None,
                })
                .collect();
            plan.apply(&merges, &stored, &append).unwrap().stats
        };
        // Read "nothing stored", but 7 is stored now: a conflict.
        let s = run(merge(9, Some(None)), Some(&at7));
        assert_eq!((s.applied, s.skipped, s.conflicts), (0, 0, 1));
        // Read 5, 7 stored: a conflict too.
        let s = run(merge(9, Some(Some(5))), Some(&at7));
        assert_eq!((s.applied, s.skipped, s.conflicts), (0, 0, 1));
        // Read 7, still 7: applied.
        let s = run(merge(9, Some(Some(7))), Some(&at7));
        assert_eq!((s.applied, s.skipped, s.conflicts), (1, 0, 0));
        // At or before the stored position: a replay, whatever it followed.
        let s = run(merge(7, Some(Some(3))), Some(&at7));
        assert_eq!((s.applied, s.skipped, s.conflicts), (0, 1, 0));
        // Nothing stored, as read: applied; without `follows`, no check.
        let s = run(merge(2, Some(None)), None);
        assert_eq!((s.applied, s.conflicts), (1, 0));
        let s = run(merge(9, None), Some(&at7));
        assert_eq!((s.applied, s.conflicts), (1, 0));
    }
}
