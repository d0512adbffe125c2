//! The mutation queues: dense positions per consumer, one acceptance
//! per event id, acknowledgements bounded by delivery, retention.

use super::kbo;
use crate::{Accepted, Expired, MutationStore, QueueState, Routed, StorageError};

fn routed(consumer: &str, payload: &[u8]) -> Routed {
    Routed {
        consumer: kbo(consumer),
        payload: payload.to_vec(),
    }
}

/// The key of an event id (the store never sees the id itself).
fn key(id: &str) -> [u8; 32] {
    semel_core::mutation::event_key(&kbo(SOURCE), id)
}

const SOURCE: &str = "0207373429";
const DIGEST: [u8; 32] = [7; 32];
const CPAS: &str = "0566988259";
const OTHER: &str = "0316381039";

pub async fn changes_queue_densely_per_consumer_and_once_per_event_id(store: &dyn MutationStore) {
    let source = kbo(SOURCE);
    assert_eq!(
        store
            .queue_state(&kbo(CPAS))
            .await
            .expect("the store answers"),
        QueueState::default()
    );
    let a = store
        .accept(
            &source,
            &key("e1"),
            &DIGEST,
            1_000,
            &[routed(CPAS, b"one"), routed(OTHER, b"uno")],
        )
        .await
        .expect("the store answers");
    assert_eq!(a, Accepted::New);
    let again = store
        .accept(
            &source,
            &key("e1"),
            &DIGEST,
            2_000,
            &[routed(CPAS, b"changed")],
        )
        .await
        .expect("the store answers");
    assert_eq!(again, Accepted::Duplicate, "an event id is accepted once");
    // Another source may use the same id.
    assert_eq!(
        store
            .accept(
                &kbo(OTHER),
                &key("e1"),
                &DIGEST,
                2_500,
                &[routed(CPAS, b"other source")]
            )
            .await
            .expect("the store answers"),
        Accepted::New
    );
    store
        .accept(&source, &key("e2"), &DIGEST, 3_000, &[routed(CPAS, b"two")])
        .await
        .expect("the store answers");
    store
        .accept(&source, &key("e3"), &DIGEST, 4_000, &[])
        .await
        .expect("the store answers");
    let q = store
        .pending(&kbo(CPAS), 0, 10)
        .await
        .expect("the store answers");
    let got: Vec<(u64, i64, &[u8])> = q
        .iter()
        .map(|e| (e.position, e.accepted_micros, e.payload.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 1_000, &b"one"[..]),
            (2, 2_500, &b"other source"[..]),
            (3, 3_000, &b"two"[..])
        ]
    );
    assert_eq!(
        store
            .pending(&kbo(CPAS), 1, 1)
            .await
            .expect("the store answers")[0]
            .position,
        2
    );
    assert!(
        store
            .pending(&kbo(CPAS), 3, 10)
            .await
            .expect("the store answers")
            .is_empty()
    );
    let other = store
        .pending(&kbo(OTHER), 0, 10)
        .await
        .expect("the store answers");
    assert_eq!(other.len(), 1);
    assert_eq!(
        (other[0].position, other[0].payload.as_slice()),
        (1, &b"uno"[..])
    );
    assert_eq!(
        store
            .queue_state(&kbo(CPAS))
            .await
            .expect("the store answers")
            .head,
        3
    );
}

