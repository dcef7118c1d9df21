//! An exact sum of floats (a sparse superaccumulator, after Neal, "Fast exact summation
//! using small and large superaccumulators", 2015).
//!
//! Every finite f64 is an integer multiple of 2^-1074 (the smallest subnormal), so a sum
//! of them is too: the accumulator holds that integer N exactly, in 32-bit limbs kept in
//! `i64`s so that carries can wait (each add puts less than 2^32 into a limb, so 2^30
//! adds never overflow one). Only the limbs a sum touches are held — a window of
//! consecutive limbs, typically three to five for amounts of a few orders of magnitude —
//! so an accumulator is small enough to live in every tile.
//!
//! Because N is exact, it depends only on the multiset of values added: any order, any
//! grouping into tiles and any merge of partial sums give the same N, and [`value`]
//! rounds N · 2^-1074 to the nearest f64 (ties to even) once; a zero sum is +0.0.
//! Infinities and NaN are counted apart and decide the result as IEEE arithmetic would
//! (NaN if any NaN or both infinities, else the infinity); an exact sum beyond f64's
//! range is ±infinity.
//!
//! [`value`]: ExactSum::value

/// Bits of value per limb.
const LIMB_BITS: u32 = 32;
const LIMB_MASK: i64 = (1 << LIMB_BITS) - 1;
/// Adds before the carries must be propagated.
const ADDS_BEFORE_CARRY: u32 = 1 << 30;

thread_local! {
    /// The copy [`ExactSum::encode`] normalizes.
    static ENCODE_SCRATCH: std::cell::RefCell<ExactSum> = std::cell::RefCell::new(ExactSum::default());
}

/// An exact sum of f64 values.
#[derive(Clone, Debug, Default)]
pub struct ExactSum {
    /// Index of `limbs[0]`: limb `i` holds bits `[32 (lo + i), 32 (lo + i + 1))` of N.
    lo: i32,
    /// Signed limbs; carries not yet propagated when `pending > 0`.
    limbs: Vec<i64>,
    /// Adds since the carries were last propagated.
    pending: u32,
    pos_inf: u64,
    neg_inf: u64,
    nan: u64,
}

impl PartialEq for ExactSum {
    /// Equal exact sums (and equal counts of non-finite values), however reached.
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        self.encode(&mut a);
        other.encode(&mut b);
        a == b
    }
}

impl ExactSum {
    /// An empty sum (zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `x` exactly.
    #[inline]
    pub fn add(&mut self, x: f64) {
        let bits = x.to_bits();
        let negative = bits >> 63 == 1;
        let exp = ((bits >> 52) & 0x7ff) as i32;
        let frac = bits & ((1 << 52) - 1);
        if exp == 0x7ff {
            match (frac != 0, negative) {
                (true, _) => self.nan += 1,
                (false, false) => self.pos_inf += 1,
                (false, true) => self.neg_inf += 1,
            }
            return;
        }
        // x = mantissa · 2^(shift - 1074), shift ≥ 0.
        let (mantissa, shift) = if exp == 0 {
            (frac, 0)
        } else {
            (frac | (1 << 52), exp - 1)
        };
        if mantissa == 0 {
            return;
        }
        let index = shift.div_euclid(LIMB_BITS as i32);
        let offset = shift.rem_euclid(LIMB_BITS as i32) as u32;
        let wide = (mantissa as u128) << offset; // at most 85 bits: three limbs
        self.reserve(index, index + 2);
        let i = (index - self.lo) as usize;
        let parts = [
            (wide as i64) & LIMB_MASK,
            ((wide >> 32) as i64) & LIMB_MASK,
            (wide >> 64) as i64,
        ];
        if negative {
            for (k, p) in parts.iter().enumerate() {
                self.limbs[i + k] -= p;
            }
        } else {
            for (k, p) in parts.iter().enumerate() {
                self.limbs[i + k] += p;
            }
        }
        self.pending += 1;
        if self.pending >= ADDS_BEFORE_CARRY {
            self.normalize();
        }
    }

