//! The two sketches of the approximate functions, both exact to merge (DESIGN §2):
//!
//! * [`QuantileSketch`] for `approx_percentile`: a relative-error bucketed sketch in
//!   the manner of DDSketch, whose bucket of a value is read off the value's bits (its
//!   exponent and top [`SUB_BITS`] mantissa bits) instead of a logarithm, so that every
//!   machine buckets every value the same way without depending on a math library.
//!   Bucket counts add, so a merge is exact; a percentile is the midpoint of the bucket
//!   holding the nearest-rank value, within [`QuantileSketch::RELATIVE_ERROR`] of it.
//! * [`Hll`] for `approx_count_distinct`: HyperLogLog with 2^12 registers over xxh3-64
//!   of the value's bytes; a merge is the register-wise maximum. Standard error 1.6%.
//!
//! Neither is taken from a crate: their byte encodings are part of the stored tiles and
//! must stay stable across versions of anything, and both are short.

use std::collections::BTreeMap;

use super::exact::{get_uvarint, put_uvarint, unzigzag, zigzag};

/// Mantissa bits that pick a value's bucket within its power of two.
pub const SUB_BITS: u32 = 7;

/// A mergeable quantile sketch of f64 values (NaN is ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuantileSketch {
    /// Buckets of positive values by index (ascending index = ascending value).
    pos: BTreeMap<i32, u64>,
    /// Buckets of negative values by the index of their magnitude.
    neg: BTreeMap<i32, u64>,
    zero: u64,
}

/// The bucket of a positive (non-zero) magnitude: its top 12 + SUB_BITS bits.
fn bucket(m: f64) -> i32 {
    (m.to_bits() >> (52 - SUB_BITS)) as i32
}

/// The representative magnitude of bucket `i`: the midpoint of its bounds.
fn representative(i: i32) -> f64 {
    let lo = f64::from_bits((i as u64) << (52 - SUB_BITS));
    let hi = f64::from_bits(((i as u64) + 1) << (52 - SUB_BITS));
    if hi.is_infinite() {
        return lo;
    }
    lo / 2.0 + hi / 2.0
}

impl QuantileSketch {
    /// The largest relative distance between a percentile and the true nearest-rank
    /// value: half a bucket's width over its lower bound, 2^-(SUB_BITS + 1). It holds
    /// for normal numbers; below `f64::MIN_POSITIVE` (subnormals) buckets have a fixed
    /// width of 2^-1029, so the error is at most 2^-1030.
    pub const RELATIVE_ERROR: f64 = 1.0 / (1u64 << (SUB_BITS + 1)) as f64;

    pub fn add(&mut self, x: f64) {
        if x.is_nan() {
            return;
        }
        if x == 0.0 {
            self.zero += 1;
        } else if x > 0.0 {
            *self.pos.entry(bucket(x)).or_insert(0) += 1;
        } else {
            *self.neg.entry(bucket(-x)).or_insert(0) += 1;
        }
    }

    pub fn merge(&mut self, other: &QuantileSketch) {
        self.zero += other.zero;
        for (&i, &c) in &other.pos {
            *self.pos.entry(i).or_insert(0) += c;
        }
        for (&i, &c) in &other.neg {
            *self.neg.entry(i).or_insert(0) += c;
        }
    }

    pub fn count(&self) -> u64 {
        self.zero + self.pos.values().sum::<u64>() + self.neg.values().sum::<u64>()
    }