pub async fn acknowledgements_drop_what_was_delivered_and_no_more(store: &dyn MutationStore) {
    let (source, cpas) = (kbo(SOURCE), kbo(CPAS));
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        store
            .accept(
                &source,
                &key(id),
                &DIGEST,
                i as i64,
                &[routed(CPAS, id.as_bytes())],
            )
            .await
            .expect("the store answers");
    }
    match store.acknowledge(&cpas, 1).await {
        Err(StorageError::OutOfRange(_)) => {}
        other => panic!("an acknowledgement beyond delivery must be refused: {other:?}"),
    }
    store
        .delivered(&cpas, 0, 2)
        .await
        .expect("the store answers");
    // Delivery cannot run past the head.
    store
        .delivered(&cpas, 2, 99)
        .await
        .expect("the store answers");
    assert_eq!(
        store
            .queue_state(&cpas)
            .await
            .expect("the store answers")
            .delivered,
        3
    );
    let a = store
        .acknowledge(&cpas, 2)
        .await
        .expect("the store answers");
    let s = a.state;
    assert_eq!((s.head, s.delivered, s.acknowledged), (3, 3, 2));
    assert_eq!((a.previous, a.dropped), (0, 2));
    let left: Vec<u64> = store
        .pending(&cpas, 0, 10)
        .await
        .expect("the store answers")
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(left, vec![3], "acknowledged changes are dropped");
    // An older acknowledgement changes nothing.
    let a = store
        .acknowledge(&cpas, 1)
        .await
        .expect("the store answers");
    assert_eq!((a.state.acknowledged, a.previous, a.dropped), (2, 2, 0));
    let a = store
        .acknowledge(&cpas, 3)
        .await
        .expect("the store answers");
    assert_eq!((a.state.acknowledged, a.previous, a.dropped), (3, 2, 1));
    assert!(
        store
            .pending(&cpas, 0, 10)
            .await
            .expect("the store answers")
            .is_empty()
    );
    // Positions go on after the queue emptied.
    store
        .accept(&source, &key("d"), &DIGEST, 9, &[routed(CPAS, b"d")])
        .await
        .expect("the store answers");
    assert_eq!(
        store
            .pending(&cpas, 0, 10)
            .await
            .expect("the store answers")[0]
            .position,
        4
    );
}

pub async fn a_withheld_change_leaves_a_hole_and_ids_are_known(store: &dyn MutationStore) {
    let (source, cpas) = (kbo(SOURCE), kbo(CPAS));
    assert_eq!(
        store
            .known(&source, &key("x"))
            .await
            .expect("the store answers"),
        None
    );
    for id in ["x", "y"] {
        store
            .accept(
                &source,
                &key(id),
                &DIGEST,
                1,
                &[routed(CPAS, id.as_bytes())],
            )
            .await
            .expect("the store answers");
    }
    assert_eq!(
        store
            .known(&source, &key("x"))
            .await
            .expect("the store answers"),
        Some(DIGEST),
        "the digest comes back"
    );
    assert_eq!(
        store
            .known(&kbo(OTHER), &key("x"))
            .await
            .expect("the store answers"),
        None
    );
    store.withhold(&cpas, 1).await.expect("the store answers");
    let left: Vec<u64> = store
        .pending(&cpas, 0, 10)
        .await
        .expect("the store answers")
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(left, vec![2], "the hole is skipped");
    // The next change takes the next position, never the hole's.
    store
        .accept(&source, &key("z"), &DIGEST, 2, &[routed(CPAS, b"z")])
        .await
        .expect("the store answers");
    assert_eq!(
        store
            .queue_state(&cpas)
            .await
            .expect("the store answers")
            .head,
        3
    );
}

pub async fn changes_published_at_once_get_dense_positions(store: &dyn MutationStore) {
    let source = kbo(SOURCE);
    let ids: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
    // Each consumer its own payload, given in either order.
    let routes: Vec<Vec<Routed>> = (0..16)
        .map(|i| {
            let both = vec![routed(CPAS, b"for cpas"), routed(OTHER, b"for other")];
            if i % 2 == 0 {
                both
            } else {
                both.into_iter().rev().collect()
            }
        })
        .collect();
    let keys: Vec<[u8; 32]> = ids.iter().map(|id| key(id)).collect();
    let all = keys
        .iter()
        .zip(&routes)
        .map(|(k, routed)| store.accept(&source, k, &DIGEST, 5, routed));
    for a in futures_join_all(all).await {
        assert_eq!(a.expect("the store answers"), Accepted::New);
    }
    for (consumer, payload) in [(CPAS, &b"for cpas"[..]), (OTHER, &b"for other"[..])] {
        let queued = store
            .pending(&kbo(consumer), 0, 100)
            .await
            .expect("the store answers");
        let mut positions: Vec<u64> = queued.iter().map(|e| e.position).collect();
        positions.sort_unstable();
        assert_eq!(positions, (1..=16).collect::<Vec<u64>>(), "{consumer}");
        assert!(
            queued.iter().all(|e| e.payload == payload),
            "each consumer gets its own payload"
        );
    }
}