    /// Adds another exact sum.
    pub fn merge(&mut self, other: &ExactSum) {
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        self.nan += other.nan;
        if other.limbs.is_empty() {
            return;
        }
        // A sum's limbs are below (pending + 1) · 2^32: below 2^32 after a carry, and
        // each add since put less than 2^32 into each. So as long as both sums' counts
        // together stay under the bound (limbs below 2^62), the limbs add as they are
        // (no copy); else both are carried first.
        let theirs = other.pending.saturating_add(1);
        if self.pending.saturating_add(theirs) < ADDS_BEFORE_CARRY {
            self.add_limbs(other.lo, &other.limbs, theirs);
            return;
        }
        self.normalize();
        let mut o = other.clone();
        o.normalize();
        if !o.limbs.is_empty() {
            self.add_limbs(o.lo, &o.limbs, 1);
        }
    }

    /// Adds limbs starting at index `lo`, accounting them as `adds` adds.
    fn add_limbs(&mut self, lo: i32, limbs: &[i64], adds: u32) {
        let top = lo + limbs.len() as i32 - 1;
        self.reserve(lo, top);
        let start = (lo - self.lo) as usize;
        for (k, l) in limbs.iter().enumerate() {
            self.limbs[start + k] += l;
        }
        self.pending += adds;
        if self.pending >= ADDS_BEFORE_CARRY {
            self.normalize();
        }
    }

    /// Grows the limb window to cover limbs `from..=to` (and one more above, for carries).
    fn reserve(&mut self, from: i32, to: i32) {
        let to = to + 1;
        if self.limbs.is_empty() {
            self.lo = from;
            self.limbs.resize((to - from + 1) as usize, 0);
            return;
        }
        if from < self.lo {
            let grow = (self.lo - from) as usize;
            self.limbs.splice(0..0, std::iter::repeat_n(0, grow));
            self.lo = from;
        }
        let hi = self.lo + self.limbs.len() as i32 - 1;
        if to > hi {
            self.limbs.resize(self.limbs.len() + (to - hi) as usize, 0);
        }
    }

    /// Propagates carries: every limb but the top one in `[0, 2^32)`, the top one holding
    /// the sign; zero limbs trimmed at both ends (so equal sums have equal limbs).
    fn normalize(&mut self) {
        let mut carry = 0i64;
        for l in self.limbs.iter_mut() {
            let v = *l + carry;
            *l = v & LIMB_MASK;
            carry = v >> LIMB_BITS; // arithmetic shift: floor division
        }
        // The top limb takes the remaining carry (sign included).
        while carry != 0 && carry != -1 {
            self.limbs.push(carry & LIMB_MASK);
            carry >>= LIMB_BITS;
        }
        if carry == -1 {
            // A negative number: the top limb holds −1 · 2^32 + its bits.
            match self.limbs.last_mut() {
                Some(top) => *top -= 1 << LIMB_BITS,
                None => self.limbs.push(-1),
            }
        }
        // Trim: zero limbs above and below.
        while self.limbs.last() == Some(&0) {
            self.limbs.pop();
        }
        let zeros = self.limbs.iter().take_while(|&&l| l == 0).count();
        if zeros == self.limbs.len() {
            self.limbs.clear();
            self.lo = 0;
        } else if zeros > 0 {
            self.limbs.drain(..zeros);
            self.lo += zeros as i32;
        }
        self.pending = 0;
    }

    /// Empties the sum, keeping its allocation.
    pub fn clear(&mut self) {
        self.lo = 0;
        self.limbs.clear();
        self.pending = 0;
        self.pos_inf = 0;
        self.neg_inf = 0;
        self.nan = 0;
    }