    /// The nearest-rank `p`-quantile (0 ≤ p ≤ 1): the value of rank ⌈p·n⌉ (at least 1)
    /// in ascending order, as its bucket's representative; `None` when empty.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((p * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (&i, &c) in self.neg.iter().rev() {
            seen += c;
            if seen >= rank {
                return Some(-representative(i));
            }
        }
        seen += self.zero;
        if seen >= rank {
            return Some(0.0);
        }
        for (&i, &c) in &self.pos {
            seen += c;
            if seen >= rank {
                return Some(representative(i));
            }
        }
        unreachable!("the ranks add up to n")
    }

    /// Canonical encoding: zero count, then each side's buckets as (index delta, count).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_uvarint(out, self.zero);
        for side in [&self.neg, &self.pos] {
            put_uvarint(out, side.len() as u64);
            let mut prev = 0i64;
            for (&i, &c) in side {
                put_uvarint(out, zigzag(i as i64 - prev));
                put_uvarint(out, c);
                prev = i as i64;
            }
        }
    }

    pub fn decode(input: &mut &[u8]) -> Option<QuantileSketch> {
        let mut s = QuantileSketch {
            zero: get_uvarint(input)?,
            ..Default::default()
        };
        for neg in [true, false] {
            let len = get_uvarint(input)?;
            if len > 1 << 20 {
                return None;
            }
            let mut prev = 0i64;
            for _ in 0..len {
                let i = prev.checked_add(unzigzag(get_uvarint(input)?))?;
                let c = get_uvarint(input)?;
                let i32_ = i32::try_from(i).ok()?;
                if neg {
                    s.neg.insert(i32_, c);
                } else {
                    s.pos.insert(i32_, c);
                }
                prev = i;
            }
        }
        Some(s)
    }
}

/// log2 of the number of HyperLogLog registers.
pub const HLL_P: u32 = 12;
const HLL_M: usize = 1 << HLL_P;
/// Up to this many set registers are stored sparsely (index, rank).
const SPARSE_MAX: usize = 512;

/// HyperLogLog with 2^12 registers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hll {
    /// Set registers, sparse: (index, rank), sorted by index; or all registers, dense.
    sparse: Vec<(u16, u8)>,
    dense: Option<Box<[u8]>>,
}

impl Hll {
    /// Adds a value given as bytes.
    pub fn add_bytes(&mut self, bytes: &[u8]) {
        let h = xxhash_rust::xxh3::xxh3_64(bytes);
        let index = (h >> (64 - HLL_P)) as u16;
        let rest = (h << HLL_P) | (1 << (HLL_P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        self.set(index, rank);
    }

    fn set(&mut self, index: u16, rank: u8) {
        if let Some(d) = self.dense.as_mut() {
            let r = &mut d[index as usize];
            *r = (*r).max(rank);
            return;
        }
        match self.sparse.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(k) => self.sparse[k].1 = self.sparse[k].1.max(rank),
            Err(k) => {
                self.sparse.insert(k, (index, rank));
                if self.sparse.len() > SPARSE_MAX {
                    let mut d = vec![0u8; HLL_M].into_boxed_slice();
                    for &(i, r) in &self.sparse {
                        d[i as usize] = r;
                    }
                    self.dense = Some(d);
                    self.sparse = Vec::new();
                }
            }
        }
    }

    pub fn merge(&mut self, other: &Hll) {
        match &other.dense {
            Some(d) => {
                for (i, &r) in d.iter().enumerate() {
                    if r > 0 {
                        self.set(i as u16, r);
                    }
                }
            }
            None => {
                for &(i, r) in &other.sparse {
                    self.set(i, r);
                }
            }
        }
    }

    fn registers(&self) -> Vec<u8> {
        match &self.dense {
            Some(d) => d.to_vec(),
            None => {
                let mut d = vec![0u8; HLL_M];
                for &(i, r) in &self.sparse {
                    d[i as usize] = r;
                }
                d
            }
        }
    }

    /// The estimated number of distinct values, rounded to an integer.
    pub fn estimate(&self) -> u64 {
        let regs = self.registers();
        let m = HLL_M as f64;
        let mut sum = 0.0f64;
        let mut zeros = 0u32;
        for &r in &regs {
            sum += f64::from_bits((1023u64 - r as u64) << 52); // 2^-r, exactly
            zeros += (r == 0) as u32;
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let e = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        e.round() as u64
    }

    /// Canonical encoding: a tag (0 sparse, 1 dense) then the set registers as (index
    /// delta, rank) pairs, or all 4096 registers.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.dense {
            None => {
                out.push(0);
                put_uvarint(out, self.sparse.len() as u64);
                let mut prev = 0u16;
                for &(i, r) in &self.sparse {
                    put_uvarint(out, (i - prev) as u64);
                    out.push(r);
                    prev = i;
                }
            }
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
        }
    }

