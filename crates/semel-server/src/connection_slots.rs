//! The connection slots of the broker's two faces, the gRPC port and the
//! HTTP/JSON face: how many connections one address, the peers without a
//! client certificate, and everyone together may hold at once, and how many
//! TLS handshakes may be in progress. Anyone who reaches a port can open
//! connections, so a peer's share is decided when its TCP connection is
//! accepted (by its address) and again when its TLS handshake is done (by
//! whether it showed a certificate); a connection over a cap is closed at
//! once, counted in the face's `…_connections_refused_total` metric and
//! logged at debug level without its address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::RefusedConnectionLabels;
use crate::tls::{Admission, AdmittedSlot, PeerIdentity};

pub use semel_config::settings::ConnectionCaps;

/// Where a face counts its connections: those open, and those closed at
/// once by the cap they would have gone over.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Which face, in the debug log of a refusal.
    pub face: &'static str,
    pub open: Gauge,
    pub refused: Family<RefusedConnectionLabels, Counter>,
}

/// The slots of one face: its caps and what is held of them.
#[derive(Clone)]
pub struct ConnectionSlots(Arc<Slots>);

struct Slots {
    caps: ConnectionCaps,
    held: Mutex<Held>,
    metrics: ConnectionMetrics,
}

#[derive(Default)]
struct Held {
    total: usize,
    without_certificate: usize,
    handshakes: usize,
    by_address: HashMap<IpAddr, ByAddress>,
}

#[derive(Default)]
struct ByAddress {
    all: usize,
    without_certificate: usize,
}

impl ConnectionSlots {
    pub fn new(caps: ConnectionCaps, metrics: ConnectionMetrics) -> ConnectionSlots {
        ConnectionSlots(Arc::new(Slots {
            caps,
            held: Mutex::default(),
            metrics,
        }))
    }
}

impl Slots {
    fn held(&self) -> MutexGuard<'_, Held> {
        // The counts stay consistent under a panic elsewhere: each change
        // is made whole under the lock.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self, reason: &'static str) {
        self.metrics
            .refused
            .get_or_create(&RefusedConnectionLabels { reason })
            .inc();
        // No address: it may name a person's device.
        tracing::debug!(
            face = self.metrics.face,
            cap = reason,
            "connection closed at once: over the cap"
        );
    }
}

/// The key an address is counted under: an IPv4 address, or an IPv6
/// address's /64 (one host commonly holds a whole /64, so counting its
/// addresses one by one would cap nothing).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl Admission for ConnectionSlots {
    fn admit(&self, addr: SocketAddr) -> Option<Box<dyn AdmittedSlot>> {
        let slots = &self.0;
        let address = address_key(addr.ip());
        {
            let mut held = slots.held();
            if held.total >= slots.caps.max_connections {
                drop(held);
                slots.refuse("total");
                return None;
            }
            // A handshake in progress costs the broker its buffers and,
            // once the client speaks, a signature: however many addresses
            // a peer has, only so many at once. (Peers that leave theirs
            // unfinished from many addresses fill it for the handshake's
            // 10 s, as they would fill the cap in all: the default is kept
            // high, and connections already open carry on.)
            if held.handshakes >= slots.caps.handshakes {
                drop(held);
                slots.refuse("handshakes");
                return None;
            }
            let mine = held.by_address.entry(address).or_default();
            if mine.all >= slots.caps.per_address {
                drop(held);
                slots.refuse("per_address");
                return None;
            }
            mine.all += 1;
            held.total += 1;
            held.handshakes += 1;
        }
        slots.metrics.open.inc();
        Some(Box::new(Slot {
            slots: self.0.clone(),
            address,
            handshaking: true,
            without_certificate: false,
        }))
    }
}

/// One connection's slot, released when dropped.
struct Slot {
    slots: Arc<Slots>,
    address: IpAddr,
    handshaking: bool,
    without_certificate: bool,
}

impl Slot {
    /// The handshake is over, whatever its outcome.
    fn handshake_over(&mut self, held: &mut Held) {
        if std::mem::take(&mut self.handshaking) {
            held.handshakes = held.handshakes.saturating_sub(1);
        }
    }
}