    /// The sum, correctly rounded to the nearest f64 (ties to even).
    pub fn value(&self) -> f64 {
        self.value_using(&mut ExactSum::new())
    }

    /// [`value`](Self::value), working in `scratch` (overwritten) so that a caller
    /// rounding many sums allocates once.
    pub fn value_using(&self, scratch: &mut ExactSum) -> f64 {
        if self.nan > 0 || (self.pos_inf > 0 && self.neg_inf > 0) {
            return f64::NAN;
        }
        if self.pos_inf > 0 {
            return f64::INFINITY;
        }
        if self.neg_inf > 0 {
            return f64::NEG_INFINITY;
        }
        let n = scratch;
        n.clear();
        n.lo = self.lo;
        n.limbs.extend_from_slice(&self.limbs);
        n.pending = self.pending;
        n.normalize();
        if n.limbs.is_empty() {
            return 0.0;
        }
        let negative = *n.limbs.last().expect("not empty") < 0;
        if negative {
            // Magnitude: negate every limb, then propagate again.
            for l in n.limbs.iter_mut() {
                *l = -*l;
            }
            n.normalize();
        }
        let magnitude = round_to_f64(n.lo, &n.limbs);
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }

    /// The sum as a double-double `(hi, lo)`: `hi` the correctly rounded sum, `lo` the
    /// correctly rounded rest (for finalizers that combine sums, e.g. variance).
    pub fn value_dd(&self) -> (f64, f64) {
        let hi = self.value();
        if !hi.is_finite() {
            return (hi, 0.0);
        }
        let mut rest = self.clone();
        rest.add(-hi);
        (hi, rest.value())
    }

    /// Appends the canonical encoding: counts of +inf, −inf and NaN, the lowest limb's
    /// index, the sign, then the magnitude's limbs (LEB128 integers throughout). Equal
    /// sums encode to equal bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_uvarint(out, self.pos_inf);
        put_uvarint(out, self.neg_inf);
        put_uvarint(out, self.nan);
        // Normalized in a copy kept per thread: a tile merge encodes several sums per
        // tile, and a fresh copy each time would allocate.
        ENCODE_SCRATCH.with_borrow_mut(|n| {
            n.lo = self.lo;
            n.pending = self.pending;
            n.limbs.clear();
            n.limbs.extend_from_slice(&self.limbs);
            n.encode_limbs(out);
        });
    }

    /// The limbs' part of [`Self::encode`]; normalizes `self` first.
    fn encode_limbs(&mut self, out: &mut Vec<u8>) {
        let n = self;
        n.normalize();
        let negative = n.limbs.last().is_some_and(|&t| t < 0);
        if negative {
            for l in n.limbs.iter_mut() {
                *l = -*l;
            }
            n.normalize();
        }
        put_uvarint(out, n.limbs.len() as u64 * 2 + negative as u64);
        if !n.limbs.is_empty() {
            put_uvarint(out, zigzag(n.lo as i64));
            for &l in &n.limbs {
                put_uvarint(out, l as u64);
            }
        }
    }

    /// Reads what [`encode`](Self::encode) wrote from the front of `input`, advancing it.
    pub fn decode(input: &mut &[u8]) -> Option<ExactSum> {
        let mut s = ExactSum::default();
        s.decode_into(input)?;
        Some(s)
    }

    /// [`ExactSum::decode`] into `self`, keeping its limbs' allocation.
    pub fn decode_into(&mut self, input: &mut &[u8]) -> Option<()> {
        self.pos_inf = get_uvarint(input)?;
        self.neg_inf = get_uvarint(input)?;
        self.nan = get_uvarint(input)?;
        self.limbs.clear();
        self.lo = 0;
        self.pending = 0;
        let head = get_uvarint(input)?;
        let (len, negative) = ((head / 2) as usize, head % 2 == 1);
        // Limbs beyond the range of any sum of f64s (2^2098 · 2^64 adds) are corrupt.
        if len > 80 {
            return None;
        }
        if len > 0 {
            let lo = unzigzag(get_uvarint(input)?);
            if !(-2..=80).contains(&lo) {
                return None;
            }
            self.lo = lo as i32;
            for _ in 0..len {
                let l = get_uvarint(input)?;
                if l > LIMB_MASK as u64 {
                    return None;
                }
                self.limbs
                    .push(if negative { -(l as i64) } else { l as i64 });
            }
            self.pending = 1;
        }
        Some(())
    }
}

