//! The hot-path variants under contention: 1, 2, 8 and 64 tasks on the
//! multi-thread runtime share one layer (one cache), each sending requests one
//! after the other. One iteration is one request from every task, so
//! criterion's throughput (`Throughput::Elements(tasks)`) is requests per
//! second across all tasks.
//!
//! Each task builds every request right before sending it, so the request
//! construction cost (`hot_path/request_only`) is in every number here; the
//! time is wall-clock from the first spawn to the last task's end.
//!
//! Run: `cargo bench --bench contention` (add `-- --quick` for a fast check).

#[path = "hot_path.rs"]
#[allow(dead_code)]
mod hot_path;

use std::fmt::Debug;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;
use tower::Service;

use hot_path::{
    for_each_variant, interleave, median_ns, overhead_cell, send_sequentially, Req, Resp, Runner,
    Variants, VARIANTS,
};

/// How many tasks share one layer.
const TASKS: [usize; 4] = [1, 2, 8, 64];

struct Contention<'g, 'c, 'r> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    rt: &'r Runtime,
}

impl Variants for Contention<'_, '_, '_> {
    fn variant<S>(&mut self, name: &'static str, service: S)
    where
        S: Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Error: Debug,
        S::Future: Send + 'static,
    {
        for tasks in TASKS {
            self.group.throughput(Throughput::Elements(tasks as u64));
            let id = BenchmarkId::new(name, tasks);
            self.group.bench_with_input(id, &tasks, |b, &tasks| {
                b.to_async(self.rt).iter_custom(|iters| {
                    // Every task gets a clone of one service: one shared cache.
                    let services: Vec<S> = (0..tasks).map(|_| service.clone()).collect();
                    async move { run_tasks(services, iters).await }
                })
            });
        }
    }
}

/// Spawns one task per service, each sending `iters` requests; the time until
/// the last one is done.
async fn run_tasks<S>(services: Vec<S>, iters: u64) -> Duration
where
    S: Service<Req, Response = Resp> + Send + 'static,
    S::Error: Debug,
    S::Future: Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = services
        .into_iter()
        .map(|mut service| {
            tokio::spawn(async move { send_sequentially(&mut service, iters).await })
        })
        .collect();
    for handle in handles {
        handle.await.expect("the task does not panic");
    }
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("contention");
    for_each_variant(
        &rt,
        &mut Contention {
            group: &mut group,
            rt: &rt,
        },
    );
    group.finish();
}

/// Prints requests per second per variant and task count, and the overhead
/// per request over `bare` as a multiple of `add_authorization`'s.
fn print_contention_table() {
    let per_request = |id: &str, tasks: usize| {
        median_ns("contention", &format!("{id}/{tasks}")).map(|ns| ns / tasks as f64)
    };
    println!("\ncontention: requests per second (overhead per request over bare, × AddAuthorization's overhead)\n");
    let header: Vec<String> = TASKS.iter().map(|t| format!("{t} tasks")).collect();
    println!("| variant | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(TASKS.len()));
    for id in VARIANTS {
        let cells: Vec<String> = TASKS
            .iter()
            .map(|&tasks| {
                let Some(ns) = per_request(id, tasks) else {
                    return "-".to_owned();
                };
                let rps = 1e9 / ns;
                let (Some(bare), Some(floor)) = (
                    per_request("bare", tasks),
                    per_request("add_authorization", tasks),
                ) else {
                    return format!("{:.2} M/s", rps / 1e6);
                };
                if id == "bare" {
                    return format!("{:.2} M/s", rps / 1e6);
                }
                format!("{:.2} M/s ({})", rps / 1e6, overhead_cell(ns, bare, floor))
            })
            .collect();
        println!("| {id} | {} |", cells.join(" | "));
    }
    println!();
}

/// Collects a [`Runner`] per variant and task count.
struct CollectRunners<'r> {
    rt: &'r Runtime,
    runners: Vec<(String, Runner<'r>)>,
}

/// Requests per round of the interleaved measurement, across all tasks.
const INTERLEAVED_REQUESTS: u64 = 8192;

impl<'r> Variants for CollectRunners<'r> {
    fn variant<S>(&mut self, name: &'static str, service: S)
    where
        S: Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Error: Debug,
        S::Future: Send + 'static,
    {
        for tasks in TASKS {
            let rt = self.rt;
            let service = service.clone();
            let per_task = INTERLEAVED_REQUESTS / tasks as u64;
            let runner: Runner<'r> = Box::new(move || {
                let services = (0..tasks).map(|_| service.clone()).collect();
                let elapsed = rt.block_on(run_tasks(services, per_task));
                elapsed.as_nanos() as f64 / (per_task * tasks as u64) as f64
            });
            self.runners.push((format!("{name}/{tasks}"), runner));
        }
    }
}

/// The same measurement outside criterion: interleaved rounds of 8192
/// requests per variant and task count, robust to load that comes and goes.
fn print_interleaved_contention(rt: &Runtime, rounds: usize) {
    let mut collect = CollectRunners {
        rt,
        runners: Vec::new(),
    };
    for_each_variant(rt, &mut collect);
    let results = interleave(&mut collect.runners, rounds);
    let find = |id: &str, tasks: usize| {
        let key = format!("{id}/{tasks}");
        let at = collect
            .runners
            .iter()
            .position(|(name, _)| *name == key)
            .expect("a runner");
        results[at].0
    };
    println!("contention, interleaved ({rounds} rounds of {INTERLEAVED_REQUESTS} requests per cell; medians): requests per second (overhead per request over bare, × AddAuthorization's overhead)\n");
    let header: Vec<String> = TASKS.iter().map(|t| format!("{t} tasks")).collect();
    println!("| variant | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(TASKS.len()));
    for id in VARIANTS {
        let cells: Vec<String> = TASKS
            .iter()
            .map(|&tasks| {
                let ns = find(id, tasks);
                let rps = format!("{:.2} M/s", 1e3 / ns);
                if id == "bare" {
                    return rps;
                }
                let cell = overhead_cell(ns, find("bare", tasks), find("add_authorization", tasks));
                format!("{rps} ({cell})")
            })
            .collect();
        println!("| {id} | {} |", cells.join(" | "));
    }
    println!();
}

fn main() {
    let mut c = hot_path::criterion();
    contention(&mut c);
    c.final_summary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if hot_path::measuring() {
        print_contention_table();
        print_interleaved_contention(&rt, 15);
    } else {
        print_interleaved_contention(&rt, 1);
    }
}
