//! Benchmarks of the fault path, reclaim and metadata size (`cargo bench -p mmu`), against
//! `sim::SimHost`. Figures are recorded in `mmu/README.md`.
//!
//! Every fault is preceded by `topup`, as in microhv's exit path, so cache refills (which
//! allocate and zero frames) are included, amortised, in the per-fault times.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use mmu::sim::SimHost;
use mmu::{Access, Config, FaultOutcome, Format, MIN_MMU_PAGES, Mmu, SP_HEADER_BYTES};

const HPA: u64 = 0x40_0000_0000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const EPT_4K: Config = Config { format: Format::Ept, large_2m: false, large_1g: false };
const EPT_2M: Config = Config { format: Format::Ept, large_2m: true, large_1g: false };

fn domain(cfg: Config, size: u64, h: &mut SimHost) -> Mmu {
    let mut m = Mmu::new(cfg);
    m.add_slot(h, 0, 0, size, HPA, 0).unwrap();
    m.set_requested_pages(h, mmu::MAX_MMU_PAGES).unwrap();
    m.acquire_root(h, 0).unwrap();
    m
}

#[inline]
fn fault(m: &mut Mmu, h: &mut SimHost, gpa: u64) -> FaultOutcome {
    m.topup(h).unwrap();
    m.page_fault(h, 0, gpa, Access::WRITE).unwrap()
}

/// Warm: every table exists, the leaf does not.
fn warm_4k(c: &mut Criterion) {
    let mut h = SimHost::new(1 << 22);
    let mut m = domain(EPT_4K, GIB, &mut h);
    for r in 0..512 {
        fault(&mut m, &mut h, r * 2 * MIB);
    }
    let pages = (GIB >> 12) - 512;
    c.bench_function("fault/warm_4k", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // Drop the leaves (not the tables) outside the timed region, then fault
                // pages that are missing: every page except the first of each 2 MiB.
                m.zap_gfn_range(&mut h, 0, GIB).unwrap();
                for r in 0..512 {
                    fault(&mut m, &mut h, r * 2 * MIB);
                }
                let n = (iters - done).min(pages);
                let start = Instant::now();
                for i in 0..n {
                    let page = i + i / 511 + 1;
                    black_box(fault(&mut m, &mut h, page << 12));
                }
                t += start.elapsed();
                done += n;
            }
            t
        })
    });
    m.destroy(&mut h);
}

/// Cold: the leaf's level-1 table is missing (a fresh 2 MiB region), or every table below
/// the root is (a domain's first fault).
fn cold_4k(c: &mut Criterion) {
    let mut h = SimHost::new(1 << 22);
    let mut m = domain(EPT_4K, GIB, &mut h);
    c.bench_function("fault/cold_4k_one_table", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                for r in 0..512 {
                    m.zap_table(&mut h, r * 2 * MIB, 1).unwrap();
                }
                // Keep the level-3 and level-2 tables.
                fault(&mut m, &mut h, 0);
                m.zap_table(&mut h, 0, 1).unwrap();
                let n = (iters - done).min(512);
                let start = Instant::now();
                for r in 0..n {
                    black_box(fault(&mut m, &mut h, r * 2 * MIB + 0x5000));
                }
                t += start.elapsed();
                done += n;
            }
            t
        })
    });
    m.destroy(&mut h);

    // One slot in each of 32 distinct 512 GiB regions: the first fault in each builds the
    // level-3, level-2 and level-1 tables. Between rounds everything is zapped and the root
    // reloaded, outside the timed region.
    let mut h = SimHost::new(1 << 22);
    let mut m = Mmu::new(EPT_4K);
    let region = 512 * GIB;
    for s in 0..mmu::MAX_SLOTS as u64 {
        m.add_slot(&mut h, s as usize, s * region, 2 * MIB, HPA + s * 2 * MIB, 0).unwrap();
    }
    m.set_requested_pages(&mut h, mmu::MAX_MMU_PAGES).unwrap();
    m.acquire_root(&mut h, 0).unwrap();
    c.bench_function("fault/cold_4k_three_tables", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                m.zap_all(&mut h).unwrap();
                m.reload_root(&mut h, 0).unwrap();
                let n = (iters - done).min(mmu::MAX_SLOTS as u64);
                let start = Instant::now();
                for s in 0..n {
                    black_box(fault(&mut m, &mut h, s * region + 0x3000));
                }
                t += start.elapsed();
                done += n;
            }
            t
        })
    });
    m.destroy(&mut h);
}