/// A consumer that reads after a position it was never sent (a pull's
/// `after` ahead of its delivery) is not thereby sent what it skipped:
/// delivery moves only from where it stands, so that an
/// acknowledgement can never drop changes nobody was sent.
pub async fn delivery_advances_only_contiguously(store: &dyn MutationStore) {
    let (source, cpas) = (kbo(SOURCE), kbo(CPAS));
    for (i, id) in ["p", "q", "r", "s"].iter().enumerate() {
        store
            .accept(
                &source,
                &key(id),
                &DIGEST,
                i as i64,
                &[routed(CPAS, id.as_bytes())],
            )
            .await
            .expect("the store answers");
    }
    let delivered = async || {
        store
            .queue_state(&cpas)
            .await
            .expect("the store answers")
            .delivered
    };
    // A page read after 3 (positions 1 to 3 unseen) delivers nothing.
    store
        .delivered(&cpas, 3, 4)
        .await
        .expect("the store answers");
    assert_eq!(delivered().await, 0, "a page read ahead delivers nothing");
    match store.acknowledge(&cpas, 4).await {
        Err(StorageError::OutOfRange(_)) => {}
        other => panic!("changes never sent must not be acknowledged: {other:?}"),
    }
    // From the start, then on from where delivery stands.
    store
        .delivered(&cpas, 0, 2)
        .await
        .expect("the store answers");
    assert_eq!(delivered().await, 2);
    store
        .delivered(&cpas, 2, 4)
        .await
        .expect("the store answers");
    assert_eq!(delivered().await, 4);
    // A page read again from before it moves nothing back.
    store
        .delivered(&cpas, 0, 1)
        .await
        .expect("the store answers");
    assert_eq!(delivered().await, 4);
    let a = store
        .acknowledge(&cpas, 4)
        .await
        .expect("the store answers");
    assert_eq!((a.state.acknowledged, a.dropped), (4, 4));
}

/// Polls every future until all are done (the port knows no runtime).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut all = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(done.iter_mut().map(|d| d.take().expect("done")).collect())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

pub async fn expired_changes_are_reported_lost(store: &dyn MutationStore) {
    let (source, cpas, other) = (kbo(SOURCE), kbo(CPAS), kbo(OTHER));
    // Position 2 was accepted "earlier" than position 1 (two brokers'
    // clocks): the prefix up to it goes, 1 included.
    for (t, id) in [(20, "old1"), (10, "old2"), (30, "new")] {
        store
            .accept(
                &source,
                &key(id),
                &DIGEST,
                t,
                &[routed(CPAS, id.as_bytes()), routed(OTHER, b"o")],
            )
            .await
            .expect("the store answers");
    }
    store
        .delivered(&other, 0, 2)
        .await
        .expect("the store answers");
    store
        .acknowledge(&other, 2)
        .await
        .expect("the store answers");
    assert_eq!(
        store.expire(15, 15).await.expect("the store answers"),
        vec![Expired {
            consumer: cpas,
            first: 1,
            last: 2,
            dropped: 2
        }],
        "what each consumer lost, and nothing of what was acknowledged"
    );
    let s = store.queue_state(&cpas).await.expect("the store answers");
    assert_eq!((s.head, s.lost_through), (3, 2));
    assert_eq!(
        store
            .pending(&cpas, 0, 10)
            .await
            .expect("the store answers")[0]
            .position,
        3
    );
    // What was lost may be acknowledged, to move past the notice.
    let a = store
        .acknowledge(&cpas, 2)
        .await
        .expect("lost positions acknowledged");
    assert_eq!((a.state.acknowledged, a.dropped), (2, 0));
    // What was acknowledged was not lost.
    assert_eq!(
        store
            .queue_state(&other)
            .await
            .expect("the store answers")
            .lost_through,
        0
    );
    // Event ids are forgotten on their own horizon only.
    let known = async |id: &str| {
        store
            .known(&source, &key(id))
            .await
            .expect("the store answers")
    };
    assert!(known("old1").await.is_some());
    assert_eq!(
        store.expire(15, 25).await.expect("the store answers"),
        vec![],
        "nothing more to drop"
    );
    assert!(known("old1").await.is_none());
    assert!(known("new").await.is_some());
    assert_eq!(
        store
            .accept(&source, &key("old1"), &DIGEST, 40, &[])
            .await
            .expect("the store answers"),
        Accepted::New
    );
}
