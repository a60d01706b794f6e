//! Criterion bench of `pack::pack_windows` (and `dedup_neighbors`), each against a naive peer in
//! the same run: a per-token push loop into row vectors, then padding and flattening.
//!
//! `cargo bench --bench pack` (add `-- --quick` for a short run). Prints the naive/core ratio.

// A bench stops at its first failure, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use tttnn::pack::{dedup_neighbors, pack_windows_as, PackOptions};

/// The loop one writes first: one push per token into a growing row, rows collected then padded.
fn naive_pack(docs: &[&[u32]], o: &PackOptions) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let l = o.context_length;
    let mut rows: Vec<(Vec<i64>, i64)> = Vec::new();
    let mut open = false;
    for (d, doc) in docs.iter().enumerate() {
        let mut row: Vec<i64> = Vec::new();
        let mut taken = 0;
        for (i, &t) in doc.iter().enumerate() {
            row.push(t as i64);
            if row.len() == l || i + 1 == doc.len() {
                taken += 1;
                let cap_reached = o.max_windows_per_doc.is_some_and(|c| taken >= c);
                let full = row.len() == l;
                let piece = std::mem::take(&mut row);
                if o.pack_short && !full {
                    if let (true, Some(last)) = (open, rows.last_mut()) {
                        if last.0.len() + 1 + piece.len() <= l {
                            last.0.push(o.eos_id.unwrap_or(0) as i64);
                            for &t in &piece {
                                last.0.push(t);
                            }
                            if cap_reached {
                                break;
                            }
                            continue;
                        }
                    }
                    open = true;
                } else {
                    open = false;
                }
                rows.push((piece, d as i64));
                if cap_reached {
                    break;
                }
            }
        }
    }
    let mut ids = Vec::new();
    let mut lengths = Vec::new();
    let mut doc_index = Vec::new();
    for (row, d) in rows {
        lengths.push(row.len() as i64);
        doc_index.push(d);
        let n = row.len();
        for t in row {
            ids.push(t);
        }
        for _ in n..l {
            ids.push(o.pad_id as i64);
        }
    }
    (ids, lengths, doc_index)
}

struct Case {
    name: &'static str,
    docs: Vec<Vec<u32>>,
    opts: PackOptions,
}

fn cases() -> Vec<Case> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut doc = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.gen_range(0..50_000)).collect() };
    let neighbors: Vec<Vec<u32>> = (0..50).map(|_| doc(2000)).collect();
    let short: Vec<Vec<u32>> = (0..10_000).map(|i| doc(20 + (i * 37) % 400)).collect();
    let mut packed = PackOptions::new(1024);
    packed.pack_short = true;
    packed.eos_id = Some(0);
    vec![
        Case {
            name: "50x2000_ctx1024",
            docs: neighbors,
            opts: PackOptions::new(1024),
        },
        Case {
            name: "10k_short_ctx1024",
            docs: short.clone(),
            opts: PackOptions::new(1024),
        },
        Case {
            name: "10k_short_ctx1024_pack_short",
            docs: short,
            opts: packed,
        },
    ]
}

fn time_per_call(mut f: impl FnMut(), budget: Duration) -> Duration {
    f();
    let (start, mut n) = (Instant::now(), 0u32);
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed() / n.max(1)
}

fn words(n: usize, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| format!("w{}", rng.gen_range(0..20_000)))
        .collect()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let cases = cases();
    let mut ratios = Vec::new();
    for case in &cases {
        let refs: Vec<&[u32]> = case.docs.iter().map(|d| d.as_slice()).collect();
        let tokens: usize = refs.iter().map(|d| d.len()).sum();
        assert_eq!(
            {
                let p = pack_windows_as::<i64>(&refs, &case.opts).unwrap();
                (p.input_ids, p.lengths, p.doc_index)
            },
            naive_pack(&refs, &case.opts),
            "core and naive peer disagree on {}",
            case.name
        );
        let mut g = c.benchmark_group("pack_windows");
        g.throughput(Throughput::Elements(tokens as u64));
        g.bench_with_input(BenchmarkId::new("core", case.name), &refs, |b, r| {
            b.iter(|| pack_windows_as::<i64>(black_box(r), &case.opts).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("naive", case.name), &refs, |b, r| {
            b.iter(|| naive_pack(black_box(r), &case.opts))
        });
        g.finish();
        let budget = Duration::from_millis(300);
        let core = time_per_call(
            || {
                black_box(pack_windows_as::<i64>(&refs, &case.opts).unwrap());
            },
            budget,
        );
        let naive = time_per_call(
            || {
                black_box(naive_pack(&refs, &case.opts));
            },
            budget,
        );
        ratios.push((case.name, core, naive));
    }

    // dedup: 50 neighbors of 1,500 words, some of them near copies of the query.
    let query = words(1500, 0);
    let mut cands: Vec<String> = (1..=50).map(|s| words(1500, s).join(" ")).collect();
    let mut near = query.clone();
    near[700] = "edited".into();
    cands[10] = near.join(" ");
    let query = query.join(" ");
    let refs: Vec<&str> = cands.iter().map(|s| s.as_str()).collect();
    c.bench_function("dedup_neighbors/50x1500_words", |b| {
        b.iter(|| dedup_neighbors(black_box(&query), black_box(&refs), 0.9).unwrap())
    });
    c.final_summary();

    println!("\nnaive per-token loop / core (same run, mean per call):");
    for (name, core, naive) in ratios {
        println!(
            "  {name:<30} core {:>9.1} us  naive {:>9.1} us  ratio {:>5.1}x",
            core.as_secs_f64() * 1e6,
            naive.as_secs_f64() * 1e6,
            naive.as_secs_f64() / core.as_secs_f64()
        );
    }
}