/// 2 MiB: a large leaf in a fresh 2 MiB region, upper tables present.
fn fault_2m(c: &mut Criterion) {
    let mut h = SimHost::new(1 << 22);
    let mut m = domain(EPT_2M, 4 * GIB, &mut h);
    c.bench_function("fault/2m", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                m.zap_gfn_range(&mut h, 0, 4 * GIB).unwrap();
                for g in 0..4 {
                    fault(&mut m, &mut h, g * GIB);
                }
                m.zap_gfn_range(&mut h, 0, 4 * GIB).unwrap();
                let n = (iters - done).min(2048);
                let start = Instant::now();
                for r in 0..n {
                    black_box(fault(&mut m, &mut h, r * 2 * MIB + 0x7000));
                }
                t += start.elapsed();
                done += n;
            }
            t
        })
    });
    m.destroy(&mut h);
}

/// Reclaim: 10,000 pages in use, the limit drops to the floor.
fn reclaim(c: &mut Criterion) {
    let mut g = c.benchmark_group("reclaim");
    g.sample_size(10);
    for (name, leaves_per_table) in
        [("sparse_1_leaf_per_table", 1u64), ("dense_512_leaves_per_table", 512)]
    {
        // root + L3 + 20 L2 + 9,978 L1 = 10,000
        let tables = 9_978u64;
        g.throughput(Throughput::Elements(10_000 - MIN_MMU_PAGES));
        g.bench_with_input(
            BenchmarkId::new("10000_to_floor", name),
            &leaves_per_table,
            |b, &per| {
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let mut h = SimHost::new(1 << 23);
                        let mut m = domain(EPT_4K, tables * 2 * MIB, &mut h);
                        for r in 0..tables {
                            for p in 0..per {
                                fault(&mut m, &mut h, r * 2 * MIB + p * 4096);
                            }
                        }
                        assert_eq!(m.n_used(), 10_000);
                        let start = Instant::now();
                        m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
                        t += start.elapsed();
                        assert_eq!(m.n_used(), MIN_MMU_PAGES);
                        m.destroy(&mut h);
                    }
                    t
                })
            },
        );
    }
    g.finish();
}

/// Metadata per shadow page and per GiB mapped with 4 KiB pages, computed and printed.
fn metadata() {
    let mut h = SimHost::new(1 << 22);
    let mut m = domain(EPT_4K, GIB, &mut h);
    for p in 0..(GIB >> 12) {
        fault(&mut m, &mut h, p << 12);
    }
    let tables = m.n_used();
    let meta = m.metadata_bytes();
    println!("metadata: {SP_HEADER_BYTES} B per shadow page (its header)");
    println!(
        "metadata: 1 GiB mapped with 4 KiB pages: {tables} tables ({} KiB of tables), {} KiB of \
         metadata: the level-1 rmap ({} KiB, 8 B per guest page), headers, large-page words, \
         the fixed 16 KiB hash and {} KiB of cached frames",
        tables * 4,
        meta / 1024,
        (GIB >> 12) * 8 / 1024,
        m.cached_frames() * 4,
    );
    println!("metadata: size_of::<Mmu>() = {} B", std::mem::size_of::<Mmu>());
    m.destroy(&mut h);
}

fn main() {
    metadata();
    let mut c = Criterion::default().measurement_time(Duration::from_secs(3)).configure_from_args();
    warm_4k(&mut c);
    cold_4k(&mut c);
    fault_2m(&mut c);
    reclaim(&mut c);
    c.final_summary();
}
