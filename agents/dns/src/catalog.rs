//! [`Catalog`]: every origin this server answers for, built from the Zone objects in one
//! pass and swapped in whole, so a query never sees half a change.
//!
//! A zone is compiled only at a serial the zone controller has given it (its status serial
//! for the spec generation it observed): what is served always matches its serial. A zone
//! that does not compile, or that conflicts with an older zone of another namespace, keeps
//! being served as it last compiled, and the report says why the new data is not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hickory_proto::rr::Name;
use keel_runtime::ObjectExt;
use keel_schemas::kinds::dns::Zone;
use serde::Serialize;

use super::zone::{Authority, compile};

/// The origins served, by lower-case name.
#[derive(Debug, Default)]
pub struct Catalog {
    authorities: HashMap<Name, Arc<Authority>>,
}

/// What the server serves of one zone, as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneReport {
    /// The serial served (absent: nothing served yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<u32>,
    /// Why the zone's current data is not served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A zone as compiled at one serial: its authorities.
type Served = (u32, Arc<Vec<Arc<Authority>>>);

/// Compiled zones kept between builds: by uid, the serial and authorities last compiled.
#[derive(Default)]
pub struct Compiled {
    zones: HashMap<String, Served>,
}

// === impl Catalog ===

impl Catalog {
    /// The authority for `name` (lower case): the served origin that is its longest suffix.
    pub fn find(&self, name: &Name) -> Option<&Authority> {
        (0..=name.num_labels())
            .rev()
            .find_map(|n| self.authorities.get(&name.trim_to(n as usize)))
            .map(Arc::as_ref)
    }

    /// How many origins are served.
    pub fn len(&self) -> usize {
        self.authorities.len()
    }

    /// Whether nothing is served.
    pub fn is_empty(&self) -> bool {
        self.authorities.is_empty()
    }

    /// Builds the catalog of `zones`, reusing what `compiled` has; returns it with a report
    /// per zone (`namespace/name`).
    pub fn build(
        zones: &[Arc<Zone>],
        compiled: &mut Compiled,
    ) -> (Catalog, BTreeMap<String, ZoneReport>) {
        let mut zones: Vec<&Arc<Zone>> = zones.iter().collect();
        // The oldest zone keeps a contested domain.
        zones.sort_by_key(|z| {
            (
                z.creation_timestamp(),
                z.namespace().unwrap_or(""),
                z.name(),
            )
        });
        let mut catalog = Catalog::default();
        let mut owners: HashMap<Name, (String, String)> = HashMap::new();
        let mut reports = BTreeMap::new();
        let mut live = HashMap::new();
        for zone in zones {
            let key = format!("{}/{}", zone.namespace().unwrap_or(""), zone.name());
            let (served, error) = compiled.current(zone);
            if let Some((serial, authorities)) = &served {
                live.insert(zone.uid().to_string(), (*serial, authorities.clone()));
            }
            let mut report = ZoneReport {
                serial: None,
                error,
            };
            if let Some((serial, authorities)) = served {
                let namespace = zone.namespace().unwrap_or("").to_string();
                match conflict(&authorities, &namespace, &owners) {
                    Some(why) => report.error = Some(why),
                    None => {
                        for a in authorities.iter() {
                            owners.insert(a.origin.clone(), (namespace.clone(), key.clone()));
                            catalog.authorities.insert(a.origin.clone(), a.clone());
                        }
                        report.serial = Some(serial);
                    }
                }
            }
            reports.insert(key, report);
        }
        compiled.zones = live;
        (catalog, reports)
    }
}

/// Why `authorities` cannot be served next to the zones already taken: the same origin, or
/// one nested in another namespace's.
fn conflict(
    authorities: &[Arc<Authority>],
    namespace: &str,
    owners: &HashMap<Name, (String, String)>,
) -> Option<String> {
    for a in authorities {
        for (origin, (ns, zone)) in owners {
            if *origin == a.origin {
                return Some(format!(
                    "{} is already served by the older zone {zone}",
                    a.origin
                ));
            }
            if ns != namespace && (origin.zone_of(&a.origin) || a.origin.zone_of(origin)) {
                return Some(format!(
                    "{} and {origin} of zone {zone} (namespace {ns}) nest; zones of different namespaces cannot",
                    a.origin
                ));
            }
        }
    }
    None
}

// === impl Compiled ===

impl Compiled {
    /// The zone as it should be served: compiled now if the controller has given its
    /// current spec a serial, else as last compiled; and why its current data is not served.
    fn current(&mut self, zone: &Zone) -> (Option<Served>, Option<String>) {
        let last = self.zones.get(zone.uid()).cloned();
        let status = zone.status.as_ref();
        let serial = status.and_then(|s| s.serial);
        let observed = status.and_then(|s| s.observed_generation);
        let generation = zone.metadata.generation;
        let Some(serial) = serial.filter(|_| observed == generation) else {
            return (last, None);
        };
        if let Some((s, authorities)) = &last
            && *s == serial
        {
            return (Some((*s, authorities.clone())), None);
        }
        match compile(zone) {
            Ok(authorities) => (
                Some((
                    serial,
                    Arc::new(authorities.into_iter().map(Arc::new).collect()),
                )),
                None,
            ),
            Err(e) => (last, Some(format!("serial {serial} cannot be served: {e}"))),
        }
    }
}
