//! One version of the registry as a [`FeatureStore`](crate::FeatureStore) uses it: the
//! state, and the online read plans compiled from it on first use.

use std::sync::{Arc, Mutex};

use hashbrown::{Equivalent, HashMap};

use quiver_online::ReadPlan;
use quiver_registry::RegistryState;

use crate::store::Stamp;
use crate::{Error, Result};

/// What a plan is compiled for: a feature service or a feature list, and whether outputs
/// use full names.
#[derive(Hash, PartialEq, Eq)]
struct PlanKey {
    service: Option<String>,
    features: Vec<String>,
    full_names: bool,
}

/// A [`PlanKey`] borrowed from a request, to look a plan up without copying the
/// request's names (it hashes as the owned key does: a `String` as its `str`, a `Vec`
/// as its slice).
#[derive(Hash)]
struct PlanKeyRef<'a> {
    service: Option<&'a str>,
    features: &'a [String],
    full_names: bool,
}

impl Equivalent<PlanKey> for PlanKeyRef<'_> {
    fn equivalent(&self, key: &PlanKey) -> bool {
        self.service == key.service.as_deref()
            && self.features == key.features.as_slice()
            && self.full_names == key.full_names
    }
}

/// Plans kept per snapshot; past this the cache starts over (ad-hoc feature lists are
/// unbounded in principle).
const MAX_PLANS: usize = 1024;

/// The registry state and the read plans compiled from it.
pub struct Snapshot {
    pub state: Arc<RegistryState>,
    pub(crate) stamp: Stamp,
    plans: Mutex<HashMap<PlanKey, Arc<ReadPlan>>>,
}

impl Snapshot {
    pub(crate) fn new(state: RegistryState, stamp: Stamp) -> Self {
        Snapshot {
            state: Arc::new(state),
            stamp,
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// The read plan of a feature service or of a list of `view:feature` references
    /// (not both), compiled once per snapshot.
    pub fn plan(
        &self,
        service: Option<&str>,
        features: &[String],
        full_names: bool,
    ) -> Result<Arc<ReadPlan>> {
        match (service, features.is_empty()) {
            (Some(_), false) => {
                return Err(Error::Invalid(
                    "give either a feature service or features, not both".into(),
                ))
            }
            (None, true) => {
                return Err(Error::Invalid(
                    "no features requested: give a feature service or features (view:feature)"
                        .into(),
                ))
            }
            _ => {}
        }
        let wanted = PlanKeyRef {
            service,
            features,
            full_names,
        };
        if let Some(p) = self.plans.lock().expect("not poisoned").get(&wanted) {
            return Ok(p.clone());
        }
        let plan = Arc::new(ReadPlan::compile(
            &self.state,
            features,
            service,
            full_names,
        )?);
        let mut plans = self.plans.lock().expect("not poisoned");
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        let key = PlanKey {
            service: service.map(str::to_string),
            features: features.to_vec(),
            full_names,
        };
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Compiles the read plan of every feature service and of every on-demand view's
    /// features (kept for later reads): a registry that cannot serve is an error here,
    /// before it replaces one that can.
    pub(crate) fn check(&self) -> Result<()> {
        for name in self.state.feature_services.keys() {
            self.plan(Some(name), &[], false)?;
        }
        for (name, odfv) in &self.state.on_demand_feature_views {
            let features: Vec<String> = odfv
                .def
                .features
                .iter()
                .map(|f| format!("{name}:{}", f.name))
                .collect();
            if !features.is_empty() {
                self.plan(None, &features, false)?;
            }
        }
        Ok(())
    }

    /// The registry serial.
    pub fn serial(&self) -> u64 {
        self.state.serial
    }
}
