//! Layers by id, so that a response future can reach its layer on a 401 or
//! 403 without holding a reference to it.
//!
//! Holding one would cost every request an atomic increment and decrement of
//! a count shared by every task: on the 2-core machines we measure on, about
//! 17 ns, as much as a third of what tower-http's `AddAuthorization` costs in
//! all (BENCHMARKS.md). A 401 or 403 is rare; it pays for a lock and a lookup
//! here instead. Ids are never reused, so a future of a dropped layer finds
//! nothing rather than another layer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use crate::layer::Shared;

/// Which layer a request went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LayerId(u64);

fn layers() -> MutexGuard<'static, HashMap<LayerId, Weak<Shared>>> {
    static LAYERS: OnceLock<Mutex<HashMap<LayerId, Weak<Shared>>>> = OnceLock::new();
    LAYERS
        .get_or_init(Mutex::default)
        .lock()
        // A map of weak references stays consistent whatever panicked.
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh id, for a layer about to be made.
pub(crate) fn next_id() -> LayerId {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    LayerId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Makes `shared` findable by its id until it is dropped.
pub(crate) fn register(id: LayerId, shared: &Arc<Shared>) {
    layers().insert(id, Arc::downgrade(shared));
}

/// Forgets a layer that is being dropped.
pub(crate) fn unregister(id: LayerId) {
    layers().remove(&id);
}

/// The layer of `id`, unless it was dropped.
pub(crate) fn find(id: LayerId) -> Option<Arc<Shared>> {
    layers().get(&id)?.upgrade()
}
