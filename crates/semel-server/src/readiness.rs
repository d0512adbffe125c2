//! Why a broker should not be sent lookups now, besides its audit log
//! failing: conditions that components set and clear (the registry not
//! confirmed fresh, the database not answering, witnesses not reached),
//! each under its own name. Health reports NOT_SERVING while any holds.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The conditions that hold now, by name.
#[derive(Debug, Default)]
pub struct Readiness {
    conditions: Mutex<BTreeMap<&'static str, String>>,
}

impl Readiness {
    /// Sets (`Some`) or clears (`None`) the condition `name`; says so in the
    /// log when it changes.
    pub fn set(&self, name: &'static str, why: Option<String>) {
        let mut conditions = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(why) => {
                if conditions.get(name) != Some(&why) {
                    tracing::warn!(condition = name, reason = %why, "broker not ready");
                    conditions.insert(name, why);
                }
            }
            None => {
                if conditions.remove(name).is_some() {
                    tracing::info!(condition = name, "broker ready again");
                }
            }
        }
    }

    /// Whether the condition `name` holds.
    pub fn holds(&self, name: &str) -> bool {
        self.conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// Every condition that holds, as one sentence (`None`: ready).
    pub fn why(&self) -> Option<String> {
        let conditions = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        (!conditions.is_empty()).then(|| {
            conditions
                .iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_hold_until_cleared() {
        let r = Readiness::default();
        assert_eq!(r.why(), None);
        r.set("database", Some("PostgreSQL does not answer".into()));
        r.set("registry", Some("not confirmed for 6 s".into()));
        assert!(r.holds("database"));
        assert_eq!(
            r.why().as_deref(),
            Some("database: PostgreSQL does not answer; registry: not confirmed for 6 s")
        );
        r.set("database", None);
        assert!(!r.holds("database"));
        r.set("registry", None);
        assert_eq!(r.why(), None);
    }
}
