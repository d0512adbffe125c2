//! Mutations survive the broker: SIGKILL `semel demo` while a source
//! publishes and a consumer receives and acknowledges, start it again on
//! the same data directory, and check that no change whose publication was
//! answered is lost, that delivery resumes after the last acknowledgement
//! in order, and that positions have no gap.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use semel_client::NewMutation;

mod demo_process;
use demo_process::{connect, start};

fn a_move(i: u64) -> NewMutation {
    NewMutation {
        event_id: format!("move-{i}"),
        dataset: "national_register.residence".into(),
        citizen: "93051822361".into(),
        kind: "changed".into(),
        effective_date: String::new(),
        fields: vec![format!("house_number={i}")],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_loses_no_published_change_and_leaves_no_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = start(dir.path());
    let source = connect(&mut child, dir.path(), "national-register").await;
    let consumer = connect(&mut child, dir.path(), "cpas-anderlecht").await;
    // Published (answered) event ids, and (position, event id) received and
    // acknowledged by the consumer.
    let published: Arc<Mutex<Vec<String>>> = Arc::default();
    let acknowledged: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let publisher = {
        let published = published.clone();
        tokio::spawn(async move {
            for i in 0.. {
                match source.publish_mutations(vec![a_move(i)]).await {
                    Ok(_) => published.lock().expect("lock").push(format!("move-{i}")),
                    Err(_) => return,
                }
            }
        })
    };
    let subscriber = {
        let acknowledged = acknowledged.clone();
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let Ok(mut s) = consumer.subscribe(0).await else {
                return;
            };
            while let Ok(Some(e)) = s.next().await {
                let position = e["position"].as_u64().expect("position");
                let id = e["source_event_id"].as_str().expect("id").to_owned();
                // Recorded when received: the kill may come while the
                // acknowledgement is on its way, after the broker made it
                // durable and before the answer arrives.
                acknowledged.lock().expect("lock").push((position, id));
                if consumer.acknowledge_mutations(position).await.is_err() {
                    return;
                }
            }
        })
    };
    while acknowledged.lock().expect("lock").len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let _ = publisher.await;
    let _ = subscriber.await;
    let published = published.lock().expect("lock").clone();
    let before = acknowledged.lock().expect("lock").clone();
    assert!(published.len() >= 100);
    // In order before the kill.
    assert!(before.windows(2).all(|w| w[0].0 < w[1].0), "{before:?}");

    // Start again; the consumer resumes after its last acknowledgement.
    let mut child = start(dir.path());
    let consumer = connect(&mut child, dir.path(), "cpas-anderlecht").await;
    let mut after: Vec<(u64, String)> = Vec::new();
    loop {
        let page = consumer
            .pull_mutations(0, 1000, 1)
            .await
            .expect("pull after the restart");
        assert!(page["lost"].is_null(), "nothing expired: {page}");
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            break;
        }
        let last = events.last().expect("one")["position"]
            .as_u64()
            .expect("position");
        for e in &events {
            after.push((
                e["position"].as_u64().expect("position"),
                e["source_event_id"].as_str().expect("id").to_owned(),
            ));
        }
        consumer.acknowledge_mutations(last).await.expect("ack");
    }
    let last_acked = before.last().map_or(0, |p| p.0);
    // Resumed right after the last acknowledgement (an acknowledgement the
    // broker confirmed is never undone), in order, without a gap.
    if let Some(first) = after.first() {
        assert!(
            first.0 <= last_acked + 1,
            "a gap after {last_acked}: {first:?}"
        );
    }
    let mut positions: Vec<u64> = before.iter().chain(&after).map(|p| p.0).collect();
    positions.sort();
    positions.dedup();
    let expected: Vec<u64> = (1..=positions.len() as u64).collect();
    assert_eq!(positions, expected, "positions are dense");
    // Every change whose publication was answered reached the consumer.
    let received: std::collections::HashSet<&String> =
        before.iter().chain(&after).map(|p| &p.1).collect();
    let lost: Vec<&String> = published
        .iter()
        .filter(|id| !received.contains(id))
        .collect();
    assert!(lost.is_empty(), "published but never delivered: {lost:?}");
    child.kill().expect("stop");
    let _ = child.wait();
}
