//! Micro-benchmarks of the hot paths: decoding live notification frames and stream entries,
//! and the subscription's merge step (publish on the embedded broker, deliver to a subscriber).
//!
//! Run with `cargo bench -p herald --bench hot_paths`. End-to-end figures against raw Redis
//! come from `herald bench`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures::StreamExt;
use herald::{Event, Herald, Message, Start};

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for (count, payload) in [(64usize, 128usize), (64, 4096), (1000, 128)] {
        g.throughput(Throughput::Elements(count as u64));
        let frame = herald::__bench::frame(count, payload);
        g.bench_function(format!("decode_frame/{count}x{payload}B"), |b| {
            b.iter(|| black_box(herald::__bench::decode_frame(frame.clone())))
        });
        let blob = herald::__bench::pieces(count, payload);
        g.bench_function(format!("decode_pieces/{count}x{payload}B"), |b| {
            b.iter(|| black_box(herald::__bench::decode_pieces(blob.clone())))
        });
        g.bench_function(format!("encode_pieces/{count}x{payload}B"), |b| {
            b.iter(|| black_box(herald::__bench::pieces(count, payload)))
        });
    }
    g.finish();
}

fn merge(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a runtime: {e}"),
    };
    let mut g = c.benchmark_group("subscription");
    let batch = 64;
    g.throughput(Throughput::Elements(batch as u64));
    let (node, mut sub) = rt.block_on(async {
        let node = Herald::builder().connect().await.expect("embedded broker");
        let sub = node
            .subscribe(["bench"])
            .from(Start::Latest)
            .await
            .expect("subscribe");
        (node, sub)
    });
    g.bench_function("publish_batch_and_deliver/64x128B", |b| {
        b.iter_batched(
            || {
                (0..batch)
                    .map(|_| Message::new(vec![b'x'; 128]))
                    .collect::<Vec<_>>()
            },
            |messages| {
                rt.block_on(async {
                    node.publish_batch("bench", messages)
                        .await
                        .expect("publish");
                    for _ in 0..batch {
                        match sub.next().await {
                            Some(Ok(Event::Message(d))) => {
                                black_box(d);
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, envelope, merge);
criterion_main!(benches);