    pub fn decode(input: &mut &[u8]) -> Option<Hll> {
        let (&tag, rest) = input.split_first()?;
        *input = rest;
        let mut h = Hll::default();
        match tag {
            0 => {
                let len = get_uvarint(input)? as usize;
                if len > SPARSE_MAX {
                    return None;
                }
                let mut i = 0u64;
                for k in 0..len {
                    let delta = get_uvarint(input)?;
                    if k > 0 && delta == 0 {
                        return None;
                    }
                    i += delta;
                    let (&r, rest) = input.split_first()?;
                    *input = rest;
                    if i >= HLL_M as u64 || r == 0 || r > 64 - HLL_P as u8 + 1 {
                        return None;
                    }
                    h.sparse.push((i as u16, r));
                }
            }
            1 => {
                if input.len() < HLL_M {
                    return None;
                }
                let (d, rest) = input.split_at(HLL_M);
                *input = rest;
                h.dense = Some(d.to_vec().into_boxed_slice());
            }
            _ => return None,
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_stated_relative_error() {
        let mut s = QuantileSketch::default();
        let xs: Vec<f64> = (1..=10_000).map(|i| i as f64 * 0.37).collect();
        for &x in &xs {
            s.add(x);
        }
        for p in [0.0, 0.01, 0.5, 0.9, 0.99, 1.0] {
            let rank = ((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
            let want = xs[rank - 1];
            let got = s.quantile(p).unwrap();
            assert!(
                (got - want).abs() <= want * QuantileSketch::RELATIVE_ERROR,
                "p {p}: {got} vs {want}"
            );
        }
        let mut m = QuantileSketch::default();
        for x in [-5.0, -1.0, 0.0, 0.0, 2.0] {
            m.add(x);
        }
        assert!((m.quantile(0.0).unwrap() + 5.0).abs() <= 5.0 * QuantileSketch::RELATIVE_ERROR);
        assert_eq!(m.quantile(0.6), Some(0.0));
        assert_eq!(QuantileSketch::default().quantile(0.5), None);
    }

    #[test]
    fn sketches_merge_exactly_and_encode_canonically() {
        let xs: Vec<f64> = (0..2_000)
            .map(|i| ((i * 7919) % 1000) as f64 - 300.5)
            .collect();
        let (mut whole, mut a, mut b) = (
            QuantileSketch::default(),
            QuantileSketch::default(),
            QuantileSketch::default(),
        );
        let (mut hw, mut ha, mut hb) = (Hll::default(), Hll::default(), Hll::default());
        for (i, &x) in xs.iter().enumerate() {
            whole.add(x);
            hw.add_bytes(&x.to_le_bytes());
            if i % 3 == 0 {
                a.add(x);
                ha.add_bytes(&x.to_le_bytes());
            } else {
                b.add(x);
                hb.add_bytes(&x.to_le_bytes());
            }
        }
        b.merge(&a);
        hb.merge(&ha);
        assert_eq!(b, whole);
        assert_eq!(hb.registers(), hw.registers());
        let (mut e1, mut e2) = (Vec::new(), Vec::new());
        b.encode(&mut e1);
        whole.encode(&mut e2);
        assert_eq!(e1, e2);
        let mut input = e1.as_slice();
        assert_eq!(QuantileSketch::decode(&mut input).unwrap(), whole);
        assert!(input.is_empty());
        let mut e = Vec::new();
        hw.encode(&mut e);
        let mut input = e.as_slice();
        assert_eq!(Hll::decode(&mut input).unwrap().registers(), hw.registers());
    }

    #[test]
    fn hll_estimates_within_a_few_percent() {
        for n in [0u64, 1, 10, 1_000, 100_000] {
            let mut h = Hll::default();
            for i in 0..n {
                h.add_bytes(&i.to_le_bytes());
                h.add_bytes(&i.to_le_bytes()); // duplicates do not count
            }
            let e = h.estimate();
            let err = (e as f64 - n as f64).abs() / (n.max(1) as f64);
            assert!(err <= 0.05, "n {n}: estimate {e}");
        }
    }
}