impl AdmittedSlot for Slot {
    fn identified(&mut self, peer: &PeerIdentity) -> bool {
        let slots = self.slots.clone();
        let mut held = slots.held();
        self.handshake_over(&mut held);
        if peer.certificate.is_some() || self.without_certificate {
            return true;
        }
        let refused = {
            let total = held.without_certificate;
            let mine = held.by_address.entry(self.address).or_default();
            if mine.without_certificate >= slots.caps.per_address_without_certificate {
                Some("per_address_without_certificate")
            } else if total >= slots.caps.without_certificate {
                Some("without_certificate")
            } else {
                mine.without_certificate += 1;
                held.without_certificate += 1;
                None
            }
        };
        drop(held);
        match refused {
            Some(reason) => {
                slots.refuse(reason);
                false
            }
            None => {
                self.without_certificate = true;
                true
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let slots = self.slots.clone();
            let mut held = slots.held();
            self.handshake_over(&mut held);
            held.total = held.total.saturating_sub(1);
            if self.without_certificate {
                held.without_certificate = held.without_certificate.saturating_sub(1);
            }
            if let Some(mine) = held.by_address.get_mut(&self.address) {
                mine.all = mine.all.saturating_sub(1);
                if self.without_certificate {
                    mine.without_certificate = mine.without_certificate.saturating_sub(1);
                }
                if mine.all == 0 {
                    held.by_address.remove(&self.address);
                }
            }
        }
        self.slots.metrics.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::Metrics;

    fn slots_with(handshakes: usize) -> (ConnectionSlots, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let caps = ConnectionCaps {
            max_connections: 5,
            per_address: 3,
            per_address_without_certificate: 2,
            without_certificate: 3,
            handshakes,
        };
        let counted = ConnectionMetrics {
            face: "test",
            open: metrics.http_connections.clone(),
            refused: metrics.http_connections_refused.clone(),
        };
        (ConnectionSlots::new(caps, counted), metrics)
    }

    fn slots() -> (ConnectionSlots, Arc<Metrics>) {
        slots_with(5)
    }

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("address"), 40_000)
    }

    fn anonymous() -> PeerIdentity {
        PeerIdentity { certificate: None }
    }

    fn refused(metrics: &Metrics, reason: &'static str) -> u64 {
        metrics
            .http_connections_refused
            .get_or_create(&RefusedConnectionLabels { reason })
            .get()
    }

    #[test]
    fn each_cap_closes_the_connection_over_it_and_a_closed_one_frees_its_slot() {
        let (slots, metrics) = slots();
        // Two without a certificate from one address; the third is refused
        // after its handshake, and its slot is given back.
        let mut a = slots.admit(at("192.0.2.1")).expect("first");
        assert!(a.identified(&anonymous()));
        let mut b = slots.admit(at("192.0.2.1")).expect("second");
        assert!(b.identified(&anonymous()));
        let mut c = slots
            .admit(at("192.0.2.1"))
            .expect("third, before its handshake");
        assert!(!c.identified(&anonymous()));
        drop(c);
        assert_eq!(refused(&metrics, "per_address_without_certificate"), 1);
        // The address's third slot is still free, for a handshake that shows
        // a certificate; its fourth is not.
        let held = slots.admit(at("192.0.2.1")).expect("third slot");
        assert!(slots.admit(at("192.0.2.1")).is_none());
        assert_eq!(refused(&metrics, "per_address"), 1);
        // Without a certificate in all: three.
        let mut d = slots.admit(at("192.0.2.2")).expect("another address");
        assert!(d.identified(&anonymous()));
        let mut e = slots.admit(at("192.0.2.2")).expect("its second");
        assert!(!e.identified(&anonymous()));
        assert_eq!(refused(&metrics, "without_certificate"), 1);
        // In all: five (a, b, held, d, e).
        assert!(slots.admit(at("192.0.2.3")).is_none());
        assert_eq!(refused(&metrics, "total"), 1);
        assert_eq!(metrics.http_connections.get(), 5);
        drop((e, held));
        drop(a);
        let mut again = slots.admit(at("192.0.2.1")).expect("a slot freed");
        assert!(again.identified(&anonymous()));
        drop((again, b, d));
        assert_eq!(metrics.http_connections.get(), 0);
        assert!(slots.0.held().by_address.is_empty());
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64_and_a_mapped_ipv4_as_itself() {
        assert_eq!(
            address_key("2001:db8:1:2:aaaa::1".parse().expect("v6")),
            "2001:db8:1:2::".parse::<IpAddr>().expect("v6")
        );
        assert_eq!(
            address_key("::ffff:192.0.2.7".parse().expect("mapped")),
            "192.0.2.7".parse::<IpAddr>().expect("v4")
        );
        let (slots, _) = slots();
        let _held: Vec<_> = (1..=3)
            .map(|i| {
                slots
                    .admit(at(&format!("2001:db8:1:2::{i}")))
                    .expect("within the cap")
            })
            .collect();
        assert!(slots.admit(at("2001:db8:1:2:ffff::9")).is_none());
        assert!(slots.admit(at("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn handshakes_in_progress_are_capped_and_an_ended_one_frees_its_place() {
        let (slots, metrics) = slots_with(2);
        let mut a = slots.admit(at("192.0.2.1")).expect("first handshake");
        let b = slots.admit(at("192.0.2.2")).expect("second handshake");
        assert!(slots.admit(at("192.0.2.3")).is_none());
        assert_eq!(refused(&metrics, "handshakes"), 1);
        // One handshake done, one failed: both places are free again, and
        // the connection that goes on keeps its slot.
        assert!(a.identified(&anonymous()));
        drop(b);
        let _c = slots.admit(at("192.0.2.3")).expect("a place freed");
        let _d = slots.admit(at("192.0.2.4")).expect("the other place");
        assert!(slots.admit(at("192.0.2.5")).is_none());
        assert_eq!(refused(&metrics, "handshakes"), 2);
        assert_eq!(slots.0.held().total, 3);
        drop(a);
        assert_eq!(slots.0.held().total, 2);
        assert_eq!(slots.0.held().handshakes, 2);
    }
}
