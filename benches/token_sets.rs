//! The bounded map of per-tenant token caches, three ways, at 1 to 64 tasks:
//!
//! - `mutex_lru`: one `std::sync::Mutex` over an `lru::LruCache`, the
//!   simplest bounded map;
//! - `quick_cache`: `quick_cache::sync::Cache`, a well-kept concurrent
//!   bounded cache (sharded read locks, CLOCK-Pro eviction): what the crate
//!   uses (`src/token/store.rs`), because it measured best here;
//! - `sharded_16`: the 16-shard `RwLock` map with an approximate LRU that
//!   the crate had before (a faithful copy of its lookup path).
//!
//! Each task looks up token parameters in a loop on the multi-thread runtime
//! (two workers): all tasks one tenant (the worst case for a lock) or each
//! task a tenant of its own. A lookup hashes the parameters, finds the entry
//! and clones its handle (an `Arc`), as a request does. Printed: lookups per
//! second across all tasks, interleaved rounds (medians).
//!
//! Run: `cargo bench --bench token_sets`.

#[path = "hot_path.rs"]
#[allow(dead_code)]
mod hot_path;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tower_propel_auth::TokenParams;

use hot_path::{interleave, Runner};

/// What a lookup hands back: a cache handle, one reference count.
type Handle = Arc<u64>;

const BOUND: usize = 4096;
const TASKS: [usize; 4] = [1, 2, 8, 64];
const LOOKUPS_PER_ROUND: u64 = 65_536;

trait TokenSets: Send + Sync + 'static {
    fn get_or_insert(&self, params: &TokenParams) -> Handle;
}

struct MutexLru(Mutex<lru::LruCache<TokenParams, Handle>>);

impl TokenSets for MutexLru {
    fn get_or_insert(&self, params: &TokenParams) -> Handle {
        let mut map = self.0.lock().unwrap();
        if let Some(handle) = map.get(params) {
            return Arc::clone(handle);
        }
        let handle = Arc::new(0);
        map.push(params.clone(), Arc::clone(&handle));
        handle
    }
}

struct QuickCache(quick_cache::sync::Cache<TokenParams, Handle>);

impl TokenSets for QuickCache {
    fn get_or_insert(&self, params: &TokenParams) -> Handle {
        self.0
            .get_or_insert_with(params, || Ok::<_, ()>(Arc::new(0)))
            .unwrap()
    }
}

/// The store as it was: entries by a keyed hash in 16 shards, read-locked
/// for a lookup, recency an epoch stored on use.
/// Entries by their keyed hash, each bucket almost always of one.
type Shard = HashMap<u64, Vec<Entry>, BuildHasherDefault<Prehashed>>;

struct Sharded16 {
    shards: Vec<RwLock<Shard>>,
    hasher: RandomState,
    insert: Mutex<()>,
    epoch: AtomicU64,
}

struct Entry {
    params: TokenParams,
    handle: Handle,
    last_used: AtomicU64,
}

#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Sharded16 {
    fn new() -> Self {
        Self {
            shards: (0..16).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            insert: Mutex::new(()),
            epoch: AtomicU64::new(0),
        }
    }

    fn get(&self, hash: u64, params: &TokenParams) -> Option<Handle> {
        let shard = self.shards[(hash >> 32) as usize & 15].read().unwrap();
        let entry = shard.get(&hash)?.iter().find(|e| e.params == *params)?;
        let epoch = self.epoch.load(Ordering::Relaxed);
        if entry.last_used.load(Ordering::Relaxed) != epoch {
            entry.last_used.store(epoch, Ordering::Relaxed);
        }
        Some(Arc::clone(&entry.handle))
    }
}

impl TokenSets for Sharded16 {
    fn get_or_insert(&self, params: &TokenParams) -> Handle {
        let hash = self.hasher.hash_one(params);
        if let Some(handle) = self.get(hash, params) {
            return handle;
        }
        let _insert = self.insert.lock().unwrap();
        if let Some(handle) = self.get(hash, params) {
            return handle;
        }
        let handle = Arc::new(0);
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.shards[(hash >> 32) as usize & 15]
            .write()
            .unwrap()
            .entry(hash)
            .or_default()
            .push(Entry {
                params: params.clone(),
                handle: Arc::clone(&handle),
                last_used: AtomicU64::new(epoch),
            });
        handle
    }
}

/// `tasks` tasks, each doing its share of a round's lookups; ns per lookup.
fn run(rt: &tokio::runtime::Runtime, sets: &Arc<dyn TokenSets>, tasks: usize, own: bool) -> f64 {
    let per_task = LOOKUPS_PER_ROUND / tasks as u64;
    let start = Instant::now();
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let sets = Arc::clone(sets);
                let params = TokenParams::tenant(if own {
                    format!("tenant-{task}")
                } else {
                    "acme".to_owned()
                });
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        std::hint::black_box(sets.get_or_insert(&params));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
    });
    start.elapsed().as_nanos() as f64 / (per_task * tasks as u64) as f64
}

fn main() {
    let measuring = hot_path::measuring();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let stores: Vec<(&str, Arc<dyn TokenSets>)> = vec![
        (
            "mutex_lru",
            Arc::new(MutexLru(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(BOUND).unwrap(),
            )))),
        ),
        (
            "quick_cache",
            Arc::new(QuickCache(quick_cache::sync::Cache::new(BOUND))),
        ),
        ("sharded_16", Arc::new(Sharded16::new())),
    ];
    let mut runners: Vec<(String, Runner<'_>)> = Vec::new();
    for own in [false, true] {
        for (name, sets) in &stores {
            for tasks in TASKS {
                let rt = &rt;
                let sets = Arc::clone(sets);
                let label = format!("{name}/{}/{tasks}", if own { "own" } else { "one" });
                runners.push((label, Box::new(move || run(rt, &sets, tasks, own))));
            }
        }
    }
    let rounds = if measuring { 21 } else { 1 };
    let results = interleave(&mut runners, rounds);
    for (own, title) in [(false, "all tasks one tenant"), (true, "a tenant per task")] {
        println!("\ntoken_sets, {title} (interleaved, {rounds} rounds of {LOOKUPS_PER_ROUND} lookups; medians): lookups per second\n");
        let header: Vec<String> = TASKS.iter().map(|t| format!("{t} tasks")).collect();
        println!("| store | {} |", header.join(" | "));
        println!("|---|{}", "---:|".repeat(TASKS.len()));
        for (name, _) in &stores {
            let cells: Vec<String> = TASKS
                .iter()
                .map(|tasks| {
                    let label = format!("{name}/{}/{tasks}", if own { "own" } else { "one" });
                    let at = runners.iter().position(|(l, _)| *l == label).unwrap();
                    format!("{:.2} M/s", 1e3 / results[at].0)
                })
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
    }
}
