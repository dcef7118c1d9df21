//! The functions an on-demand expression may call, and the `haversine_km` UDF.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Float64Type};
use datafusion_common::utils::take_function_args;
use datafusion_common::{exec_err, Result as DfResult};
use datafusion_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The mean Earth radius used by `haversine_km`, in kilometres (IUGG).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// The great-circle distance in kilometres between two points given in degrees, by the
/// haversine formula on a sphere of radius [`EARTH_RADIUS_KM`].
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// `haversine_km(lat1, lon1, lat2, lon2)`: float64 kilometres; null when any argument
/// is null. Integer and float32 arguments are widened to float64.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HaversineKm {
    signature: Signature,
}

impl HaversineKm {
    fn new() -> Self {
        HaversineKm {
            signature: Signature::uniform(4, vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for HaversineKm {
    fn name(&self) -> &str {
        "haversine_km"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<DfResult<_>>()?;
        let [a, b, c, d] = take_function_args(self.name(), &arrays)?;
        for x in [a, b, c, d] {
            if x.data_type() != &DataType::Float64 {
                return exec_err!(
                    "haversine_km expects float64 arguments, got {}",
                    x.data_type()
                );
            }
        }
        let (a, b, c, d) = (
            a.as_primitive::<Float64Type>(),
            b.as_primitive::<Float64Type>(),
            c.as_primitive::<Float64Type>(),
            d.as_primitive::<Float64Type>(),
        );
        let out: Float64Array = (0..n)
            .map(|i| {
                if a.is_null(i) || b.is_null(i) || c.is_null(i) || d.is_null(i) {
                    None
                } else {
                    Some(haversine_km(a.value(i), b.value(i), c.value(i), d.value(i)))
                }
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The scalar functions available in expressions, by lower-case name (aliases included).
pub(crate) fn registry() -> BTreeMap<String, Arc<ScalarUDF>> {
    use datafusion_functions::{core, math};
    let udfs: Vec<Arc<ScalarUDF>> = vec![
        math::abs(),
        math::ln(),
        math::exp(),
        math::sqrt(),
        math::power(),
        math::round(),
        math::floor(),
        math::ceil(),
        core::least(),
        core::greatest(),
        core::coalesce(),
        core::nullif(),
        Arc::new(ScalarUDF::new_from_impl(HaversineKm::new())),
    ];
    let mut out = BTreeMap::new();
    for f in udfs {
        for alias in f.aliases() {
            out.insert(alias.to_ascii_lowercase(), Arc::clone(&f));
        }
        out.insert(f.name().to_ascii_lowercase(), f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_the_documented_functions() {
        let r = registry();
        for f in [
            "abs",
            "ln",
            "exp",
            "sqrt",
            "pow",
            "power",
            "round",
            "floor",
            "ceil",
            "least",
            "greatest",
            "coalesce",
            "nullif",
            "haversine_km",
        ] {
            assert!(r.contains_key(f), "{f} missing");
        }
        assert!(!r.contains_key("sum"));
    }

    #[test]
    fn haversine_of_one_degree_of_longitude_on_the_equator() {
        let d = haversine_km(0.0, 0.0, 0.0, 1.0);
        assert!((d - EARTH_RADIUS_KM * std::f64::consts::PI / 180.0).abs() < 1e-9);
        assert_eq!(haversine_km(10.0, 20.0, 10.0, 20.0), 0.0);
        // Antipodes: half the circumference, not NaN.
        let half = haversine_km(0.0, 0.0, 0.0, 180.0);
        assert!((half - EARTH_RADIUS_KM * std::f64::consts::PI).abs() < 1e-6);
    }
}