/// The f64 nearest to N · 2^-1074 (ties to even), where N ≥ 0 is held in normalized
/// 32-bit limbs starting at limb index `lo`.
fn round_to_f64(lo: i32, limbs: &[i64]) -> f64 {
    let top = limbs.len() - 1;
    let top_bits = 64 - (limbs[top] as u64).leading_zeros();
    // Bit length of N.
    let len = (lo + top as i32) * LIMB_BITS as i32 + top_bits as i32;
    // The highest 64 bits of N (below them, whether anything is set: the sticky bit).
    let bit = |i: i32| -> u64 {
        // Bit i of N.
        let li = i.div_euclid(LIMB_BITS as i32) - lo;
        if li < 0 || li as usize >= limbs.len() {
            return 0;
        }
        ((limbs[li as usize] as u64) >> i.rem_euclid(LIMB_BITS as i32)) & 1
    };
    if len <= 53 {
        // Exact: a subnormal (len ≤ 52) or the smallest normals, whose bits are N itself.
        let mut v = 0u64;
        for i in (0..len).rev() {
            v = (v << 1) | bit(i);
        }
        return f64::from_bits(v);
    }
    let shift = len - 53;
    let mut mantissa = 0u64;
    for i in (shift..len).rev() {
        mantissa = (mantissa << 1) | bit(i);
    }
    let half = bit(shift - 1) == 1;
    let sticky = sticky_below(lo, limbs, shift - 1);
    let mut shift = shift;
    if half && (sticky || mantissa & 1 == 1) {
        mantissa += 1;
        if mantissa == 1 << 53 {
            mantissa >>= 1;
            shift += 1;
        }
    }
    // mantissa · 2^(shift − 1074) with mantissa in [2^52, 2^53): biased exponent shift + 1.
    let biased = shift as i64 + 1;
    if biased >= 0x7ff {
        return f64::INFINITY;
    }
    f64::from_bits(((biased as u64) << 52) | (mantissa & ((1 << 52) - 1)))
}

