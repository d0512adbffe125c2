//! The Merkle append as the audit indexer does it: leaves pushed into the
//! on-disk tree (every level's new nodes), then written in one flush per
//! group commit. `cargo bench -p semel-store`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use semel_store::tree::Tree;

fn leaf(i: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&i.to_be_bytes());
    h
}

fn merkle_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tree = Tree::open(dir.path()).expect("open the tree");
    // A tree of a million leaves, as after some days of traffic.
    for i in 0..1_000_000 {
        tree.push(leaf(i)).expect("push");
    }
    tree.flush().expect("flush");
    let mut next = tree.size();
    c.bench_function("merkle_append_one", |b| {
        b.iter(|| {
            tree.push(black_box(leaf(next))).expect("push");
            next += 1;
            // Written now and then, so the benchmark's memory stays flat.
            if next.is_multiple_of(65_536) {
                tree.flush().expect("flush");
            }
        })
    });
    tree.flush().expect("flush");
    // One group commit's worth (ten entries, as measured at concurrency
    // 64), written to the level files; syncs happen only at checkpoints.
    c.bench_function("merkle_append_batch_of_10_with_write", |b| {
        b.iter(|| {
            for _ in 0..10 {
                tree.push(leaf(next)).expect("push");
                next += 1;
            }
            tree.flush().expect("flush");
        })
    });
}

criterion_group!(benches, merkle_append);
criterion_main!(benches);