/// Whether any bit of N below bit `i` is set.
fn sticky_below(lo: i32, limbs: &[i64], i: i32) -> bool {
    let li = i.div_euclid(LIMB_BITS as i32) - lo;
    if li < 0 {
        return false;
    }
    let li = li as usize;
    if li >= limbs.len() {
        return limbs.iter().any(|&l| l != 0);
    }
    let within = (limbs[li] as u64) & ((1u64 << i.rem_euclid(LIMB_BITS as i32)) - 1);
    within != 0 || limbs[..li].iter().any(|&l| l != 0)
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_uvarint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in input.iter().enumerate().take(10) {
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(v);
        }
    }
    None
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum(xs: &[f64]) -> f64 {
        let mut s = ExactSum::new();
        for &x in xs {
            s.add(x);
        }
        s.value()
    }

    /// A reference: exact rational sum via i128 where the values allow it.
    #[test]
    fn classic_cancellations_are_exact() {
        assert_eq!(sum(&[1e300, 1.0, -1e300]), 1.0);
        assert_eq!(sum(&[0.1; 10]), 1.0); // 10 × fl(0.1) rounded once, as math.fsum
        assert_eq!(sum(&[1e16, 1.0, -1e16]), 1.0);
        assert_eq!(sum(&[f64::MAX, f64::MAX, -f64::MAX]), f64::MAX);
        assert_eq!(sum(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert_eq!(sum(&[-f64::MAX, -f64::MAX]), f64::NEG_INFINITY);
        assert_eq!(sum(&[5e-324, 5e-324]), 1e-323);
        assert_eq!(
            sum(&[2.2250738585072014e-308, -5e-324]),
            2.225073858507201e-308
        );
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(sum(&[1.0, -1.0]), 0.0);
        assert_eq!(sum(&[-3.5]), -3.5);
        // Ties to even: 2^53 + 1 is halfway between 2^53 and 2^53 + 2.
        assert_eq!(sum(&[9007199254740992.0, 1.0]), 9007199254740992.0);
        assert_eq!(sum(&[9007199254740994.0, 1.0]), 9007199254740996.0);
        assert_eq!(sum(&[9007199254740992.0, 1.0, 1e-300]), 9007199254740994.0);
        assert!(sum(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(sum(&[f64::INFINITY, 1.0]), f64::INFINITY);
        assert!(sum(&[f64::NAN, 1.0]).is_nan());
    }

    #[test]
    fn many_adds_propagate_carries() {
        let mut s = ExactSum::new();
        for _ in 0..3_000_000 {
            s.add(0.75);
            s.add(-0.25);
        }
        assert_eq!(s.value(), 1_500_000.0);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
            (-1e6f64..1e6),
            Just(1e300),
            Just(-1e300),
            Just(5e-324),
            Just(0.1),
        ]
    }

    proptest! {
        #[test]
        fn order_and_grouping_never_change_the_bits(
            xs in prop::collection::vec(value(), 0..60),
            cut in 0usize..60,
            seed in any::<u64>(),
        ) {
            let whole = sum(&xs);
            // Reversed, shuffled, and as two merged halves.
            let mut rev = xs.clone();
            rev.reverse();
            prop_assert_eq!(sum(&rev).to_bits(), whole.to_bits());
            let mut shuffled = xs.clone();
            let mut r = seed;
            for i in (1..shuffled.len()).rev() {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (r >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(sum(&shuffled).to_bits(), whole.to_bits());
            let cut = cut.min(xs.len());
            let (mut a, mut b) = (ExactSum::new(), ExactSum::new());
            xs[..cut].iter().for_each(|&x| a.add(x));
            xs[cut..].iter().for_each(|&x| b.add(x));
            b.merge(&a);
            prop_assert_eq!(b.value().to_bits(), whole.to_bits());
            // Encoding round-trips and is canonical.
            let (mut e1, mut e2) = (Vec::new(), Vec::new());
            b.encode(&mut e1);
            let mut c = ExactSum::new();
            xs.iter().for_each(|&x| c.add(x));
            c.encode(&mut e2);
            prop_assert_eq!(&e1, &e2);
            let mut input = e1.as_slice();
            let d = ExactSum::decode(&mut input).unwrap();
            prop_assert!(input.is_empty());
            prop_assert_eq!(d.value().to_bits(), whole.to_bits());
        }

        #[test]
        fn small_integers_sum_as_integers(xs in prop::collection::vec(-1_000_000i64..1_000_000, 0..100)) {
            let f: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
            prop_assert_eq!(sum(&f), xs.iter().sum::<i64>() as f64);
        }

        #[test]
        fn a_sum_rounds_like_the_exact_rational(a in any::<i64>(), b in any::<i64>(), e in -60i32..60) {
            // a·2^e + b·2^e is exact in i128, then one rounding.
            let scale = 2f64.powi(e);
            let (x, y) = (a as f64 * scale, b as f64 * scale);
            // x and y are already rounded; their exact sum is (x/scale + y/scale)·scale.
            let exact = (x / scale) as i128 + (y / scale) as i128;
            let want = (exact as f64) * scale; // i128 → f64 rounds to nearest, ties even
            prop_assert_eq!(sum(&[x, y]).to_bits(), want.to_bits());
        }
    }
}
